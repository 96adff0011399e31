//! What SREs watch holds up: promtool accepts the alert rules and the scrape
//! config in deploy/prometheus/, the alerts fire on synthetic trouble and
//! stay silent on healthy series (alerts_test.yml), the Grafana dashboard's
//! queries are PromQL, and the alerts and the dashboard name only metrics
//! that the real binaries export, scraped from their /metrics. No series
//! carries an address or an id.
//!
//! promtool comes with Debian's `prometheus` package (deploy/local/install.sh).

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tanto_e2e::{TestEnv, event, repo_root, standard_routing, wait_for_mails};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/tanto.json";

/// The binaries whose scrapes the alerts and the dashboard are checked
/// against: one notifier (the three share their code) and the mailer.
const SCRAPED: [&str; 2] = ["order-notifier", "mailer"];

/// Label names that would mean a series per recipient, event or message.
const FORBIDDEN_LABELS: [&str; 7] = [
    "address",
    "recipient",
    "email",
    "event_id",
    "delivery_id",
    "transaction",
    "offset",
];

#[test]
fn promtool_accepts_the_alert_rules_and_the_scrape_config() {
    let rules = promtool(&["check", "rules", "--lint-fatal", ALERTS]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = promtool(&["check", "config", "--lint-fatal", PROMETHEUS_CONFIG]);
    assert!(
        config.contains("1 rule files found"),
        "prometheus.yml must load alerts.yml:\n{config}"
    );
}

#[test]
fn the_alerts_fire_on_trouble_and_stay_silent_when_healthy() {
    promtool(&["test", "rules", ALERTS_TEST]);
}

#[test]
fn the_dashboard_queries_are_promql_on_the_datasource_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus datasource variable named datasource"
    );
    let panels = panels(&dashboard);
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");

    let mut rules = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for source in std::iter::once(*panel).chain(targets) {
            assert_eq!(
                source["datasource"]["uid"], "${datasource}",
                "panel {title:?} must use the datasource variable"
            );
        }
        for target in targets {
            let expr = without_grafana_variables(target["expr"].as_str().unwrap());
            let ref_id = target["refId"].as_str().unwrap();
            let record = format!("dashboard:panel_{}:{ref_id}", panel["id"]);
            rules.push(serde_json::json!({ "record": record, "expr": expr }));
        }
    }
    // promtool parses expressions only in rule files: one recording rule per
    // query, with Grafana's variables replaced by values of their kind.
    let file = std::env::temp_dir().join(format!("tanto-dashboard-{}.yml", uuid::Uuid::new_v4()));
    let groups = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, serde_yaml_ng::to_string(&groups).unwrap()).unwrap();
    let result = std::panic::catch_unwind(|| promtool(&["check", "rules", file.to_str().unwrap()]));
    std::fs::remove_file(&file).unwrap();
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_and_dashboard_name_only_metrics_the_binaries_export() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    for binary in SCRAPED {
        env.start(binary);
    }
    let referenced = referenced_selectors();

    // Lag gauges appear with the first statistics after the partitions are
    // assigned, a few seconds after start: wait for them, not for traffic.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrapes = loop {
        let scrapes = scrape_all(&env).await;
        let missing = missing_names(&referenced, &scrapes);
        if missing.is_empty() || Instant::now() > deadline {
            break scrapes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let missing = missing_names(&referenced, &scrapes);
    assert!(
        missing.is_empty(),
        "metrics named in {ALERTS} or {DASHBOARD} that no scraped binary exports \
         (after 30 s, without traffic):\n{}",
        describe_missing(&missing, &referenced, &scrapes)
    );
    let unknown_values = unmatched_label_values(&referenced, &scrapes);
    assert!(
        unknown_values.is_empty(),
        "label values selected with = that no scraped series has:\n{}",
        unknown_values.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_series_carries_an_address_or_an_id() {
    let mut env = TestEnv::new().await;
    env.apply(&standard_routing(&env));
    for binary in SCRAPED {
        env.start(binary);
    }
    let first = event(&env.id, "order.applied", &["P-100"]);
    env.publish(&env.topics.orders, &first).await;
    wait_for_mails(&env.domain(), 6).await;
    let after_first = scrape_all(&env).await;

    // Another transaction, to the same people: new ids, no new series.
    let mut second = event(&env.id, "order.applied", &["P-100"]);
    second["transaction"]["id"] = "O-2".into();
    second["transaction"]["number"] = "ORD-000124".into();
    env.publish(&env.topics.orders, &second).await;
    wait_for_mails(&env.domain(), 12).await;
    let after_second = scrape_all(&env).await;

    let mut ids = vec!["P-100".to_string()];
    for event in [&first, &second] {
        for id in [
            &event["event_id"],
            &event["customer_id"],
            &event["transaction"]["id"],
            &event["transaction"]["number"],
        ] {
            ids.push(id.as_str().unwrap().to_string());
        }
    }
    for (binary, samples) in &after_second {
        for sample in samples {
            for (label, value) in &sample.labels {
                assert!(
                    !FORBIDDEN_LABELS.iter().any(|word| label.contains(word)),
                    "{binary}: label {label:?} of {} names a recipient or an id",
                    sample.name
                );
                assert!(
                    !value.contains('@') && !looks_like_uuid(value) && !ids.contains(value),
                    "{binary}: {}{{{label}={value:?}}} carries an address or an id",
                    sample.name
                );
            }
        }
    }
    for binary in SCRAPED {
        let before = series(&after_first[binary]);
        let after = series(&after_second[binary]);
        let added: Vec<&String> = after.difference(&before).collect();
        assert!(
            added.is_empty(),
            "{binary}: a second transaction added series, so a label grows with traffic: \
             {added:#?}"
        );
    }
}

/// Runs promtool from the repository root; fails the test with its output
/// unless it succeeds. Returns what it printed.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run promtool ({err}): deploy/local/install.sh installs it \
                 (Debian package prometheus)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn dashboard() -> Json {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// `expr` with the dashboard's variables replaced by values of their kind,
/// so that promtool can parse it. A variable not listed here fails the
/// test: add it with a value of its kind.
fn without_grafana_variables(expr: &str) -> String {
    let replaced = [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$job", ".*"),
        ("$instance", ".*"),
    ]
    .iter()
    .fold(expr.to_string(), |expr, (variable, value)| {
        expr.replace(variable, value)
    });
    assert!(
        !replaced.contains('$'),
        "unknown Grafana variable in {expr:?}"
    );
    replaced
}

/// Where an expression came from, for failure messages.
#[derive(Debug, Clone)]
struct Reference {
    origin: String,
    selector: Selector,
}

/// Every selector of a metric in the alert rules, the dashboard's panel
/// queries and its variables' queries.
fn referenced_selectors() -> Vec<Reference> {
    let mut exprs = Vec::new();
    let rules: Yaml =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo_root().join(ALERTS)).unwrap())
            .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            let expr = rule["expr"].as_str().unwrap();
            exprs.push((format!("{ALERTS} {name}"), expr.to_string()));
        }
    }
    let dashboard = dashboard();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let origin = format!("{DASHBOARD} panel {:?}", panel["title"].as_str().unwrap());
            exprs.push((origin, target["expr"].as_str().unwrap().to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let origin = format!(
                "{DASHBOARD} variable {}",
                variable["name"].as_str().unwrap()
            );
            exprs.push((
                origin,
                variable["query"]["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    let references: Vec<Reference> = exprs
        .iter()
        .flat_map(|(origin, expr)| {
            selectors(expr).into_iter().map(|selector| Reference {
                origin: origin.clone(),
                selector,
            })
        })
        .collect();
    assert!(
        references.len() > 40,
        "the scan found only {} metric selectors: is the PromQL scanner broken?",
        references.len()
    );
    references
}

/// A metric named in an expression, with its label matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    name: String,
    /// (label, operator, value), e.g. ("outcome", "=", "dead_lettered").
    matchers: Vec<(String, String, String)>,
}

/// The metric selectors of a PromQL expression: identifiers outside string
/// literals that look like tanto's or the process's metrics (`tanto_*`,
/// `process_*`) or Prometheus's `up`. Function names, label names and
/// keywords never start that way.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = string_literal(&chars, i).1;
        } else if c.is_ascii_digit() {
            // Numbers and durations (1e3, 0.99, 15m) are not identifiers.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if name.starts_with("tanto_") || name.starts_with("process_") || name == "up" {
                let (matchers, end) = matchers(&chars, i, expr);
                found.push(Selector { name, matchers });
                i = end;
            }
        } else {
            i += 1;
        }
    }
    found
}

