//! The notifier's promise under faults and bad input, against the real
//! broker and database: every accepted event leads to its deliveries
//! exactly once in effect, and nothing unroutable blocks a partition or
//! disappears.
//!
//! The mailer is not started: the tests read the delivery topic itself and
//! compare delivery ids, which is what the mailer deduplicates on.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::Message;
use tanto::delivery::delivery_id;
use tanto::kafka::header_text;
use tanto_e2e::{
    TestEnv, committed_and_end, deliveries_at, deliveries_on, event, eventually, publish_all,
    publish_all_at, publish_raw, publish_stream, read_topic, routed_count, standard_routing,
};
use uuid::Uuid;

/// The delivery ids an `order.applied` event of the standard routing must
/// produce: 5-1-1 to the customer's two users, 5-1-2 to four staff.
fn expected_ids(env: &TestEnv, event: &serde_json::Value) -> BTreeSet<Uuid> {
    let d = env.domain();
    let event_id = event["event_id"].as_str().unwrap();
    let customer = [format!("admin@c1.{d}"), format!("buyer@c1.{d}")];
    let staff = ["ops", "tanaka", "suzuki", "east-sales-ml"].map(|local| format!("{local}@{d}"));
    let mails = customer
        .iter()
        .map(|to| ("5-1-1", to))
        .chain(staff.iter().map(|to| ("5-1-2", to)));
    mails
        .map(|(number, to)| delivery_id(&env.id, event_id, number, to))
        .collect()
}

fn orders(env: &TestEnv, count: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| {
            let mut order = event(&env.id, "order.applied", &["P-100"]);
            order["transaction"]["id"] = format!("O-{i}").into();
            order
        })
        .collect()
}

async fn notifier_env() -> TestEnv {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    env.start("order-notifier");
    env
}

