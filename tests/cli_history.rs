//! `tanto history` against a real database: for a known send history
//! (written straight into the ledger, so that every time and reply is
//! known) the table, the per-mail view and the JSON are exactly as
//! expected, each filter chooses exactly what it says, pages follow one
//! another without repeating or skipping a row, and `history show` prints
//! the whole record.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tanto_e2e::{TestEnv, tanto_json, tanto_ok};
use uuid::Uuid;

/// The delivery id of row `n` of the scenario.
fn id(n: u8) -> Uuid {
    Uuid::from_u128(0xa000 + u128::from(n))
}

/// Five deliveries, oldest first:
///
/// | n | tenant | event | mail | to | classes | status |
/// |---|---|---|---|---|---|---|
/// | 1 | acme | e-1 | 5-1-2 | tanaka | company_wide | sent |
/// | 2 | acme | e-1 | 5-1-2 | sato | company_wide, product_staff | sent |
/// | 3 | acme | e-1 | 5-1-1 | admin@cust | customer_admin | dead (550) |
/// | 4 | acme | e-2 | 5-1-2 | tanaka | company_wide | retrying |
/// | 5 | beta | e-9 | 5-1-2 | x@beta | company_wide | sent |
async fn known_history(env: &TestEnv) {
    let db = env.db().await;
    db.batch_execute(&format!(
        "INSERT INTO deliveries (delivery_id, tenant_id, event_id, event_type,
             transaction_number, management_number, mail_name, recipient_address,
             recipient_name, recipient_classes, status, attempts, subject, sender, body_text,
             body_html, last_error_class, last_error, last_smtp_reply, created_at,
             last_attempt_at, sent_at, first_failed_at, last_failed_at, next_attempt_at)
         VALUES
         ('{}', 'acme', 'e-1', 'order.applied', 'ORD-1', '5-1-2', '注文申込',
          'tanaka@acme.example', '田中', '{{company_wide}}', 'sent', 1, '[ACME] 注文申込',
          'noreply@acme.example', 'ご注文を受け付けました。', '<p>ご注文</p>', NULL, NULL,
          NULL, '2026-12-03T01:00:00Z', '2026-12-03T01:00:00Z', '2026-12-03T01:00:05Z', NULL,
          NULL, NULL),
         ('{}', 'acme', 'e-1', 'order.applied', 'ORD-1', '5-1-2', '注文申込',
          'sato@acme.example', '佐藤', '{{company_wide,product_staff}}', 'sent', 1,
          '[ACME] 注文申込', 'noreply@acme.example', 'ご注文を受け付けました。', NULL,
          NULL, NULL, NULL, '2026-12-03T01:00:01Z', '2026-12-03T01:00:01Z',
          '2026-12-03T01:00:06Z', NULL, NULL, NULL),
         ('{}', 'acme', 'e-1', 'order.applied', 'ORD-1', '5-1-1', '注文確認',
          'admin@cust.example', '', '{{customer_admin}}', 'dead', 1, '[ACME] 注文確認',
          'noreply@acme.example', 'ご注文の確認です。', NULL, 'smtp_5xx',
          '550 5.1.1 mailbox unavailable', '550 5.1.1 mailbox unavailable',
          '2026-12-03T01:00:02Z', '2026-12-03T01:00:02Z', NULL, '2026-12-03T01:00:03Z',
          '2026-12-03T01:00:03Z', NULL),
         ('{}', 'acme', 'e-2', 'order.applied', 'ORD-2', '5-1-2', '注文申込',
          'tanaka@acme.example', '田中', '{{company_wide}}', 'retrying', 1, NULL, NULL,
          NULL, NULL, 'smtp_4xx', '451 try later', '451 try later', '2026-12-03T02:00:00Z',
          '2026-12-03T02:00:00Z', NULL, '2026-12-03T02:00:01Z', '2026-12-03T02:00:01Z',
          '2026-12-03T02:00:31Z'),
         ('{}', 'beta', 'e-9', 'order.applied', 'ORD-9', '5-1-2', '注文申込',
          'x@beta.example', '', '{{company_wide}}', 'sent', 1, '[BETA] 注文申込',
          'noreply@beta.example', '.', NULL, NULL, NULL, NULL, '2026-12-03T03:00:00Z',
          '2026-12-03T03:00:00Z', '2026-12-03T03:00:01Z', NULL, NULL, NULL)",
        id(1),
        id(2),
        id(3),
        id(4),
        id(5)
    ))
    .await
    .unwrap();
    db.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, replay_count, started_at,
             finished_at, outcome, error_class, error, smtp_reply)
         VALUES ($1, 1, 0, '2026-12-03T01:00:02Z', '2026-12-03T01:00:03Z', 'dead', 'smtp_5xx',
                 '550 5.1.1 mailbox unavailable', '550 5.1.1 mailbox unavailable')",
        &[&id(3)],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_lists_deliveries_newest_first_as_the_platform_screen_does() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let table = tanto_ok(&env, &["history", "--tenant", "acme"]);

    let expected = format!(
        "\
RESULT       SUBJECT      SENDER                RECIPIENT                      NUMBER  MAIL NAME  TIME (UTC)           DELIVERY
in progress  -            -                     tanaka@acme.example (全社)       5-1-2   注文申込       2026-12-03 02:00:00  {}
failed       [ACME] 注文確認  noreply@acme.example  admin@cust.example (販売先・管理者)   5-1-1   注文確認       2026-12-03 01:00:02  {}
OK           [ACME] 注文申込  noreply@acme.example  sato@acme.example (全社, 商品担当者)  5-1-2   注文申込       2026-12-03 01:00:06  {}
OK           [ACME] 注文申込  noreply@acme.example  tanaka@acme.example (全社)       5-1-2   注文申込       2026-12-03 01:00:05  {}
4 rows; no more
",
        id(4),
        id(3),
        id(2),
        id(1)
    );
    assert_eq!(table, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_holds_every_listed_field_and_no_cursor_on_the_last_page() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let page = tanto_json(&env, &["history", "--tenant", "acme", "--mail", "5-1-1"]);

    assert_eq!(
        page,
        json!({
            "rows": [{
                "delivery_id": id(3).to_string(),
                "tenant_id": "acme",
                "event_id": "e-1",
                "transaction_number": "ORD-1",
                "management_number": "5-1-1",
                "mail_name": "注文確認",
                "result": "failed",
                "status": "dead",
                "subject": "[ACME] 注文確認",
                "sender": "noreply@acme.example",
                "recipient_address": "admin@cust.example",
                "recipient_classes": ["customer_admin"],
                "time": "2026-12-03T01:00:02Z",
                "attempts": 1,
                "last_error_class": "smtp_5xx",
            }],
            "next_cursor": null,
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn by_mail_there_is_one_row_per_event_and_mail_with_recipients_by_class() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let table = tanto_ok(&env, &["history", "--tenant", "acme", "--by-mail"]);
    let expected = "\
RESULT       SUBJECT      SENDER                NUMBER  MAIL NAME  TIME (UTC)           RECIPIENTS
in progress  -            -                     5-1-2   注文申込       2026-12-03 02:00:00  全社: tanaka@acme.example
failed       [ACME] 注文確認  noreply@acme.example  5-1-1   注文確認       2026-12-03 01:00:02  販売先・管理者: admin@cust.example
OK           [ACME] 注文申込  noreply@acme.example  5-1-2   注文申込       2026-12-03 01:00:00  全社: sato@acme.example, tanaka@acme.example; 商品担当者: sato@acme.example
3 rows; no more
";
    assert_eq!(table, expected);

    let page = tanto_json(
        &env,
        &["history", "--event", "e-1", "--mail", "5-1-2", "--by-mail"],
    );
    let mail = &page["rows"][0];
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert_eq!(mail["result"], "OK");
    assert_eq!(
        mail["recipients"],
        json!([
            {"class": "company_wide", "addresses": ["sato@acme.example", "tanaka@acme.example"]},
            {"class": "product_staff", "addresses": ["sato@acme.example"]},
        ])
    );
    assert_eq!(
        mail["deliveries"],
        json!([id(2).to_string(), id(1).to_string()])
    );
}

/// The delivery numbers (see [`known_history`]) `history` lists for `filter`.
fn chosen(env: &TestEnv, filter: &[&str]) -> Vec<u8> {
    let mut args = vec!["history"];
    args.extend_from_slice(filter);
    let page = tanto_json(env, &args);
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let id: Uuid = row["delivery_id"].as_str().unwrap().parse().unwrap();
            u8::try_from(id.as_u128() - 0xa000).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_filter_chooses_exactly_what_it_says() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let cases: &[(&[&str], &[u8])] = &[
        (&[], &[5, 4, 3, 2, 1]),
        (&["--tenant", "beta"], &[5]),
        (&["--event", "e-1"], &[3, 2, 1]),
        (&["--transaction", "ORD-2"], &[4]),
        (&["--mail", "5-1-1"], &[3]),
        (&["--class", "product_staff"], &[2]),
        (&["--address", "Tanaka@ACME.example"], &[4, 1]),
        (&["--result", "sent"], &[5, 2, 1]),
        (&["--result", "failed"], &[3]),
        (&["--result", "in_progress"], &[4]),
        (
            &[
                "--since",
                "2026-12-03T01:00:01Z",
                "--until",
                "2026-12-03T03:00:00Z",
            ],
            &[4, 3, 2],
        ),
        (
            &[
                "--tenant",
                "acme",
                "--address",
                "tanaka@acme.example",
                "--event",
                "e-2",
            ],
            &[4],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(chosen(&env, filter), *expected, "history {filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_follow_one_another_without_repeating_or_skipping_a_row() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..4 {
        let mut args = vec!["history", "--limit", "2"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let page = tanto_json(&env, &args);
        seen.extend(
            page["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["delivery_id"].clone()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<Value> = [5, 4, 3, 2, 1]
        .iter()
        .map(|n| json!(id(*n).to_string()))
        .collect();
    assert_eq!(seen, expected);

    let text = tanto_ok(&env, &["history", "--limit", "2", "--by-mail"]);
    let next = text.lines().last().unwrap();
    assert!(next.starts_with("2 rows; next page: --cursor "), "{text}");
    let cursor = next.rsplit(' ').next().unwrap();
    let rest = tanto_json(
        &env,
        &["history", "--limit", "2", "--by-mail", "--cursor", cursor],
    );
    let mails: BTreeSet<(String, String)> = rest["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["event_id"].to_string(),
                m["management_number"].to_string(),
            )
        })
        .collect();
    assert_eq!(mails.len(), 2, "{rest}");
    assert!(
        !mails.contains(&("\"e-9\"".into(), "\"5-1-2\"".into())),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_the_whole_record_with_its_bodies_and_failure() {
    let env = TestEnv::new().await;
    known_history(&env).await;

    let dead = tanto_ok(&env, &["history", "show", &id(3).to_string()]);
    for line in [
        "result:           failed (dead)",
        "mail:             5-1-1 注文確認",
        "recipient:        admin@cust.example",
        "classes:          販売先・管理者",
        "last error:       smtp_5xx: 550 5.1.1 mailbox unavailable",
        "smtp reply:       550 5.1.1 mailbox unavailable",
        "first failure:    2026-12-03T01:00:03+00:00",
        "attempts:",
        "  #  REPLAY  STARTED (UTC)        OUTCOME  ERROR                                    SMTP REPLY",
        "  1  0       2026-12-03 01:00:02  dead     smtp_5xx: 550 5.1.1 mailbox unavailable  550 5.1.1 mailbox unavailable",
        "text body:",
        "ご注文の確認です。",
    ] {
        assert!(
            dead.lines().any(|l| l == line),
            "no line {line:?} in\n{dead}"
        );
    }
    assert!(!dead.contains("html body"), "{dead}");

    let sent = tanto_ok(&env, &["history", "show", &id(1).to_string(), "--html"]);
    assert!(sent.ends_with("html body:\n<p>ご注文</p>\n"), "{sent}");
    let json = tanto_json(&env, &["history", "show", &id(1).to_string()]);
    assert_eq!(json["body_text"], "ご注文を受け付けました。");
    assert_eq!(json["sent_at"], "2026-12-03T01:00:05Z");
    assert_eq!(json.get("body_html"), None, "the HTML only with --html");
    assert_eq!(
        json["attempt_log"],
        json!([]),
        "no attempts recorded for it"
    );

    let missing = env.tanto(&["history", "show", &id(9).to_string()]);
    assert_eq!(missing.status.code(), Some(1));
    let malformed = env.tanto(&["history", "show", "42"]);
    assert_eq!(malformed.status.code(), Some(2));
    let err = String::from_utf8_lossy(&malformed.stderr);
    assert_eq!(
        err,
        "tanto: '42' is not a delivery id; `tanto history` shows them (a UUID)\n"
    );
}
