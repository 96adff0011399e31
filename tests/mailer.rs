//! The mailer's guarantee, clause by clause, against real SMTP servers:
//! MailDev where mail is accepted, a scripted server where it must fail,
//! and a port where nothing listens for a server that is down. Deliveries
//! are published straight to each test's delivery topic.
//!
//! Retry delays are configured short (one or two seconds) so that the
//! schedule runs in the time of a test.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tanto::retry::{ATTEMPTS, DUE_AT, ERROR, ERROR_CLASS, FIRST_FAILED_AT, LAST_FAILED_AT};
use tanto::retry::{SMTP_REPLY, parse_time};
use tanto::smtp::message_id;
use tanto_e2e::mailer::{
    copies_per_message_id, delete_mails, delivery, header, history, mails_from_sender,
    publish_deliveries, read_topic, status_counts, wait_for_status,
};
use tanto_e2e::smtp::{Reply, Script, ScriptedSmtp, closed_port};
use tanto_e2e::{Mail, TestEnv, publish_raw, subject};

/// Long enough for anything the mailer does in these tests.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long a test waits to be sure that something does not happen: longer
/// than the retry delays it configures.
const QUIET: Duration = Duration::from_secs(3);

/// A test environment whose mailer sends to `port` with retry `delays`.
async fn env_with(port: u16, delays: &str) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.set("TANTO_SMTP_PORT", port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", delays);
    env
}

