//! The notifier under a failing dependency: Postgres stopped for a while,
//! and the Kafka broker restarted, each in the middle of a stream of 1,000
//! events. These tests stop the shared local servers, so they take a lock
//! and run one at a time; cargo runs test binaries one after another, so no
//! other test binary runs meanwhile.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tanto::delivery::delivery_id;
use tanto_e2e::{
    TestEnv, deliveries_on, event, eventually, publish_stream, read_topic, repo_root, routed_count,
    standard_routing,
};
use tokio::sync::Mutex;
use uuid::Uuid;

static SERVERS: Mutex<()> = Mutex::const_new(());

fn orders(env: &TestEnv) -> Vec<serde_json::Value> {
    (0..1000)
        .map(|i| {
            let mut order = event(&env.id, "order.applied", &["P-100"]);
            order["transaction"]["id"] = format!("O-{i}").into();
            order
        })
        .collect()
}

fn expected_ids(env: &TestEnv, events: &[serde_json::Value]) -> BTreeSet<Uuid> {
    let d = env.domain();
    let to = [
        "admin@c1.",
        "buyer@c1.",
        "ops@",
        "tanaka@",
        "suzuki@",
        "east-sales-ml@",
    ];
    let mut ids = BTreeSet::new();
    for event in events {
        let event_id = event["event_id"].as_str().unwrap();
        for (i, local) in to.iter().enumerate() {
            let number = if i < 2 { "5-1-1" } else { "5-1-2" };
            ids.insert(delivery_id(
                &env.id,
                event_id,
                number,
                &format!("{local}{d}"),
            ));
        }
    }
    ids
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .status()
        .unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

/// Starts a notifier on 1,000 published events and waits until some are
/// routed, so that the fault lands in the middle of the stream.
async fn mid_stream() -> (TestEnv, Vec<serde_json::Value>, tokio::task::JoinHandle<()>) {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    let events = orders(&env);
    env.start("order-notifier");
    let stream = publish_stream(&env.topics.orders, events.clone(), Duration::from_secs(20));
    eventually("some events routed", Duration::from_secs(60), || async {
        routed_count(&env).await >= 50
    })
    .await;
    (env, events, stream)
}

/// Every event routed, exactly the expected deliveries on the topic, and
/// nothing set aside.
async fn assert_complete(env: &TestEnv, events: &[serde_json::Value]) {
    eventually("every event routed", Duration::from_secs(180), || async {
        routed_count(env).await == 1000
    })
    .await;
    let ids: BTreeSet<Uuid> = deliveries_on(&env.topics.deliveries)
        .iter()
        .map(|d| d.delivery_id)
        .collect();
    assert_eq!(ids, expected_ids(env, events), "every delivery, no other");
    assert!(
        read_topic(&env.topics.events_dlq).is_empty(),
        "a dependency's fault is not the event's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_mid_stream_pauses_the_notifier_until_it_answers_again() {
    let _servers = SERVERS.lock().await;
    let (mut env, events, stream) = mid_stream().await;

    run("pg_ctlcluster", &["15", "main", "stop", "-m", "fast"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let routing_stopped = env.log("order-notifier").contains("will retry");
    run("pg_ctlcluster", &["15", "main", "start"]);

    assert!(
        routing_stopped,
        "the notifier saw the database gone and waited"
    );
    stream.await.unwrap();
    assert_complete(&env, &events).await;
    assert!(
        env.is_running("order-notifier"),
        "the notifier never gave up"
    );
    assert!(
        env.log("order-notifier").contains("partitions paused"),
        "it kept polling, paused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restarted_mid_stream_loses_nothing() {
    let _servers = SERVERS.lock().await;
    let (mut env, events, stream) = mid_stream().await;

    let (pid, checkout) = running_broker();
    run("kill", &["-TERM", &pid]);
    eventually("the broker stopped", Duration::from_secs(60), || async {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    // The checkout whose stack runs the broker starts it again, with its
    // own data: it may not be this one (a second clone reuses a stack).
    run(
        "bash",
        &[
            &checkout.join("deploy/local/stack.sh").display().to_string(),
            "up",
        ],
    );

    stream.await.unwrap();
    assert_complete(&env, &events).await;
    assert!(
        env.is_running("order-notifier"),
        "the notifier reconnected by itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_turns_false_while_the_database_is_stopped_and_true_after() {
    let _servers = SERVERS.lock().await;
    let mut env = TestEnv::new().await;
    env.start("order-notifier");
    assert_eq!(env.http_get("order-notifier", "/readyz").await.0, 200);

    run("pg_ctlcluster", &["15", "main", "stop", "-m", "fast"]);
    let (status, body) = env.http_get("order-notifier", "/readyz").await;
    run("pg_ctlcluster", &["15", "main", "start"]);

    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    assert!(
        !body.contains("tanto:tanto@"),
        "no credentials in the answer: {body}"
    );
    eventually("ready again", Duration::from_secs(30), || async {
        env.http_get("order-notifier", "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(env.http_get("order-notifier", "/healthz").await.0, 200);
}

/// The local broker's pid and the checkout that started it, read from its
/// command line (`kafka.Kafka <checkout>/.local/kafka/server.properties`).
fn running_broker() -> (String, std::path::PathBuf) {
    let output = Command::new("pgrep")
        .args(["-f", "kafka[.]Kafka"])
        .output()
        .unwrap();
    let pid = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let config = cmdline
        .split(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .find(|arg| arg.ends_with("server.properties"))
        .unwrap();
    let checkout = std::path::Path::new(&config)
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf();
    (pid, checkout)
}
