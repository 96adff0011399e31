//! What SREs watch: each binary's `/metrics`, scraped after a known
//! scenario, shows the expected values; `/healthz` and `/readyz` answer.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tanto_e2e::{TestEnv, event, eventually, publish_raw, routed_count, standard_routing};

#[tokio::test(flavor = "multi_thread")]
async fn the_notifier_counts_events_deliveries_and_what_reached_nobody() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("order-notifier");
    let topic = env.topics.orders.clone();
    let known = event(&env.id, "order.applied", &["P-100"]);
    let unknown_product = event(&env.id, "order.applied", &["P-999"]);

    publish_raw(&topic, "O-1", known.to_string().as_bytes()).await;
    publish_raw(&topic, "O-1", b"not json").await;
    publish_raw(&topic, "O-1", unknown_product.to_string().as_bytes()).await;
    eventually("both events routed", Duration::from_secs(30), || async {
        routed_count(&env).await == 2
    })
    .await;

    let notifier = "order-notifier";
    let consumed = |outcome: &str, reason: &str| {
        format!(
            "tanto_events_consumed_total{{topic=\"{topic}\",outcome=\"{outcome}\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(env.metric(notifier, &consumed("routed", "none")).await, 2.0);
    assert_eq!(
        env.metric(notifier, &consumed("dead_lettered", "malformed_json"))
            .await,
        1.0
    );
    let produced = |mail: &str, class: &str| {
        format!("tanto_deliveries_produced_total{{mail=\"{mail}\",class=\"{class}\"}}")
    };
    // The first event reaches tanaka and suzuki as product staff; the
    // second names a product nobody is in charge of.
    assert_eq!(
        env.metric(notifier, &produced("5-1-2", "product_staff"))
            .await,
        2.0
    );
    assert_eq!(
        env.metric(notifier, &produced("5-1-2", "customer_staff"))
            .await,
        4.0
    );
    assert_eq!(
        env.metric(notifier, &produced("5-1-1", "customer_admin"))
            .await,
        2.0
    );
    let empty = "tanto_recipient_classes_empty_total{mail=\"5-1-2\",class=\"product_staff\"}";
    assert_eq!(env.metric(notifier, empty).await, 1.0);
    let unknown = "tanto_unknown_references_total{kind=\"product\"}";
    assert_eq!(env.metric(notifier, unknown).await, 1.0);
    let routing_count = env
        .metric(notifier, "tanto_routing_duration_seconds_count")
        .await;
    assert_eq!(routing_count, 2.0);
    // Routing reads the database once per batch, not once per event.
    let query = "tanto_db_query_duration_seconds_count{query=\"routing_view\"}";
    let batches = env.metric(notifier, query).await;
    assert!(
        (1.0..=2.0).contains(&batches),
        "{batches} routing queries for 2 events"
    );
    assert!(env.metric(notifier, "process_resident_memory_bytes").await > 0.0);

    let waiting = "tanto_dead_letters_waiting{kind=\"events\"}";
    eventually(
        "the set-aside event counted as waiting",
        Duration::from_secs(20),
        || async { env.metric(notifier, waiting).await == 1.0 },
    )
    .await;

    assert_eq!(env.http_get(notifier, "/healthz").await.0, 200);
    assert_eq!(
        env.http_get(notifier, "/readyz").await,
        (200, "ready\n".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_lag_is_reported_per_partition() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("order-notifier");

    let lag_of = |text: &str| tanto_e2e::metric_value(text, "tanto_consumer_lag");
    eventually(
        "lag gauges for both partitions",
        Duration::from_secs(20),
        || async {
            let (_, text) = env.http_get("order-notifier", "/metrics").await;
            text.matches("tanto_consumer_lag{").count() == 2 && lag_of(&text) == 0.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mailer_counts_mails_sent_and_their_timings() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("order-notifier");
    env.start("mailer");

    let order = event(&env.id, "order.applied", &["P-100"]);
    publish_raw(&env.topics.orders, "O-1", order.to_string().as_bytes()).await;
    tanto_e2e::wait_for_mails(&env.domain(), 6).await;

    let mailer = "mailer";
    let sent = |mail: &str| format!("tanto_mails_sent_total{{mail=\"{mail}\"}}");
    assert_eq!(env.metric(mailer, &sent("5-1-1")).await, 2.0);
    assert_eq!(env.metric(mailer, &sent("5-1-2")).await, 4.0);
    for histogram in [
        "tanto_render_duration_seconds_count",
        "tanto_smtp_send_duration_seconds_count",
        "tanto_event_to_smtp_seconds_count",
    ] {
        assert_eq!(env.metric(mailer, histogram).await, 6.0, "{histogram}");
    }
    assert_eq!(
        env.metric(mailer, "tanto_mails_dead_lettered_total").await,
        0.0
    );
    assert_eq!(env.http_get(mailer, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mailer_counts_retries_by_tier_and_dead_letters_by_class() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    // Nothing listens on this port: every attempt fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.set("TANTO_SMTP_PORT", closed.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.start("order-notifier");
    env.start("mailer");

    let order = event(&env.id, "order.applied", &["P-100"]);
    publish_raw(&env.topics.orders, "O-1", order.to_string().as_bytes()).await;

    let mailer = "mailer";
    let dead = "tanto_mails_dead_lettered_total{error_class=\"connection\"}";
    eventually("all six dead-lettered", Duration::from_secs(60), || async {
        env.metric(mailer, dead).await == 6.0
    })
    .await;
    assert_eq!(
        env.metric(mailer, "tanto_mails_retried_total{tier=\"1\"}")
            .await,
        6.0
    );
    assert_eq!(env.metric(mailer, "tanto_mails_sent_total").await, 0.0);
    let waiting = "tanto_dead_letters_waiting{kind=\"deliveries\"}";
    eventually(
        "the dead deliveries counted as waiting",
        Duration::from_secs(20),
        || async { env.metric(mailer, waiting).await == 6.0 },
    )
    .await;
    let (status, body) = env.http_get(mailer, "/readyz").await;
    assert_eq!(status, 503, "the relay is unreachable: {body}");
    assert!(body.contains("smtp"), "{body}");
}
