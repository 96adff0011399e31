//! `tanto dead-letters list|show|replay` on deliveries, against the real
//! broker and database and a scripted SMTP server: a batch dead-lettered
//! while the server refused mail is sent once after it recovers, a second
//! replay sends nothing (not even with --force), a delivery whose cause
//! remains is dead-lettered again once, a delivery held after an unknown
//! outcome is sent when replayed, a dry run changes nothing, each
//! filter chooses exactly what it says, and each replay is audited.
//!
//! The filter tests write dead-letter records themselves, with the headers
//! the mailer writes (`retry.rs`), so that their fields are known.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tanto::catalog::RecipientClass;
use tanto::delivery::DeliveryMessage;
use tanto::kafka::DeadLetterHeaders;
use tanto::retry::{ATTEMPTS, ERROR, ERROR_CLASS, LAST_FAILED_AT};
use tanto_e2e::mailer::{delivery, history, publish_deliveries, read_topic, wait_for_status};
use tanto_e2e::smtp::{Received, Reply, Script, ScriptedSmtp};
use tanto_e2e::{TestEnv, tanto_json, tanto_ok};

/// Long enough for anything the mailer does in these tests.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long a test waits to be sure that something does not happen: longer
/// than the retry delays it configures.
const QUIET: Duration = Duration::from_secs(3);

fn address(env: &TestEnv, local: &str) -> String {
    format!("{local}@{}", env.domain())
}

/// How many mails with each Message-ID the server accepted.
fn accepted_once_each(accepted: &[Received]) -> bool {
    let ids: BTreeSet<&str> = accepted.iter().map(|m| m.message_id.as_str()).collect();
    ids.len() == accepted.len()
}

/// A mailer sending to a scripted server whose first reply to each of
/// `locals` is `first` and every later one `then`.
async fn mailer_refusing(locals: &[&str], first: Reply, then: Reply) -> (TestEnv, ScriptedSmtp) {
    let mut env = TestEnv::new().await;
    let script = locals.iter().fold(Script::new(), |script, local| {
        script.to(&address(&env, local), [first.clone(), then.clone()])
    });
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.start("mailer");
    (env, smtp)
}