/// The label matchers of the selector whose name ends at `i`, if braces
/// follow it, and the position after them.
fn matchers(chars: &[char], mut i: usize, expr: &str) -> (Vec<(String, String, String)>, usize) {
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut matchers = Vec::new();
    let mut j = i;
    skip_space(&mut j);
    if chars.get(j) != Some(&'{') {
        return (matchers, i);
    }
    i = j + 1;
    loop {
        skip_space(&mut i);
        match chars.get(i) {
            Some('}') => return (matchers, i + 1),
            Some(',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
            None => panic!("unclosed selector in {expr:?}"),
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        skip_space(&mut i);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| chars[i..].starts_with(&op.chars().collect::<Vec<_>>()))
            .unwrap_or_else(|| panic!("no matcher operator after {label:?} in {expr:?}"));
        i += op.len();
        skip_space(&mut i);
        let (value, end) = string_literal(chars, i);
        i = end;
        matchers.push((label, op.to_string(), value));
    }
}

/// The string literal opening at `start` (PromQL's three quotes, with
/// backslash escapes except in backticks) and the position after it.
fn string_literal(chars: &[char], start: usize) -> (String, usize) {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' && i + 1 < chars.len() {
            i += 1;
        }
        value.push(chars[i]);
        i += 1;
    }
    (value, i + 1)
}