fn address(env: &TestEnv, local: &str) -> String {
    format!("{local}@{}", env.domain())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_reply_is_retried_after_its_delay_and_the_mail_is_sent_once() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(
        &address(&env, "retry"),
        [
            Reply::Code(421, "4.3.2 service shutting down"),
            Reply::Code(451, "4.3.0 try again later"),
            Reply::Accept,
        ],
    );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "2,2");
    env.start("mailer");

    let retried = delivery(&env, "retry");
    publish_deliveries(&env, std::slice::from_ref(&retried)).await;
    smtp.wait_for(1, PATIENCE).await;
    // A fresh delivery published while the first one waits for its retry
    // must not wait with it.
    let fresh = delivery(&env, "fresh");
    publish_deliveries(&env, std::slice::from_ref(&fresh)).await;
    wait_for_status(&env, retried.delivery_id, "sent", PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    let received = smtp.received();
    let attempts: Vec<_> = received
        .iter()
        .filter(|mail| mail.message_id == message_id(&retried))
        .collect();
    let replies: Vec<&Reply> = attempts.iter().map(|mail| &mail.reply).collect();
    assert_eq!(
        replies,
        [
            &Reply::Code(421, "4.3.2 service shutting down"),
            &Reply::Code(451, "4.3.0 try again later"),
            &Reply::Accept
        ]
    );
    for pair in attempts.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    }
    let fresh_at = received
        .iter()
        .find(|mail| mail.message_id == message_id(&fresh))
        .expect("the fresh delivery was sent")
        .at;
    assert!(
        fresh_at < attempts[1].at,
        "the fresh delivery waited for the retry"
    );
    let accepted = copies_per_message_id(smtp.accepted().iter().map(|m| m.message_id.as_str()));
    assert_eq!(
        accepted.values().collect::<Vec<_>>(),
        [&1, &1],
        "{accepted:?}"
    );

    let row = history(&env, retried.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 3));
    assert_eq!(
        row.last_smtp_reply.as_deref(),
        Some("451 4.3.0 try again later")
    );
    let tier_1 = read_topic(&env.topics.deliveries_retry[0], 1, PATIENCE).await;
    let tier_2 = read_topic(&env.topics.deliveries_retry[1], 1, PATIENCE).await;
    assert_eq!(header(&tier_1[0], ATTEMPTS).as_deref(), Some("1"));
    assert_eq!(header(&tier_2[0], ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(header(&tier_1[0], ERROR_CLASS).as_deref(), Some("smtp_4xx"));
    assert_eq!(
        header(&tier_1[0], SMTP_REPLY).as_deref(),
        Some("421 4.3.2 service shutting down")
    );
    let due = parse_time(&header(&tier_2[0], DUE_AT).unwrap()).unwrap();
    let failed = parse_time(&header(&tier_2[0], LAST_FAILED_AT).unwrap()).unwrap();
    assert_eq!(due - failed, chrono::Duration::seconds(2));
    assert_eq!(
        read_topic(&env.topics.deliveries_dlq, 1, QUIET).await.len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_queued_behind_one_another_each_wait_for_their_own_due_time() {
    const DELIVERIES: usize = 8;
    let mut env = TestEnv::new().await;
    let mut script = Script::new();
    for n in 0..DELIVERIES {
        let replies = [
            Reply::Code(451, "4.3.0 try again later"),
            Reply::Code(452, "4.2.2 mailbox full"),
            Reply::Accept,
        ];
        script = script.to(&address(&env, &format!("queued{n}")), replies);
    }
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1,2");
    env.start("mailer");

    // Spread out, so that each tier partition holds records due at
    // different times, one behind the other.
    let deliveries: Vec<_> = (0..DELIVERIES)
        .map(|n| delivery(&env, &format!("queued{n}")))
        .collect();
    for delivery in &deliveries {
        publish_deliveries(&env, std::slice::from_ref(delivery)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    smtp.wait_for(3 * DELIVERIES, PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    let received = smtp.received();
    assert_eq!(
        received.len(),
        3 * DELIVERIES,
        "one attempt per reply, no more"
    );
    for delivery in &deliveries {
        let attempts: Vec<_> = received
            .iter()
            .filter(|mail| mail.message_id == message_id(delivery))
            .collect();
        assert_eq!(attempts.len(), 3);
        let first_wait = attempts[1].at - attempts[0].at;
        let second_wait = attempts[2].at - attempts[1].at;
        assert!(first_wait >= Duration::from_secs(1), "{first_wait:?}");
        assert!(second_wait >= Duration::from_secs(2), "{second_wait:?}");
        let row = history(&env, delivery.delivery_id).await.unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("sent", 3));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_server_closed_is_replaced_without_a_failed_attempt() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(&address(&env, "pooled"), [Reply::AcceptThenClose]);
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_SMTP_CONNECTIONS", "1");
    env.start("mailer");

    let first = delivery(&env, "pooled");
    publish_deliveries(&env, std::slice::from_ref(&first)).await;
    wait_for_status(&env, first.delivery_id, "sent", PATIENCE).await;
    let second = delivery(&env, "pooled");
    publish_deliveries(&env, std::slice::from_ref(&second)).await;
    let row = wait_for_status(&env, second.delivery_id, "sent", PATIENCE).await;

    assert_eq!(row.attempts, 1, "the closed connection cost no attempt");
    assert_eq!(smtp.accepted().len(), 2);
    assert_eq!(smtp.connections(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_reply_dead_letters_the_delivery_at_once_with_the_reply() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(
        &address(&env, "gone"),
        [Reply::Code(550, "5.1.1 mailbox unavailable")],
    );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.start("mailer");

    let gone = delivery(&env, "gone");
    publish_deliveries(&env, std::slice::from_ref(&gone)).await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    let record = &dead[0];
    assert_eq!(header(record, ERROR_CLASS).as_deref(), Some("smtp_5xx"));
    assert_eq!(header(record, ATTEMPTS).as_deref(), Some("1"));
    assert_eq!(
        header(record, SMTP_REPLY).as_deref(),
        Some("550 5.1.1 mailbox unavailable")
    );
    assert_eq!(
        header(record, FIRST_FAILED_AT),
        header(record, LAST_FAILED_AT)
    );
    assert_eq!(header(record, DUE_AT), None);
    assert_eq!(
        rdkafka::Message::payload(record),
        Some(gone.to_json().as_slice()),
        "the record holds the delivery as it was written"
    );
    assert_eq!(
        smtp.received().len(),
        1,
        "a permanent failure is not retried"
    );
    let tier_1 = read_topic(&env.topics.deliveries_retry[0], 1, QUIET).await;
    assert!(tier_1.is_empty());

    let row = history(&env, gone.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    assert_eq!(row.last_error_class.as_deref(), Some("smtp_5xx"));
    assert_eq!(
        row.last_smtp_reply.as_deref(),
        Some("550 5.1.1 mailbox unavailable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_down_for_longer_than_the_retry_schedule_ends_in_the_dead_letter_topic() {
    let mut env = env_with(closed_port().await, "1,1").await;
    env.start("mailer");

    let stranded = delivery(&env, "stranded");
    publish_deliveries(&env, std::slice::from_ref(&stranded)).await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;

    let record = &dead[0];
    assert_eq!(header(record, ERROR_CLASS).as_deref(), Some("connection"));
    assert_eq!(header(record, ATTEMPTS).as_deref(), Some("3"));
    assert!(
        header(record, ERROR).unwrap().contains("refused"),
        "{:?}",
        header(record, ERROR)
    );
    assert_eq!(
        header(record, SMTP_REPLY),
        None,
        "a refused connection has no reply"
    );
    let first = parse_time(&header(record, FIRST_FAILED_AT).unwrap()).unwrap();
    let last = parse_time(&header(record, LAST_FAILED_AT).unwrap()).unwrap();
    assert!(
        last - first >= chrono::Duration::seconds(2),
        "{first} .. {last}"
    );
    for tier in &env.topics.deliveries_retry[..2] {
        assert_eq!(read_topic(tier, 2, QUIET).await.len(), 1, "{tier}");
    }

    let row = history(&env, stranded.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 3));
    assert_eq!(row.first_failed_at, Some(first));
    assert_eq!(row.next_attempt_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_with_a_missing_variable_is_dead_lettered_as_a_render_error() {
    let smtp = ScriptedSmtp::start(Script::new()).await;
    let mut env = env_with(smtp.port, "1").await;
    let templates = broken_templates(&env, "order_applied_staff.txt");
    env.set("TANTO_TEMPLATES", templates.display().to_string());
    env.start("mailer");

    let broken = delivery(&env, "broken");
    publish_deliveries(&env, std::slice::from_ref(&broken)).await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    let record = &dead[0];
    assert_eq!(header(record, ERROR_CLASS).as_deref(), Some("render_error"));
    assert_eq!(header(record, ATTEMPTS).as_deref(), Some("1"));
    let error = header(record, ERROR).unwrap();
    assert!(error.contains("order_applied_staff.txt"), "{error}");
    assert!(error.contains("no_such_field"), "{error}");
    assert!(smtp.received().is_empty(), "nothing reaches the server");
    assert!(
        read_topic(&env.topics.deliveries_retry[0], 1, QUIET)
            .await
            .is_empty()
    );

    let row = history(&env, broken.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    assert_eq!(row.last_error_class.as_deref(), Some("render_error"));
    assert_eq!(row.subject, None, "nothing was rendered");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_address_is_dead_lettered_at_once() {
    let smtp = ScriptedSmtp::start(Script::new()).await;
    let mut env = env_with(smtp.port, "1").await;
    env.start("mailer");

    let mut invalid = delivery(&env, "invalid");
    invalid.recipient.address = "nobody-at-all".into();
    publish_deliveries(&env, std::slice::from_ref(&invalid)).await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;

    assert_eq!(
        header(&dead[0], ERROR_CLASS).as_deref(),
        Some("invalid_address")
    );
    assert!(smtp.received().is_empty());
    let row = history(&env, invalid.delivery_id).await.unwrap();
    assert_eq!(row.status, "dead");
    assert!(
        row.body_text.unwrap().contains("ORD-000123"),
        "the rendered mail is kept for the history"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_is_not_a_delivery_is_dead_lettered_as_it_is() {
    let mut env = TestEnv::new().await;
    env.start("mailer");

    publish_raw(&env.topics.deliveries, "k", b"{ not a delivery").await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;

    assert_eq!(
        header(&dead[0], ERROR_CLASS).as_deref(),
        Some("malformed_delivery")
    );
    assert_eq!(header(&dead[0], ATTEMPTS).as_deref(), Some("0"));
    assert_eq!(
        rdkafka::Message::payload(&dead[0]),
        Some(b"{ not a delivery".as_slice())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_delivery_arriving_twice_is_sent_once() {
    let mut env = TestEnv::new().await;
    env.start("mailer");

    let twice = delivery(&env, "twice");
    publish_deliveries(&env, &[twice.clone(), twice.clone()]).await;
    wait_for_status(&env, twice.delivery_id, "sent", PATIENCE).await;
    // Once more after it was sent, as a replay of the topic would.
    publish_deliveries(&env, std::slice::from_ref(&twice)).await;
    let after = delivery(&env, "after");
    publish_deliveries(&env, std::slice::from_ref(&after)).await;
    wait_for_status(&env, after.delivery_id, "sent", PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    let mails = mails_from_sender(&env).await;
    let copies = copies_per_message_id(mails.iter().map(Mail::message_id));
    assert_eq!(copies.get(&message_id(&twice)), Some(&1), "{copies:?}");
    let row = history(&env, twice.delivery_id).await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_shows_what_was_sent_retried_and_dead_lettered() {
    let mut env = TestEnv::new().await;
    let script = Script::new()
        .to(
            &address(&env, "retried"),
            [Reply::Code(451, "4.7.1 greylisted"), Reply::Accept],
        )
        .to(
            &address(&env, "dead"),
            [Reply::Code(554, "5.7.1 rejected by policy")],
        );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.start("mailer");

    let sent = delivery(&env, "sent");
    let retried = delivery(&env, "retried");
    let dead = delivery(&env, "dead");
    publish_deliveries(&env, &[sent.clone(), retried.clone(), dead.clone()]).await;
    let sent_row = wait_for_status(&env, sent.delivery_id, "sent", PATIENCE).await;
    let retried_row = wait_for_status(&env, retried.delivery_id, "sent", PATIENCE).await;
    let dead_row = wait_for_status(&env, dead.delivery_id, "dead", PATIENCE).await;

    for (row, delivery) in [
        (&sent_row, &sent),
        (&retried_row, &retried),
        (&dead_row, &dead),
    ] {
        assert_eq!(row.tenant_id, env.id);
        assert_eq!(row.event_id, delivery.event.event_id);
        assert_eq!(row.event_type, "order.applied");
        assert_eq!(row.transaction_number, "ORD-000123");
        assert_eq!(row.management_number, "5-1-2");
        assert_eq!(row.mail_name, "注文申込");
        assert_eq!(row.recipient_address, delivery.recipient.address);
        assert_eq!(row.recipient_name, "田中 一郎");
        assert_eq!(row.recipient_classes, ["product_staff", "customer_staff"]);
        assert_eq!(
            row.subject.as_deref(),
            Some(subject("販売先向け注文のご連絡").as_str())
        );
        let sender = format!("ACME <noreply@{}>", env.domain());
        assert_eq!(row.sender.as_deref(), Some(sender.as_str()));
        assert!(row.body_text.as_ref().unwrap().contains("ORD-000123"));
        assert!(row.body_html.as_ref().unwrap().contains("ORD-000123"));
        assert!(row.created_at <= row.last_attempt_at.unwrap());
        assert!(row.last_attempt_at.unwrap() <= row.updated_at);
        assert_eq!(row.unknown_outcomes, 0);
    }

    assert_eq!(sent_row.attempts, 1);
    assert!(sent_row.sent_at.is_some());
    assert_eq!(sent_row.last_error_class, None);
    assert_eq!(sent_row.first_failed_at, None);

    assert_eq!(retried_row.attempts, 2);
    assert!(retried_row.sent_at.unwrap() >= retried_row.last_failed_at.unwrap());
    assert_eq!(retried_row.last_error_class.as_deref(), Some("smtp_4xx"));
    assert_eq!(
        retried_row.last_smtp_reply.as_deref(),
        Some("451 4.7.1 greylisted")
    );
    assert_eq!(retried_row.first_failed_at, retried_row.last_failed_at);
    assert_eq!(retried_row.next_attempt_at, None);

    assert_eq!(dead_row.attempts, 1);
    assert_eq!(dead_row.sent_at, None);
    assert_eq!(dead_row.last_error_class.as_deref(), Some("smtp_5xx"));
    assert_eq!(
        dead_row.last_smtp_reply.as_deref(),
        Some("554 5.7.1 rejected by policy")
    );
    assert!(dead_row.last_error.unwrap().contains("rejected by policy"));
    assert!(dead_row.first_failed_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_dropped_after_the_data_is_an_unknown_outcome_sent_again() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(
        &address(&env, "dropped"),
        [Reply::DropAfterData, Reply::Accept],
    );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.start("mailer");

    let dropped = delivery(&env, "dropped");
    publish_deliveries(&env, std::slice::from_ref(&dropped)).await;
    let row = wait_for_status(&env, dropped.delivery_id, "sent", PATIENCE).await;

    // The server may have kept the first copy: that is the one case of a
    // second copy, and it is counted.
    assert_eq!(smtp.received().len(), 2);
    assert_eq!((row.attempts, row.unknown_outcomes), (2, 1));
    assert_eq!(row.last_error_class.as_deref(), Some("unknown_outcome"));
    let tier_1 = read_topic(&env.topics.deliveries_retry[0], 1, PATIENCE).await;
    assert_eq!(
        header(&tier_1[0], ERROR_CLASS).as_deref(),
        Some("unknown_outcome")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_hold_an_unknown_outcome_is_set_aside_for_an_operator() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(
        &address(&env, "held"),
        [Reply::DropAfterData, Reply::Accept],
    );
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.set("TANTO_RETRY_DELAYS_SECS", "1");
    env.set("TANTO_UNKNOWN_OUTCOME", "hold");
    env.start("mailer");

    let held = delivery(&env, "held");
    publish_deliveries(&env, std::slice::from_ref(&held)).await;
    let row = wait_for_status(&env, held.delivery_id, "unknown", PATIENCE).await;
    let dead = read_topic(&env.topics.deliveries_dlq, 1, PATIENCE).await;
    tokio::time::sleep(QUIET).await;

    assert_eq!((row.attempts, row.unknown_outcomes), (1, 1));
    assert_eq!(
        header(&dead[0], ERROR_CLASS).as_deref(),
        Some("unknown_outcome")
    );
    assert_eq!(header(&dead[0], ATTEMPTS).as_deref(), Some("1"));
    assert_eq!(
        smtp.received().len(),
        1,
        "a held delivery is not sent again"
    );
    let row = history(&env, held.delivery_id).await.unwrap();
    assert_eq!(row.status, "unknown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mailer_killed_mid_send_sends_again_after_restart_and_counts_it() {
    let mut env = TestEnv::new().await;
    let script = Script::new().to(&address(&env, "cut"), [Reply::Hang, Reply::Accept]);
    let smtp = ScriptedSmtp::start(script).await;
    env.set("TANTO_SMTP_PORT", smtp.port.to_string());
    env.start("mailer");

    let cut = delivery(&env, "cut");
    publish_deliveries(&env, std::slice::from_ref(&cut)).await;
    smtp.wait_for(1, PATIENCE).await;
    let row = history(&env, cut.delivery_id).await.unwrap();
    assert_eq!(
        row.status, "sending",
        "the server has the data and has not answered"
    );
    env.kill("mailer");
    env.start("mailer");
    // The killed mailer's consumers stay in their groups until their
    // session times out (45 s): only then are the partitions reassigned.
    let row = wait_for_status(&env, cut.delivery_id, "sent", Duration::from_secs(120)).await;

    assert_eq!((row.attempts, row.unknown_outcomes), (2, 1));
    let copies = copies_per_message_id(smtp.received().iter().map(|m| m.message_id.as_str()));
    assert_eq!(copies.get(&message_id(&cut)), Some(&2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mailer_killed_during_a_batch_of_1000_loses_none_and_repeats_only_what_was_in_flight() {
    const DELIVERIES: usize = 1000;
    const CONNECTIONS: i32 = 4;
    let mut env = TestEnv::new().await;
    env.set("TANTO_SMTP_CONNECTIONS", CONNECTIONS.to_string());
    let deliveries: Vec<_> = (0..DELIVERIES)
        .map(|n| delivery(&env, &format!("r{}", n % 50)))
        .collect();
    publish_deliveries(&env, &deliveries).await;
    env.start("mailer");

    wait_for_sent_at_least(&env, 100).await;
    env.kill("mailer");
    let at_kill = status_counts(&env).await;
    assert!(
        at_kill.get("sent").copied().unwrap_or(0) < DELIVERIES as i64,
        "the kill came after the whole batch: {at_kill:?}"
    );
    env.start("mailer");
    wait_for_sent_at_least(&env, DELIVERIES as i64).await;
    tokio::time::sleep(QUIET).await;

    let mails = mails_from_sender(&env).await;
    let copies = copies_per_message_id(mails.iter().map(Mail::message_id));
    let missing: Vec<_> = deliveries
        .iter()
        .filter(|delivery| !copies.contains_key(&message_id(delivery)))
        .map(|delivery| delivery.delivery_id)
        .collect();
    assert!(missing.is_empty(), "missing at the server: {missing:?}");
    assert_eq!(
        copies.len(),
        DELIVERIES,
        "mails that are no delivery of this test"
    );
    let repeated: Vec<&String> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(copies.values().all(|n| *n <= 2), "{copies:?}");

    // A delivery is `sending` only while it holds one of the CONNECTIONS
    // send slots, from just before its data is written until its outcome is
    // recorded; only such a delivery is sent again after a restart (every
    // other one is skipped as sent, or was never sent). So at most
    // CONNECTIONS deliveries were in flight at the kill, each of them is
    // counted as an unknown outcome, and only those may have a second copy.
    let unknown = env
        .db()
        .await
        .query(
            "SELECT delivery_id FROM deliveries WHERE unknown_outcomes > 0",
            &[],
        )
        .await
        .unwrap();
    let unknown: Vec<String> = unknown
        .iter()
        .map(|row| format!("<{}@tanto>", row.get::<_, uuid::Uuid>(0)))
        .collect();
    assert!(unknown.len() <= CONNECTIONS as usize, "{unknown:?}");
    for id in &repeated {
        assert!(
            unknown.contains(id),
            "{id} was sent twice without an unknown outcome"
        );
    }
    assert_eq!(
        status_counts(&env).await.get("sent"),
        Some(&(DELIVERIES as i64))
    );
    delete_mails(&mails).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_older_than_its_retention_is_deleted_but_open_deliveries_are_kept() {
    let env = TestEnv::new().await;
    let ledger = tanto::ledger::Ledger::new(tanto::db::pool(&env.settings().database).unwrap());
    let old_sent = delivery(&env, "old");
    let recent_sent = delivery(&env, "recent");
    let old_open = delivery(&env, "open");
    let begin = tanto::ledger::Begin {
        seen: None,
        after_unknown: false,
    };
    let mail = tanto::render::RenderedMail {
        subject: "s".into(),
        text: "t".into(),
        html: "h".into(),
    };
    for delivery in [&old_sent, &recent_sent, &old_open] {
        ledger.begin_attempt(delivery, begin).await.unwrap();
    }
    for delivery in [&old_sent, &recent_sent] {
        ledger
            .record_sent(delivery.delivery_id, "s", &mail)
            .await
            .unwrap();
    }
    env.db()
        .await
        .execute(
            "UPDATE deliveries SET updated_at = now() - interval '91 days'
             WHERE delivery_id = ANY($1)",
            &[&vec![old_sent.delivery_id, old_open.delivery_id]],
        )
        .await
        .unwrap();

    let deleted = ledger
        .purge(Duration::from_secs(90 * 24 * 60 * 60))
        .await
        .unwrap();

    assert_eq!(deleted, 1);
    assert!(history(&env, old_sent.delivery_id).await.is_none());
    assert!(history(&env, recent_sent.delivery_id).await.is_some());
    assert!(
        history(&env, old_open.delivery_id).await.is_some(),
        "a delivery still in progress keeps its row"
    );
}

/// Waits until at least `count` deliveries are recorded as sent.
async fn wait_for_sent_at_least(env: &TestEnv, count: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let counts = status_counts(env).await;
        if counts.get("sent").copied().unwrap_or(0) >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} deliveries were sent: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A copy of the shipped templates in which `template` uses a variable that
/// no delivery has.
fn broken_templates(env: &TestEnv, template: &str) -> std::path::PathBuf {
    let source = tanto_e2e::repo_root().join("deploy/mail/templates");
    let target = tanto_e2e::repo_root().join(format!("target/e2e/{}-templates", env.id));
    copy_dir(&source, &target);
    std::fs::write(target.join(template), "{{ transaction.no_such_field }}").unwrap();
    target
}

fn copy_dir(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &target.join(entry.file_name()));
        } else {
            std::fs::copy(&path, target.join(entry.file_name())).unwrap();
        }
    }
}