const REFUSED: Reply = Reply::Code(550, "5.7.1 relay refused");

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_by_the_server_is_sent_once_after_it_recovers_and_only_once() {
    let locals = ["r1", "r2", "r3"];
    let (env, smtp) = mailer_refusing(&locals, REFUSED, Reply::Accept).await;
    let batch: Vec<DeliveryMessage> = locals.iter().map(|l| delivery(&env, l)).collect();
    publish_deliveries(&env, &batch).await;
    assert_eq!(
        read_topic(&env.topics.deliveries_dlq, 3, PATIENCE)
            .await
            .len(),
        3
    );
    for sent in &batch {
        wait_for_status(&env, sent.delivery_id, "dead", PATIENCE).await;
    }

    let summary = tanto_json(
        &env,
        &[
            "dead-letters",
            "replay",
            "--tenant",
            &env.id,
            "--yes",
            "--actor",
            "ops-kim",
        ],
    );
    assert_eq!(
        (summary["chosen"].as_u64(), summary["replayed"].as_u64()),
        (Some(3), Some(3))
    );
    for sent in &batch {
        let row = wait_for_status(&env, sent.delivery_id, "sent", PATIENCE).await;
        assert_eq!(row.attempts, 2, "{row:?}");
        let shown = tanto_json(&env, &["history", "show", &sent.delivery_id.to_string()]);
        let outcomes: Vec<&str> = shown["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["dead", "sent"], "{shown}");
    }
    tokio::time::sleep(QUIET).await;
    let accepted = smtp.accepted();
    assert_eq!(accepted.len(), 3);
    assert!(accepted_once_each(&accepted), "{accepted:?}");

    let again = tanto_json(
        &env,
        &["dead-letters", "replay", "--tenant", &env.id, "--yes"],
    );
    assert_eq!(
        (again["replayed"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(3))
    );
    let forced = tanto_json(
        &env,
        &[
            "dead-letters",
            "replay",
            "--tenant",
            &env.id,
            "--yes",
            "--force",
        ],
    );
    assert_eq!(forced["replayed"].as_u64(), Some(3), "--force republishes");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        smtp.accepted().len(),
        3,
        "a sent delivery is never sent again"
    );
    assert_eq!(
        read_topic(&env.topics.deliveries, 9, QUIET).await.len(),
        3 + 3 + 3,
        "the batch, the replay and the forced replay; the second replay published nothing"
    );

    let audit = tanto_json(&env, &["dead-letters", "audit"]);
    let runs = audit.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{audit}");
    let first = &runs[2];
    assert_eq!(first["kind"], "deliveries");
    assert_eq!(
        first["dead_letter_topic"].as_str(),
        Some(env.topics.deliveries_dlq.as_str())
    );
    assert_eq!(first["actor"], "ops-kim");
    assert_eq!(first["status"], "finished");
    assert_eq!(
        (first["chosen"].as_u64(), first["replayed"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        (runs[1]["replayed"].as_u64(), runs[1]["skipped"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(runs[0]["forced"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_delivery_whose_cause_remains_goes_through_the_tiers_and_is_dead_lettered_once()
{
    let busy = Reply::Code(451, "4.3.0 try again later");
    let (env, smtp) = mailer_refusing(&["busy"], busy.clone(), busy).await;
    let stuck = delivery(&env, "busy");
    publish_deliveries(&env, std::slice::from_ref(&stuck)).await;
    read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    wait_for_status(&env, stuck.delivery_id, "dead", PATIENCE).await;

    tanto_ok(&env, &["dead-letters", "replay", "--all", "--yes"]);
    let dead = read_topic(&env.topics.deliveries_dlq, 2, PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    assert_eq!(
        read_topic(&env.topics.deliveries_dlq, 3, QUIET).await.len(),
        2,
        "dead-lettered again once, and not replayed by itself"
    );
    assert_eq!(
        smtp.received().len(),
        4,
        "two attempts per run: the topic, one tier"
    );
    assert_eq!(
        read_topic(&env.topics.deliveries_retry[0], 3, QUIET)
            .await
            .len(),
        2
    );
    let again = DeliveryMessage::from_json(dead[1].payload().unwrap()).unwrap();
    assert_eq!(again.replay_count, 1);
    let row = history(&env, stuck.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 4), "{row:?}");
    let shown = tanto_json(&env, &["history", "show", &stuck.delivery_id.to_string()]);
    let attempts: Vec<(i64, i64, &str, &str)> = shown["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let number = |key: &str| a[key].as_i64().unwrap();
            let text = |key: &str| a[key].as_str().unwrap_or("-");
            (
                number("attempt"),
                number("replay_count"),
                text("outcome"),
                text("smtp_reply"),
            )
        })
        .collect();
    let busy = "451 4.3.0 try again later";
    assert_eq!(
        attempts,
        [
            (1, 0, "retrying", busy),
            (2, 0, "dead", busy),
            (3, 1, "retrying", busy),
            (4, 1, "dead", busy)
        ],
        "every attempt with its error: {shown}"
    );
    assert_eq!(row.last_error_class.as_deref(), Some("smtp_4xx"));
    assert!(row.first_failed_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_held_after_an_unknown_outcome_is_sent_when_an_operator_replays_it() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(
        &address(&env, "held"),
        [Reply::DropAfterData, Reply::Accept],
    );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_UNKNOWN_OUTCOME", "hold");
    env.start("mailer");
    let held = delivery(&env, "held");
    publish_deliveries(&env, std::slice::from_ref(&held)).await;
    read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    wait_for_status(&env, held.delivery_id, "unknown", PATIENCE).await;

    let listed = tanto_json(
        &env,
        &["dead-letters", "list", "--reason", "unknown_outcome"],
    );
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    tanto_ok(
        &env,
        &[
            "dead-letters",
            "replay",
            "--reason",
            "unknown_outcome",
            "--yes",
        ],
    );

    let row = wait_for_status(&env, held.delivery_id, "sent", PATIENCE).await;
    assert_eq!((row.attempts, row.unknown_outcomes), (2, 1));
    assert_eq!(smtp.received().len(), 2);
    let shown = tanto_json(&env, &["history", "show", &held.delivery_id.to_string()]);
    let outcomes: Vec<(&str, &str)> = shown["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap(),
                a["error_class"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("unknown", "unknown_outcome"), ("sent", "-")],
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_changes_neither_the_ledger_nor_the_topics_nor_the_audit() {
    let (env, smtp) = mailer_refusing(&["dry"], REFUSED, Reply::Accept).await;
    let dead = delivery(&env, "dry");
    publish_deliveries(&env, std::slice::from_ref(&dead)).await;
    read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    let before = wait_for_status(&env, dead.delivery_id, "dead", PATIENCE).await;

    let plan = tanto_json(&env, &["dead-letters", "replay", "--all", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["would_replay"].as_array().unwrap().len(), 1);
    let text = tanto_ok(&env, &["dead-letters", "replay", "--all", "--dry-run"]);
    assert!(text.contains("would replay 1 of 1 chosen"), "{text}");
    tokio::time::sleep(QUIET).await;

    let after = history(&env, dead.delivery_id).await.unwrap();
    assert_eq!(
        (after.status, after.attempts, after.updated_at),
        (before.status, before.attempts, before.updated_at)
    );
    assert_eq!(read_topic(&env.topics.deliveries, 2, QUIET).await.len(), 1);
    assert_eq!(
        read_topic(&env.topics.deliveries_dlq, 2, QUIET).await.len(),
        1
    );
    assert_eq!(
        tanto_json(&env, &["dead-letters", "audit"]),
        Value::Array(vec![])
    );
    assert_eq!(smtp.received().len(), 1);
}

/// One dead-lettered delivery as the mailer writes it.
struct Dead {
    local: &'static str,
    tenant_is_env: bool,
    mail: &'static str,
    classes: &'static [RecipientClass],
    error_class: &'static str,
    attempts: u32,
    failed_at: &'static str,
}

/// Four dead deliveries that differ in every field a filter reads:
///
/// | local | tenant | mail | classes | class | attempts | failed |
/// |---|---|---|---|---|---|---|
/// | d1 | env.id | 5-1-2 | product_staff | smtp_5xx | 1 | 12-01 |
/// | d2 | other | 5-1-2 | company_wide | smtp_4xx | 4 | 12-02 |
/// | d3 | env.id | 5-1-1 | company_wide, customer_admin | smtp_4xx | 4 | 12-03 |
/// | d4 | env.id | 5-1-2 | customer_admin | render_error | 1 | 12-04 |
async fn four_dead_deliveries(env: &TestEnv) {
    use RecipientClass::{CompanyWide, CustomerAdmin, ProductStaff};
    let dead = [
        Dead {
            local: "d1",
            tenant_is_env: true,
            mail: "5-1-2",
            classes: &[ProductStaff],
            error_class: "smtp_5xx",
            attempts: 1,
            failed_at: "2026-12-01T09:00:00.000Z",
        },
        Dead {
            local: "d2",
            tenant_is_env: false,
            mail: "5-1-2",
            classes: &[CompanyWide],
            error_class: "smtp_4xx",
            attempts: 4,
            failed_at: "2026-12-02T09:00:00.000Z",
        },
        Dead {
            local: "d3",
            tenant_is_env: true,
            mail: "5-1-1",
            classes: &[CompanyWide, CustomerAdmin],
            error_class: "smtp_4xx",
            attempts: 4,
            failed_at: "2026-12-03T09:00:00.000Z",
        },
        Dead {
            local: "d4",
            tenant_is_env: true,
            mail: "5-1-2",
            classes: &[CustomerAdmin],
            error_class: "render_error",
            attempts: 1,
            failed_at: "2026-12-04T09:00:00.000Z",
        },
    ];
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    for dead in &dead {
        let mut message = delivery(env, dead.local);
        if !dead.tenant_is_env {
            message.tenant_id = "other".into();
        }
        message.mail.number = dead.mail.into();
        message.recipient.classes = dead.classes.to_vec();
        let headers = DeadLetterHeaders::new()
            .with(ATTEMPTS, dead.attempts)
            .with(ERROR_CLASS, dead.error_class)
            .with(ERROR, format!("failed with {}", dead.error_class))
            .with(LAST_FAILED_AT, dead.failed_at)
            .with("tanto.source.topic", &env.topics.deliveries);
        let (key, payload) = (message.delivery_id.to_string(), message.to_json());
        let record = FutureRecord::to(&env.topics.deliveries_dlq)
            .key(&key)
            .payload(&payload)
            .headers(headers.to_kafka());
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }
}

fn local_of(address: &str) -> String {
    address.split('@').next().unwrap().to_string()
}

/// Checks that `filter` lists exactly `expected` (by local part) and that a
/// replay of it publishes exactly those to the delivery topic.
async fn assert_selects(env: &TestEnv, filter: &[&str], expected: &[&str]) {
    four_dead_deliveries(env).await;
    let expected: BTreeSet<String> = expected.iter().map(|l| l.to_string()).collect();

    let mut list = vec!["dead-letters", "list"];
    list.extend_from_slice(filter);
    let listed: BTreeSet<String> = tanto_json(env, &list)
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| local_of(letter["address"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, expected, "list {filter:?}");

    let mut replay = vec!["dead-letters", "replay", "--yes", "--rate", "500"];
    replay.extend_from_slice(filter);
    let summary = tanto_json(env, &replay);
    assert_eq!(summary["replayed"], expected.len(), "{summary}");
    let published: BTreeSet<String> = read_topic(&env.topics.deliveries, 5, QUIET)
        .await
        .iter()
        .map(|record| DeliveryMessage::from_json(record.payload().unwrap()).unwrap())
        .inspect(|message| assert_eq!(message.replay_count, 1))
        .map(|message| local_of(&message.recipient.address))
        .collect();
    assert_eq!(published, expected, "replay {filter:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_filter_chooses_that_tenants_deliveries() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--tenant", &env.id.clone()], &["d1", "d3", "d4"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reason_filter_chooses_that_error_class() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--reason", "smtp_4xx"], &["d2", "d3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mail_filter_chooses_that_mail_number() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--mail", "5-1-1"], &["d3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_class_filter_chooses_recipients_reached_through_that_class() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--class", "customer_admin"], &["d3", "d4"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_address_filter_chooses_that_address_however_it_is_spelled() {
    let env = TestEnv::new().await;
    let spelled = address(&env, "D2").to_uppercase();
    assert_selects(&env, &["--address", &spelled], &["d2"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempts_filter_chooses_deliveries_tried_at_least_that_often() {
    let env = TestEnv::new().await;
    assert_selects(&env, &["--min-attempts", "4"], &["d2", "d3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_time_range_includes_since_and_excludes_until() {
    let env = TestEnv::new().await;
    let range = [
        "--since",
        "2026-12-02T09:00:00Z",
        "--until",
        "2026-12-04T09:00:00Z",
    ];
    assert_selects(&env, &range, &["d2", "d3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_show_read_well_and_errors_say_what_to_do() {
    let env = TestEnv::new().await;
    four_dead_deliveries(&env).await;
    let table = tanto_ok(&env, &["dead-letters", "list", "--mail", "5-1-1"]);
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0].split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        header,
        "ID SET ASIDE (UTC) REASON TENANT MAIL RECIPIENT ATTEMPTS REPLAYED ERROR"
    );
    assert!(lines[1].contains(&address(&env, "d3")), "{table}");
    assert!(
        lines[1].contains("smtp_4xx") && lines[1].contains(&env.id),
        "{table}"
    );
    assert!(lines[2].starts_with("1 dead letters on "), "{table}");

    let id = tanto_json(&env, &["dead-letters", "list", "--mail", "5-1-1"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = tanto_json(&env, &["dead-letters", "show", &id]);
    assert_eq!(shown["reason"], "smtp_4xx");
    assert_eq!(shown["attempts"], 4);
    assert_eq!(shown["mail"], "5-1-1");
    assert_eq!(
        shown["classes"],
        serde_json::json!(["company_wide", "customer_admin"])
    );
    assert_eq!(
        shown["payload"]["recipient"]["address"],
        address(&env, "d3")
    );

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    let headers = DeadLetterHeaders::new().with(ERROR_CLASS, "malformed_delivery");
    let record = FutureRecord::to(&env.topics.deliveries_dlq)
        .key("?")
        .payload("not a delivery")
        .headers(headers.to_kafka());
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    let output = env.tanto(&["dead-letters", "replay", "--all", "--yes"]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("is not a delivery message (malformed_delivery), so there is nothing to send; leave it out of the selection"),
        "{err}"
    );
    assert!(
        read_topic(&env.topics.deliveries, 1, QUIET)
            .await
            .is_empty(),
        "nothing replayed"
    );

    let output = env.tanto(&["dead-letters", "list", "--class", "staff"]);
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.starts_with("tanto: --class 'staff' is not a recipient class"),
        "{err}"
    );
}
