//! `tanto dead-letters events ...` against the real broker and database:
//! a dead-lettered event comes back once its cause is fixed, a replay never
//! republishes the same record twice, a dry run changes nothing, each
//! filter chooses exactly what it says, and every replay leaves its audit
//! record.
//!
//! Most tests write dead-letter records themselves, with the headers the
//! notifier writes (`notifier.rs`), so that their times and sources are
//! known; the first one lets the notifier set the event aside.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tanto::kafka::{DeadLetterHeaders, header_text};
use tanto_e2e::{
    TestEnv, bin_dir, event, eventually, mails_for, read_topic, repo_root, standard_routing,
    tanto_json, tanto_ok, wait_for_mails,
};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One dead-letter record as the notifier writes it.
struct Letter<'a> {
    marker: &'a str,
    tenant: Option<&'a str>,
    reason: &'a str,
    source_topic: &'a str,
    rejected_at: &'a str,
}

impl Letter<'_> {
    /// An event payload carrying the marker as its event id, or, without a
    /// tenant, a payload that is not JSON but still carries the marker.
    fn payload(&self) -> String {
        match self.tenant {
            Some(tenant) => {
                let mut payload = event(tenant, "order.applied", &["P-100"]);
                payload["event_id"] = self.marker.into();
                payload.to_string()
            }
            None => format!("{{\"event_id\": \"{}\", ", self.marker),
        }
    }
}

async fn write_dead_letters(env: &TestEnv, letters: &[Letter<'_>]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    for (offset, letter) in letters.iter().enumerate() {
        let headers = DeadLetterHeaders::new()
            .with("tanto.reason", letter.reason)
            .with("tanto.message", format!("set aside for {}", letter.reason))
            .with("tanto.source.topic", letter.source_topic)
            .with("tanto.source.partition", 0)
            .with("tanto.source.offset", offset)
            .with("tanto.rejected_at", letter.rejected_at);
        let payload = letter.payload();
        let record = FutureRecord::to(&env.topics.events_dlq)
            .key(letter.marker)
            .payload(&payload)
            .headers(headers.to_kafka());
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }
}

/// Four dead letters that differ in every field a filter reads:
///
/// | marker | tenant | reason | source | set aside |
/// |---|---|---|---|---|
/// | a1 | env.id | unknown_tenant | orders | 2026-12-01 |
/// | b2 | other | unknown_tenant | contracts | 2026-12-02 |
/// | a3 | env.id | schema_violation | quotes | 2026-12-03 |
/// | x4 | (not JSON) | malformed_json | orders | 2026-12-04 |
async fn four_dead_letters(env: &TestEnv) {
    let topics = &env.topics;
    let letters = [
        Letter {
            marker: "a1",
            tenant: Some(&env.id),
            reason: "unknown_tenant",
            source_topic: &topics.orders,
            rejected_at: "2026-12-01T09:00:00+00:00",
        },
        Letter {
            marker: "b2",
            tenant: Some("other"),
            reason: "unknown_tenant",
            source_topic: &topics.contracts,
            rejected_at: "2026-12-02T09:00:00+00:00",
        },
        Letter {
            marker: "a3",
            tenant: Some(&env.id),
            reason: "schema_violation",
            source_topic: &topics.quotes,
            rejected_at: "2026-12-03T09:00:00+00:00",
        },
        Letter {
            marker: "x4",
            tenant: None,
            reason: "malformed_json",
            source_topic: &topics.orders,
            rejected_at: "2026-12-04T09:00:00+00:00",
        },
    ];
    write_dead_letters(env, &letters).await;
}

/// The marker of a payload written by [`Letter::payload`].
fn marker(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let start = text.find("\"event_id\"").unwrap();
    let rest = &text[start + "\"event_id\"".len()..];
    rest.split('"').nth(1).unwrap().to_string()
}

/// The markers `list --json` shows for `filter`.
fn listed(env: &TestEnv, filter: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["dead-letters", "events", "list"];
    args.extend_from_slice(filter);
    let ids: Vec<String> = tanto_json(env, &args)
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| letter["id"].as_str().unwrap().to_string())
        .collect();
    ids.iter()
        .map(|id| {
            let shown = tanto_json(env, &["dead-letters", "events", "show", id]);
            let payload = match &shown["payload"] {
                Value::String(text) => text.clone(),
                value => value.to_string(),
            };
            marker(payload.as_bytes())
        })
        .collect()
}

