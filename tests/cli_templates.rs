//! `tanto templates check` and `tanto preview` against the shipped catalog
//! and templates: the check passes on what is shipped and names the
//! template and line of a broken one; a preview shows the subject, the
//! recipients by class and the body that the real pipeline would send.

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tanto_e2e::{TestEnv, bin_dir, event, repo_root, standard_routing, subject};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `tanto templates check` with the templates in `dir`.
fn check(dir: &Path, json: bool) -> Output {
    let mut command = Command::new(bin_dir().join("tanto"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANTO_TEMPLATES", dir)
        .current_dir(repo_root())
        .args(["templates", "check"]);
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

fn shipped_templates() -> PathBuf {
    repo_root().join("deploy/mail/templates")
}

/// A copy of the shipped templates in which `name` has `line` (1-based)
/// replaced by `text`.
fn broken_copy(name: &str, line: usize, text: &str) -> PathBuf {
    let copy = std::env::temp_dir().join(format!("tanto-templates-{}", uuid::Uuid::new_v4()));
    copy_dir(&shipped_templates(), &copy);
    let path = copy.join(name);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines[line - 1] = text.to_string();
    std::fs::write(&path, lines.join("\n")).unwrap();
    copy
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn templates_check_passes_on_the_shipped_templates() {
    let output = check(&shipped_templates(), false);
    let json = check(&shipped_templates(), true);

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("templates ok: "),
        "{}",
        stdout(&output)
    );
    let report: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(report["event_types"], 10);
    assert_eq!(report["mails"], 19);
    assert!(report["renders"].as_u64().unwrap() >= 2 * 19, "{report}");
}

#[test]
fn templates_check_names_the_template_and_line_of_an_unknown_variable() {
    let dir = broken_copy(
        "order_confirmed_staff.txt",
        3,
        "{{ transaction.no_such_field }}",
    );

    let output = check(&dir, false);

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("tanto: order_confirmed_staff.txt line 3: Variable `transaction.no_such_field` not found"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn templates_check_names_the_template_and_line_of_a_syntax_error() {
    let dir = broken_copy(
        "partials/summary.html",
        2,
        "<p>{% if transaction.number %}{{ transaction.number }</p>",
    );

    let output = check(&dir, false);

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("tanto: partials/summary.html line 2: syntax error"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

/// A test database with the standard routing, and an order event file of
/// its tenant.
async fn preview_env() -> (TestEnv, PathBuf) {
    let env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    let path = std::env::temp_dir().join(format!("{}-event.json", env.id));
    let order = event(&env.id, "order.applied", &["P-100"]);
    std::fs::write(&path, order.to_string()).unwrap();
    (env, path)
}

fn addresses(preview: &Value, class: &str) -> Vec<String> {
    let classes = preview["recipients"].as_array().unwrap();
    let found = classes.iter().find(|c| c["class"] == class).unwrap();
    found["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staff_preview_shows_subject_recipients_by_class_and_body() {
    let (env, event_file) = preview_env().await;
    let file = event_file.to_str().unwrap();
    let html = std::env::temp_dir().join(format!("{}-preview.html", env.id));
    let d = env.domain();

    let text = env.tanto(&[
        "preview",
        "5-1-2",
        "--event",
        file,
        "--html",
        html.to_str().unwrap(),
    ]);
    let json = env.tanto(&["preview", "5-1-2", "--event", file, "--json"]);

    assert!(text.status.success(), "{}", stderr(&text));
    let preview: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(preview["mail"]["number"], "5-1-2");
    assert_eq!(
        preview["rendered"]["subject"],
        subject("販売先向け注文のご連絡")
    );
    assert_eq!(addresses(&preview, "company_wide"), [format!("ops@{d}")]);
    assert_eq!(
        addresses(&preview, "product_staff"),
        [format!("suzuki@{d}"), format!("tanaka@{d}")],
        "the inactive sato is not there"
    );
    assert_eq!(
        addresses(&preview, "customer_staff"),
        [format!("east-sales-ml@{d}"), format!("tanaka@{d}")]
    );
    assert_eq!(preview["rendered"]["address"], format!("east-sales-ml@{d}"));
    let body = preview["rendered"]["text"].as_str().unwrap();
    for fact in [
        "東日本営業ML 様",
        "ORD-000123",
        "サンプル株式会社",
        "クラウドバックアップ Pro",
        "24000 JPY",
        "販売先担当者 として",
    ] {
        assert!(body.contains(fact), "body lacks {fact}:\n{body}");
    }
    let out = stdout(&text);
    assert!(
        out.contains(&format!("subject: {}", subject("販売先向け注文のご連絡"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("全社 (company_wide): 運用チーム <ops@{d}>")),
        "{out}"
    );
    assert!(out.contains("ORD-000123"), "{out}");
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("ORD-000123")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_preview_for_another_tenants_event_uses_the_given_tenant() {
    let (env, _) = preview_env().await;
    let path = std::env::temp_dir().join(format!("{}-foreign.json", env.id));
    std::fs::write(
        &path,
        event("someone-else", "order.applied", &["P-100"]).to_string(),
    )
    .unwrap();
    let d = env.domain();
    let file = path.to_str().unwrap();
    let admin = format!("admin@c1.{d}");

    let output = env.tanto(&[
        "preview",
        "5-1-1",
        "--event",
        file,
        "--tenant",
        &env.id,
        "--recipient",
        &admin,
        "--json",
    ]);

    assert!(output.status.success(), "{}", stderr(&output));
    let preview: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(preview["tenant"], env.id.as_str());
    assert_eq!(addresses(&preview, "customer_admin"), [admin.as_str()]);
    assert_eq!(
        addresses(&preview, "customer_invitee"),
        [format!("buyer@c1.{d}")]
    );
    assert_eq!(preview["rendered"]["address"], admin.as_str());
    assert_eq!(
        preview["rendered"]["subject"],
        subject("ご注文ありがとうございます")
    );
    let body = preview["rendered"]["text"].as_str().unwrap();
    assert!(body.contains("山田 太郎 様"), "{body}");
    assert!(
        !body.contains("商品担当者"),
        "customer mails carry no staff wording"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_that_cannot_be_made_says_why_in_one_sentence() {
    let (env, event_file) = preview_env().await;
    let file = event_file.to_str().unwrap();
    let broken = broken_copy("order_applied_staff.txt", 3, "{{ transaction.typo }}");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["preview", "9-9-9", "--event", file],
            "tanto: mail 9-9-9 is not in the catalog",
        ),
        (
            vec!["preview", "5-1-3", "--event", file],
            "tanto: mail 5-1-3 is sent for order.confirmed events, but the event is order.applied",
        ),
        (
            vec!["preview", "5-1-2", "--event", file, "--tenant", "nobody"],
            "tanto: tenant 'nobody' has no routing data; apply its routing file first",
        ),
        (
            vec!["preview", "5-1-2", "--event", "/no/such/event.json"],
            "tanto: cannot read the event file /no/such/event.json",
        ),
    ];
    for (args, expected) in cases {
        let output = env.tanto(&args);

        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {message}");
        assert!(message.starts_with(expected), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
    }

    let mut command = Command::new(bin_dir().join("tanto"));
    command
        .env_clear()
        .envs(env.vars())
        .env("TANTO_TEMPLATES", &broken)
        .current_dir(repo_root())
        .args(["preview", "5-1-2", "--event", file]);
    let output = command.output().unwrap();
    let message = stderr(&output);
    assert!(
        message.starts_with("tanto: mail 5-1-2 does not render: order_applied_staff.txt line 3: Variable `transaction.typo` not found"),
        "{message}"
    );
}