/// One sample line of the text exposition format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
}

/// The samples of each binary's /metrics.
async fn scrape_all(env: &TestEnv) -> BTreeMap<&'static str, Vec<Sample>> {
    let mut scrapes = BTreeMap::new();
    for binary in SCRAPED {
        let (status, text) = env.http_get(binary, "/metrics").await;
        assert_eq!(status, 200, "{binary} /metrics answered {status}:\n{text}");
        scrapes.insert(binary, parse_exposition(&text));
    }
    scrapes
}

/// The samples of a text exposition, without their values.
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            let name_end = chars
                .iter()
                .position(|c| *c == '{' || c.is_whitespace())
                .unwrap_or(chars.len());
            let name: String = chars[..name_end].iter().collect();
            let (matchers, _) = matchers(&chars, name_end, line);
            let labels = matchers
                .into_iter()
                .map(|(label, _, value)| (label, value))
                .collect();
            Sample { name, labels }
        })
        .collect()
}

/// Each series as `name{label="value",...}`, labels sorted.
fn series(samples: &[Sample]) -> BTreeSet<String> {
    samples
        .iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(label, value)| format!("{label}={value:?}"))
                .collect();
            labels.sort();
            format!("{}{{{}}}", sample.name, labels.join(","))
        })
        .collect()
}

/// Referenced names that no scrape has as a series name, with where each
/// is referenced. `up` is Prometheus's own: no binary exports it.
fn missing_names(
    referenced: &[Reference],
    scrapes: &BTreeMap<&str, Vec<Sample>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let present: BTreeSet<&str> = scrapes
        .values()
        .flatten()
        .map(|sample| sample.name.as_str())
        .collect();
    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for reference in referenced {
        let name = &reference.selector.name;
        if name != "up" && !present.contains(name.as_str()) {
            missing
                .entry(name.clone())
                .or_default()
                .insert(reference.origin.clone());
        }
    }
    missing
}