/// (marker, topic) of every message on the three source topics.
fn republished(env: &TestEnv) -> BTreeSet<(String, String)> {
    let topics = [
        &env.topics.orders,
        &env.topics.contracts,
        &env.topics.quotes,
    ];
    topics
        .iter()
        .flat_map(|topic| {
            read_topic(topic)
                .into_iter()
                .map(|m| (marker(m.payload().unwrap()), topic.to_string()))
        })
        .collect()
}

/// Checks that `filter` lists exactly `expected` and that replaying it
/// republishes exactly those, each to its source topic.
async fn assert_selects(env: &TestEnv, filter: &[&str], expected: &[&str]) {
    four_dead_letters(env).await;
    let expected: BTreeSet<String> = expected.iter().map(|m| m.to_string()).collect();

    assert_eq!(listed(env, filter), expected, "list {filter:?}");

    let mut args = vec!["dead-letters", "events", "replay", "--yes", "--rate", "500"];
    args.extend_from_slice(filter);
    let summary = tanto_json(env, &args);
    assert_eq!(summary["replayed"], expected.len(), "{summary}");
    let sources = [
        ("a1", &env.topics.orders),
        ("b2", &env.topics.contracts),
        ("a3", &env.topics.quotes),
        ("x4", &env.topics.orders),
    ];
    let wanted: BTreeSet<(String, String)> = sources
        .iter()
        .filter(|(m, _)| expected.contains(*m))
        .map(|(m, topic)| (m.to_string(), topic.to_string()))
        .collect();
    assert_eq!(republished(env), wanted, "replay {filter:?}");
}

