//! `tanto apply -f FILE` against a real Postgres: good files land exactly as
//! written, and a bad file of any kind is refused as a whole, with its place
//! named, and changes nothing.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use tanto_e2e::{TestEnv, standard_routing};

const TABLES: [&str; 9] = [
    "tenants",
    "accounts",
    "account_groups",
    "group_members",
    "products",
    "product_groups",
    "customers",
    "customer_groups",
    "customer_invitees",
];

/// Every routing row of the database, as text, in a stable order.
async fn snapshot(env: &TestEnv) -> Vec<String> {
    let db = env.db().await;
    let mut rows = Vec::new();
    for table in TABLES {
        let query = format!(
            "SELECT '{table} ' || (to_jsonb(t) - 'updated_at')::text FROM {table} t ORDER BY 1"
        );
        rows.extend(
            db.query(&query, &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0)),
        );
    }
    rows
}

async fn strings(env: &TestEnv, query: &str) -> Vec<String> {
    let rows = env.db().await.query(query, &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

fn apply_file(env: &TestEnv, yaml: &str, extra: &[&str]) -> Output {
    let path = std::env::temp_dir().join(format!("{}-{}.yaml", env.id, uuid::Uuid::new_v4()));
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["apply", "-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.tanto(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_good_file_lands_as_written() {
    let env = TestEnv::new().await;

    let output = apply_file(&env, &standard_routing(&env), &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("5 accounts, 2 groups, 2 products, 1 customers"),
        "{stdout}"
    );
    assert_eq!(
        strings(&env, "SELECT account_id FROM accounts WHERE company_wide").await,
        ["acc-ops"]
    );
    assert_eq!(
        strings(&env, "SELECT account_id FROM accounts WHERE NOT active").await,
        ["acc-sato"]
    );
    assert_eq!(
        strings(
            &env,
            "SELECT account_id FROM group_members WHERE group_id = 'east' ORDER BY 1"
        )
        .await,
        ["acc-ml", "acc-tanaka"]
    );
    assert_eq!(
        strings(&env, "SELECT email FROM customer_invitees").await,
        [format!("buyer@c1.{}", env.domain())]
    );
}

#[tokio::test]
async fn applying_again_makes_each_listed_entity_exactly_what_the_file_says() {
    let env = TestEnv::new().await;
    let routing = standard_routing(&env);
    assert!(apply_file(&env, &routing, &[]).status.success());

    // tanaka leaves `east`, the customer's invitees are replaced, and the
    // company-wide list moves to suzuki.
    let d = env.domain();
    let changed = routing
        .replace("members: [acc-tanaka, acc-ml]", "members: [acc-ml]")
        .replace(
            &format!("buyer@c1.{d}, name: 佐藤 花子"),
            &format!("new@c1.{d}, name: 新 一"),
        )
        .replace("company_wide: [acc-ops]", "company_wide: [acc-suzuki]");
    let output = apply_file(&env, &changed, &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        strings(
            &env,
            "SELECT account_id FROM group_members WHERE group_id = 'east'"
        )
        .await,
        ["acc-ml"]
    );
    assert_eq!(
        strings(&env, "SELECT email FROM customer_invitees").await,
        [format!("new@c1.{d}")]
    );
    assert_eq!(
        strings(&env, "SELECT account_id FROM accounts WHERE company_wide").await,
        ["acc-suzuki"]
    );
}

#[tokio::test]
async fn prune_removes_what_the_file_does_not_name_and_only_with_the_flag() {
    let env = TestEnv::new().await;
    let routing = standard_routing(&env);
    assert!(apply_file(&env, &routing, &[]).status.success());
    let smaller = routing
        .replace(
            "  - { id: P-200, name: セキュリティ診断, groups: [] }\n",
            "",
        )
        .replace(
            &format!(
                "  - {{ id: acc-suzuki, email: suzuki@{}, name: 鈴木 次郎 }}\n",
                env.domain()
            ),
            "",
        )
        .replace(
            "members: [acc-tanaka, acc-suzuki, acc-sato]",
            "members: [acc-tanaka, acc-sato]",
        );

    assert!(apply_file(&env, &smaller, &[]).status.success());
    assert_eq!(
        strings(&env, "SELECT product_id FROM products ORDER BY 1").await,
        ["P-100", "P-200"]
    );

    let output = apply_file(&env, &smaller, &["--prune"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 pruned"));
    assert_eq!(
        strings(&env, "SELECT product_id FROM products").await,
        ["P-100"]
    );
    assert!(
        !strings(&env, "SELECT account_id FROM accounts")
            .await
            .contains(&"acc-suzuki".into())
    );
}

#[tokio::test]
async fn each_kind_of_bad_file_is_refused_with_its_place_and_changes_nothing() {
    let env = TestEnv::new().await;
    let routing = standard_routing(&env);
    assert!(apply_file(&env, &routing, &[]).status.success());
    let before = snapshot(&env).await;
    // Each bad file would also change something if it were applied.
    let base = routing.replace("name: 運用チーム", "name: 変更された名前");
    let d = env.domain();
    let cases = [
        (
            "unknown id",
            base.replace("groups: [east]", "groups: [west]"),
            "customers[0].groups[0]: unknown group 'west'",
        ),
        (
            "malformed address",
            base.replace(&format!("suzuki@{d}"), "suzuki.at.example"),
            "accounts[2].email: 'suzuki.at.example' is not a mail address",
        ),
        (
            "duplicate id",
            base.replace("id: P-200", "id: P-100"),
            "products[1].id: duplicate id 'P-100' (first at products[0])",
        ),
        (
            "missing tenant",
            base.replace(&format!("tenant: {}\n", env.id), ""),
            "tenant: missing",
        ),
        ("not YAML at all", "tenant: [unclosed".to_string(), "line 1"),
    ];
    for (kind, yaml, expected) in cases {
        let output = apply_file(&env, &yaml, &[]);

        assert!(!output.status.success(), "{kind}: accepted");
        let message = stderr(&output);
        assert!(
            message.contains("is invalid; nothing was changed"),
            "{kind}: {message}"
        );
        assert!(
            message.contains(expected),
            "{kind}: expected {expected:?} in {message}"
        );
        assert_eq!(snapshot(&env).await, before, "{kind}: the database changed");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_one_sentence_without_the_password() {
    let env = TestEnv::new().await;
    let path = std::env::temp_dir().join(format!("{}.yaml", env.id));
    std::fs::write(&path, standard_routing(&env)).unwrap();

    let output = std::process::Command::new(tanto_e2e::bin_dir().join("tanto"))
        .args(["apply", "-f", path.to_str().unwrap()])
        .env(
            "TANTO_DATABASE_URL",
            "postgres://tanto:s3cret@127.0.0.1:1/tanto",
        )
        .env("TANTO_DATABASE_TIMEOUT_SECS", "2")
        .current_dir(tanto_e2e::repo_root())
        .output()
        .unwrap();

    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.starts_with(
            "tanto: the database at postgres://tanto:***@127.0.0.1:1/tanto is unreachable"
        ),
        "{message}"
    );
    assert!(!message.contains("s3cret"));
    assert_eq!(message.lines().count(), 1, "{message}");
}