/// One line per missing name, with where it is used and a hint when the
/// scrape has it as a histogram family under a suffix; then, per binary,
/// every referenced name that binary does not export.
fn describe_missing(
    missing: &BTreeMap<String, BTreeSet<String>>,
    referenced: &[Reference],
    scrapes: &BTreeMap<&str, Vec<Sample>>,
) -> String {
    let mut lines = Vec::new();
    for (name, origins) in missing {
        let suffixed: BTreeSet<&str> = scrapes
            .values()
            .flatten()
            .map(|sample| sample.name.as_str())
            .filter(|series| {
                series
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
            })
            .collect();
        let hint = if suffixed.is_empty() {
            String::new()
        } else {
            format!(" (a histogram: select {suffixed:?})")
        };
        let origins: Vec<&String> = origins.iter().collect();
        lines.push(format!("  {name}{hint}, used by {origins:?}"));
    }
    let wanted: BTreeSet<&str> = referenced
        .iter()
        .map(|r| r.selector.name.as_str())
        .filter(|name| *name != "up")
        .collect();
    for (binary, samples) in scrapes {
        let exported: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        let absent: Vec<&str> = wanted.difference(&exported).copied().collect();
        lines.push(format!(
            "  not in {binary}'s /metrics: {}",
            absent.join(", ")
        ));
    }
    lines.join("\n")
}

/// `label="value"` matchers on a metric whose scraped series never have
/// that value. `job` and `instance` are Prometheus's target labels.
fn unmatched_label_values(
    referenced: &[Reference],
    scrapes: &BTreeMap<&str, Vec<Sample>>,
) -> Vec<String> {
    let mut unmatched = Vec::new();
    for reference in referenced {
        let selector = &reference.selector;
        for (label, op, value) in &selector.matchers {
            if op != "=" || label == "job" || label == "instance" {
                continue;
            }
            let found = scrapes.values().flatten().any(|sample| {
                sample.name == selector.name
                    && sample.labels.iter().any(|(l, v)| l == label && v == value)
            });
            if !found {
                unmatched.push(format!(
                    "  {}{{{label}=\"{value}\"}} in {}",
                    selector.name, reference.origin
                ));
            }
        }
    }
    unmatched
}

fn looks_like_uuid(value: &str) -> bool {
    value.len() == 36
        && value.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[test]
fn the_scanner_finds_selectors_and_skips_strings_labels_and_durations() {
    let expr = r#"sum by (job, topic) (increase(tanto_events_consumed_total{outcome="dead_lettered", reason!~"tanto_x|up"}[15m]))
        / on (job) histogram_quantile(0.99, rate(tanto_event_to_smtp_seconds_bucket[5m])) > 1e3
        and up{job=~"mailer"} == 0 or label_values(process_cpu_seconds_total, job)"#;
    let found = selectors(expr);
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tanto_events_consumed_total",
            "tanto_event_to_smtp_seconds_bucket",
            "up",
            "process_cpu_seconds_total"
        ]
    );
    assert_eq!(
        found[0].matchers,
        [
            ("outcome".into(), "=".into(), "dead_lettered".into()),
            ("reason".into(), "!~".into(), "tanto_x|up".into())
        ]
    );
    let samples = parse_exposition(
        "# TYPE a counter\na_total{mail=\"5-1-1\",class=\"x,\\\"y\\\"\"} 3\nb_count 1\n",
    );
    assert_eq!(samples[0].name, "a_total");
    assert_eq!(
        samples[0].labels,
        [
            ("mail".to_string(), "5-1-1".to_string()),
            ("class".to_string(), "x,\"y\"".to_string())
        ]
    );
    assert_eq!(
        (samples[1].name.as_str(), samples[1].labels.len()),
        ("b_count", 0)
    );
}