async fn count(env: &TestEnv, query: &str) -> i64 {
    env.db().await.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_event_is_replayed_after_its_tenant_is_applied_and_mails_arrive_once() {
    let mut env = TestEnv::new().await;
    env.start("order-notifier");
    env.start("mailer");
    let order = event(&env.id, "order.applied", &["P-100"]);

    env.publish(&env.topics.orders, &order).await;
    eventually("the event set aside", Duration::from_secs(60), || async {
        !read_topic(&env.topics.events_dlq).is_empty()
    })
    .await;
    let dead = read_topic(&env.topics.events_dlq);
    assert_eq!(
        header_text(dead[0].headers().unwrap(), "tanto.reason").as_deref(),
        Some("unknown_tenant")
    );
    assert!(mails_for(&env.domain()).await.is_empty());

    env.apply(&standard_routing(&env));
    let tenant = ["--tenant", env.id.as_str()];
    let replay = |env: &TestEnv| {
        let mut args = vec!["dead-letters", "events", "replay", "--yes"];
        args.extend_from_slice(&tenant);
        tanto_ok(env, &args)
    };
    let first = replay(&env);

    assert!(first.contains("1 chosen, 1 replayed, 0 skipped"), "{first}");
    let mails = wait_for_mails(&env.domain(), 6).await;
    assert_eq!(mails.len(), 6, "one mail per address: 2 customer, 4 staff");

    let second = replay(&env);
    assert!(
        second.contains("1 chosen, 0 replayed, 1 skipped"),
        "{second}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mails_for(&env.domain()).await.len(), 6, "no mail twice");
    assert_eq!(
        read_topic(&env.topics.orders).len(),
        2,
        "the event and one replay"
    );
    assert_eq!(
        read_topic(&env.topics.events_dlq).len(),
        1,
        "not set aside again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_same_selection_again_publishes_nothing_unless_forced() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let replay = [
        "dead-letters",
        "events",
        "replay",
        "--all",
        "--yes",
        "--rate",
        "500",
    ];

    let first = tanto_json(&env, &replay);
    let second = tanto_json(&env, &replay);

    assert_eq!(
        (first["replayed"].as_u64(), first["skipped"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(
        (second["replayed"].as_u64(), second["skipped"].as_u64()),
        (Some(0), Some(4))
    );
    let on_topics = || {
        [
            &env.topics.orders,
            &env.topics.contracts,
            &env.topics.quotes,
        ]
        .iter()
        .map(|topic| read_topic(topic).len())
        .sum::<usize>()
    };
    assert_eq!(on_topics(), 4, "the second run published nothing");

    let mut forced = replay.to_vec();
    forced.push("--force");
    let third = tanto_json(&env, &forced);
    assert_eq!(third["replayed"], 4);
    assert_eq!(on_topics(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_changes_neither_the_topics_nor_the_audit() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let tenant = env.id.clone();
    tanto_ok(
        &env,
        &[
            "dead-letters",
            "events",
            "replay",
            "--yes",
            "--tenant",
            &tenant,
            "--reason",
            "unknown_tenant",
        ],
    );
    let audit_before = tanto_json(&env, &["dead-letters", "audit"]);
    let republished_before = republished(&env);

    let dry = tanto_json(
        &env,
        &["dead-letters", "events", "replay", "--all", "--dry-run"],
    );
    let text = tanto_ok(
        &env,
        &["dead-letters", "events", "replay", "--all", "--dry-run"],
    );

    assert_eq!(dry["chosen"], 4);
    let would: BTreeSet<&str> = dry["would_replay"]
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| letter["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        would,
        BTreeSet::from(["unknown_tenant", "schema_violation", "malformed_json"])
    );
    assert_eq!(dry["skipped"].as_array().unwrap().len(), 1);
    assert!(
        text.contains("dry run: would replay 3 of 4 chosen dead letters"),
        "{text}"
    );
    assert_eq!(tanto_json(&env, &["dead-letters", "audit"]), audit_before);
    assert_eq!(republished(&env), republished_before);
    assert_eq!(read_topic(&env.topics.events_dlq).len(), 4);
    assert_eq!(
        count(&env, "SELECT count(*) FROM replayed_records").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_filter_chooses_the_payloads_naming_that_tenant() {
    let env = TestEnv::new().await;
    let tenant = env.id.clone();
    assert_selects(&env, &["--tenant", &tenant], &["a1", "a3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reason_filter_chooses_that_reason() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--reason", "unknown_tenant"], &["a1", "b2"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_source_topic_filter_chooses_what_was_read_from_that_topic() {
    let env = TestEnv::new().await;
    let orders = env.topics.orders.clone();
    assert_selects(&env, &["--source-topic", &orders], &["a1", "x4"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_time_range_includes_since_and_excludes_until() {
    let env = TestEnv::new().await;
    let range = ["--since", "2026-12-02T09:00:00Z", "--until", "2026-12-04"];
    assert_selects(&env, &range, &["b2", "a3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_choose_exactly_those_records() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let all = tanto_json(&env, &["dead-letters", "events", "list"]);
    let id_of = |reason: &str| {
        let letters = all.as_array().unwrap();
        let letter = letters.iter().find(|l| l["reason"] == reason).unwrap();
        letter["id"].as_str().unwrap().to_string()
    };
    let (first, second) = (id_of("schema_violation"), id_of("malformed_json"));

    let summary = tanto_json(
        &env,
        &["dead-letters", "events", "replay", "--yes", &first, &second],
    );

    assert_eq!(summary["replayed"], 2);
    let expected = BTreeSet::from([
        ("a3".to_string(), env.topics.quotes.clone()),
        ("x4".to_string(), env.topics.orders.clone()),
    ]);
    assert_eq!(republished(&env), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replay_writes_its_audit_record() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let replay = [
        "dead-letters",
        "events",
        "replay",
        "--yes",
        "--reason",
        "unknown_tenant",
    ];
    let mut as_alice = replay.to_vec();
    as_alice.extend_from_slice(&["--actor", "alice"]);

    tanto_ok(&env, &as_alice);
    tanto_ok(&env, &replay);

    let audit = tanto_json(&env, &["dead-letters", "audit"]);
    let records = audit.as_array().unwrap();
    assert_eq!(records.len(), 2);
    let (latest, first) = (&records[0], &records[1]);
    assert_eq!(first["actor"], "alice");
    assert_eq!(first["kind"], "events");
    assert_eq!(first["dead_letter_topic"], env.topics.events_dlq.as_str());
    assert_eq!(
        first["selection"],
        serde_json::json!({"filter": {"reason": "unknown_tenant"}})
    );
    assert_eq!(
        (&first["chosen"], &first["replayed"], &first["skipped"]),
        (&2.into(), &2.into(), &0.into())
    );
    assert_eq!(first["status"], "finished");
    assert!(first["finished_at"].is_string());
    let os_user = latest["actor"].as_str().unwrap();
    assert!(!os_user.is_empty() && os_user != "alice", "{os_user}");
    assert_eq!(
        (&latest["replayed"], &latest["skipped"]),
        (&0.into(), &2.into())
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM replayed_records").await,
        2
    );

    let table = tanto_ok(&env, &["dead-letters", "audit"]);
    assert!(table.starts_with("REPLAY"), "{table}");
    assert!(
        table.contains("alice") && table.contains("--reason unknown_tenant"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_the_headers_and_the_original_payload() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let all = tanto_json(&env, &["dead-letters", "events", "list"]);
    let a1 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["tenant"] == env.id.as_str() && l["reason"] == "unknown_tenant")
        .unwrap();
    let id = a1["id"].as_str().unwrap();

    let shown = tanto_json(&env, &["dead-letters", "events", "show", id]);
    let text = tanto_ok(&env, &["dead-letters", "events", "show", id]);

    assert_eq!(shown["key"], "a1");
    assert_eq!(shown["payload"]["event_id"], "a1");
    assert_eq!(
        shown["headers"]["tanto.source.topic"],
        env.topics.orders.as_str()
    );
    assert_eq!(shown["failed_at"], "2026-12-01T09:00:00Z");
    assert!(shown["replayed_by"].is_null());
    assert!(
        text.starts_with(&format!("dead letter {id} on {}", env.topics.events_dlq)),
        "{text}"
    );
    assert!(text.contains("reason:    unknown_tenant"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_is_one_sentence_with_what_to_do() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["dead-letters", "events", "list", "--since", "yesterday"],
            2,
            "tanto: --since 'yesterday' is not a time; write",
        ),
        (
            &[
                "dead-letters",
                "events",
                "replay",
                "--yes",
                "--reason",
                "lost",
            ],
            2,
            "tanto: --reason 'lost' is not a reason of dead-lettered events; use one of",
        ),
        (
            &["dead-letters", "events", "replay", "--yes"],
            2,
            "tanto: say which dead letters to replay",
        ),
        (
            &["dead-letters", "events", "replay", "--all"],
            2,
            "tanto: replaying needs --yes when not run from a terminal",
        ),
        (
            &[
                "dead-letters",
                "events",
                "replay",
                "--yes",
                "--tenant",
                "nobody",
            ],
            1,
            "tanto: no dead letter on",
        ),
        (
            &["dead-letters", "events", "show", "0:999"],
            1,
            "has the id 0:999; `tanto dead-letters events list` shows the ids",
        ),
    ];
    for (args, code, expected) in cases {
        let output = env.tanto(args);

        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {message}");
        assert!(message.contains(expected), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
    }
    assert_eq!(
        republished(&env),
        BTreeSet::new(),
        "no failure published anything"
    );
    assert_eq!(count(&env, "SELECT count(*) FROM replays").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_keeps_its_pace_and_ctrl_c_stops_it_between_records() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    let replay = Command::new(bin_dir().join("tanto"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.vars())
        .current_dir(repo_root())
        .args([
            "dead-letters",
            "events",
            "replay",
            "--all",
            "--yes",
            "--rate",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // At one record a second the first goes at once and the second a
    // second later; SIGINT comes before the third.
    eventually("two records replayed", Duration::from_secs(30), || async {
        count(&env, "SELECT count(*) FROM replayed_records").await >= 2
    })
    .await;
    Command::new("kill")
        .args(["-INT", &replay.id().to_string()])
        .status()
        .unwrap();
    let output = replay.wait_with_output().unwrap();

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("was interrupted after 2 of 4; run the same command again"),
        "{message}"
    );
    let audit = tanto_json(&env, &["dead-letters", "audit"]);
    assert_eq!(audit[0]["status"], "interrupted");
    assert_eq!(audit[0]["replayed"], 2);
    let rest = tanto_json(
        &env,
        &[
            "dead-letters",
            "events",
            "replay",
            "--all",
            "--yes",
            "--rate",
            "500",
        ],
    );
    assert_eq!(
        (&rest["replayed"], &rest["skipped"]),
        (&2.into(), &2.into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_replay_of_the_same_topic_waits_for_the_first() {
    let env = TestEnv::new().await;
    four_dead_letters(&env).await;
    // A running replay holds this lock (audit.rs); hold it the same way.
    let db = env.db().await;
    let key = format!("tanto.replay:{}", env.topics.events_dlq);
    db.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .await
        .unwrap();

    let output = env.tanto(&["dead-letters", "events", "replay", "--all", "--yes"]);

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "tanto: another replay of {} is running; wait for it to end",
            env.topics.events_dlq
        )),
        "{message}"
    );
    assert_eq!(republished(&env), BTreeSet::new());
}