/// Waits until every event is routed and returns the delivery ids on the
/// delivery topic, with how many times each appears.
async fn routed_deliveries(env: &TestEnv, events: usize) -> BTreeMap<Uuid, usize> {
    eventually("every event routed", Duration::from_secs(120), || async {
        routed_count(env).await == i64::try_from(events).unwrap()
    })
    .await;
    let mut ids = BTreeMap::new();
    for delivery in deliveries_on(&env.topics.deliveries) {
        *ids.entry(delivery.delivery_id).or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_is_set_aside_with_its_reason_and_the_partition_moves_on() {
    let mut env = notifier_env().await;
    let topic = env.topics.orders.clone();
    let first = event(&env.id, "order.applied", &["P-100"]);
    let last = event(&env.id, "order.applied", &["P-100"]);
    let mut no_tenant = event(&env.id, "order.applied", &["P-100"]);
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_json", b"{\"event_id\": \"e-".to_vec()),
        ("schema_violation", no_tenant.to_string().into_bytes()),
        (
            "unknown_event_type",
            event(&env.id, "order.teleported", &["P-1"])
                .to_string()
                .into(),
        ),
        (
            "wrong_topic",
            event(&env.id, "quote.issued", &["P-1"])
                .to_string()
                .into_bytes(),
        ),
        (
            "unknown_tenant",
            event("nobody", "order.applied", &["P-1"])
                .to_string()
                .into_bytes(),
        ),
    ];

    // Every message has the same key, so all of them share one partition:
    // the good event after the poison ones proves the partition moved on.
    publish_raw(&topic, "O-1", first.to_string().as_bytes()).await;
    for (_, payload) in &poison {
        publish_raw(&topic, "O-1", payload).await;
    }
    publish_raw(&topic, "O-1", last.to_string().as_bytes()).await;

    let ids = routed_deliveries(&env, 2).await;
    let expected: BTreeSet<Uuid> = expected_ids(&env, &first)
        .union(&expected_ids(&env, &last))
        .copied()
        .collect();
    assert_eq!(ids.keys().copied().collect::<BTreeSet<_>>(), expected);
    let dead = read_topic(&env.topics.events_dlq);
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header_text(m.headers().unwrap(), "tanto.reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        poison
            .iter()
            .map(|(reason, _)| reason.to_string())
            .collect::<Vec<_>>()
    );
    for (message, (_, payload)) in dead.iter().zip(&poison) {
        let headers = message.headers().unwrap();
        assert_eq!(
            message.payload().unwrap(),
            payload.as_slice(),
            "the payload is kept as it was"
        );
        assert_eq!(
            header_text(headers, "tanto.source.topic").as_deref(),
            Some(topic.as_str())
        );
        assert!(header_text(headers, "tanto.source.offset").is_some());
        assert!(!header_text(headers, "tanto.message").unwrap().is_empty());
    }
    assert!(
        !env.log("order-notifier").contains("サンプル"),
        "payloads are never logged"
    );

    assert!(env.signal("order-notifier", "TERM"), "a clean exit");
    assert_eq!(
        committed_and_end(&env.group("order-notifier"), &topic),
        (7, 7)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_commits_what_was_done_and_a_restart_routes_nothing_again() {
    let mut env = notifier_env().await;
    let events = orders(&env, 50);
    publish_all(&env.topics.orders, &events).await;
    let ids = routed_deliveries(&env, 50).await;
    assert_eq!(ids.len(), 300);

    assert!(env.signal("order-notifier", "TERM"), "a clean exit");
    assert_eq!(
        committed_and_end(&env.group("order-notifier"), &env.topics.orders),
        (50, 50)
    );
    assert!(env.log("order-notifier").contains("stopped"));

    env.start("order-notifier");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let times: i64 = env
        .db()
        .await
        .query_one("SELECT sum(times_routed) FROM routed_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(times, 50, "no event was routed a second time");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notifier_killed_mid_stream_loses_nothing_after_restart() {
    let mut env = notifier_env().await;
    let events = orders(&env, 1000);
    let expected: BTreeSet<Uuid> = events.iter().flat_map(|e| expected_ids(&env, e)).collect();
    let stream = publish_stream(&env.topics.orders, events, Duration::from_secs(5));

    eventually("some events routed", Duration::from_secs(60), || async {
        routed_count(&env).await >= 100
    })
    .await;
    env.signal("order-notifier", "KILL");
    let routed_at_kill = routed_count(&env).await;
    env.start("order-notifier");
    stream.await.unwrap();

    let ids = routed_deliveries(&env, 1000).await;
    assert!(
        routed_at_kill < 1000,
        "the kill came too late to prove anything"
    );
    assert_eq!(
        ids.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "every delivery, no other"
    );
    assert_eq!(ids.len(), 6000);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_errors_injected_in_a_mock_cluster_are_retried_and_lose_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    let mock = MockCluster::new(1).unwrap();
    for topic in env.topics.all() {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    let events = orders(&env, 20);
    publish_all_at(&mock.bootstrap_servers(), &env.topics.orders, &events).await;
    let mut vars = env.vars();
    vars.retain(|(key, _)| key != "TANTO_KAFKA_BROKERS");
    vars.push(("TANTO_KAFKA_BROKERS".into(), mock.bootstrap_servers()));
    let settings = tanto::config::Settings::from_vars(vars).unwrap();

    // The first produce and fetch requests fail with errors a real cluster
    // gives during a leader election.
    let produce_errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 6];
    mock.request_errors(RDKafkaApiKey::Produce, &produce_errors);
    let fetch_errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 4];
    mock.request_errors(RDKafkaApiKey::Fetch, &fetch_errors);
    let shutdown = tanto::shutdown::Shutdown::new();
    let notifying = tanto::notifier::run(&settings, tanto::event::Family::Order, shutdown.clone());
    let watching = async {
        eventually("every event routed", Duration::from_secs(60), || async {
            routed_count(&env).await == 20
        })
        .await;
        shutdown.trigger();
    };
    let (notified, ()) = tokio::join!(notifying, watching);

    notified.unwrap();
    let expected: BTreeSet<Uuid> = events.iter().flat_map(|e| expected_ids(&env, e)).collect();
    let delivered = deliveries_at(&mock.bootstrap_servers(), &env.topics.deliveries);
    let ids: BTreeSet<Uuid> = delivered.iter().map(|d| d.delivery_id).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        delivered.len(),
        expected.len(),
        "the idempotent producer wrote nothing twice"
    );
}
