//! Checking the mail templates before they are deployed (`tanto templates
//! check`): every template file parses, and every catalog mail renders for
//! a sample of every event type, for every recipient class, with full and
//! with minimal data. An error names the template and, where it can be
//! found, the line.
//!
//! tera reports the line of a syntax error but not of a render error; for
//! those the line is the first in the failing template that contains the
//! name the error quotes (the variable, filter or function), which is where
//! an operator would look first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::catalog::{Catalog, RecipientClass};
use crate::event::{self, Event, EventType};
use crate::render::{RenderError, Renderer};
use crate::routing::resolve::{Candidate, RoutingView, plan};

/// A template that does not parse or render, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TemplateProblem {
    /// The template's name under the templates folder, e.g.
    /// `partials/items.txt`, or `subject of mail 5-1-2` for a subject.
    pub template: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.template, self.message),
            None => write!(f, "{}: {}", self.template, self.message),
        }
    }
}

/// What a successful check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub templates: usize,
    pub mails: usize,
    pub event_types: usize,
    pub renders: usize,
}

/// Parses every template under `dir`, then renders every mail of `catalog`
/// for every sample event; stops at the first problem.
pub fn check(catalog: &Catalog, dir: &Path) -> anyhow::Result<CheckReport> {
    let templates = parse_each(dir)?;
    let renderer = Renderer::load(dir, catalog.clone())?;
    let mut renders = 0;
    for event_type in EventType::ALL {
        for (event, view) in samples(event_type) {
            for delivery in plan(catalog, &event, &view).deliveries {
                renderer
                    .render(&delivery)
                    .map_err(|err| locate(dir, catalog, err))?;
                renders += 1;
            }
        }
    }
    Ok(CheckReport {
        templates,
        mails: catalog.mails().len(),
        event_types: EventType::ALL.len(),
        renders,
    })
}

/// Parses each template file on its own, so that a syntax error names its
/// file and line; returns how many there are.
fn parse_each(dir: &Path) -> anyhow::Result<usize> {
    let files = template_files(dir)?;
    for path in &files {
        let name = path
            .strip_prefix(dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let source = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read the template {}: {err}", path.display()))?;
        if let Err(err) = tera::Template::new(&name, None, &source) {
            return Err(syntax_problem(name, &crate::error_chain(&err)).into());
        }
    }
    Ok(files.len())
}

fn template_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|err| {
            anyhow::anyhow!(
                "cannot read the templates folder {}: {err}",
                folder.display()
            )
        })?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A syntax error as pest words it: ` --> LINE:COLUMN`, the source line,
/// and `= expected ...`.
fn syntax_problem(template: String, error: &str) -> TemplateProblem {
    let line = error
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split(':').next())
        .and_then(|line| line.trim().parse().ok());
    let message = error
        .lines()
        .find_map(|l| l.trim().strip_prefix("= "))
        .map(|expected| format!("syntax error, {expected}"))
        .unwrap_or_else(|| error.lines().next().unwrap_or_default().to_string());
    TemplateProblem {
        template,
        line,
        message,
    }
}

/// Finds the template and line of a render error.
pub fn locate(dir: &Path, catalog: &Catalog, err: RenderError) -> TemplateProblem {
    let (rendered, cause) = match err {
        RenderError::Template { template, cause } => (template, cause),
        RenderError::UnknownMail(number) => {
            return TemplateProblem {
                template: "catalog".into(),
                line: None,
                message: format!("mail {number} is not in the catalog"),
            };
        }
    };
    let innermost = quoted_after(&cause, "while rendering '", '\'')
        .or_else(|| quoted_after(&cause, "error happened in '", '\''))
        .unwrap_or_else(|| rendered.clone());
    let message = cause
        .split_once(": ")
        .map_or(cause.as_str(), |(_, inner)| inner);
    let message = message
        .split(" while rendering '")
        .next()
        .unwrap_or(message)
        .to_string();
    let token = message
        .split_once('`')
        .and_then(|(_, rest)| rest.split('`').next())
        .map(str::to_string);
    if let Some(number) = innermost.strip_prefix("subject/") {
        let source = catalog
            .get(number)
            .map(|m| m.subject.clone())
            .unwrap_or_default();
        return TemplateProblem {
            template: format!("subject of mail {number}"),
            line: token.and_then(|t| line_of(&source, &t)),
            message,
        };
    }
    let source = std::fs::read_to_string(dir.join(&innermost)).unwrap_or_default();
    TemplateProblem {
        line: token.and_then(|t| line_of(&source, &t)),
        template: innermost,
        message,
    }
}

/// The text between the last `open` and the next `close` in `text`.
fn quoted_after(text: &str, open: &str, close: char) -> Option<String> {
    let (_, rest) = text.rsplit_once(open)?;
    rest.split(close).next().map(str::to_string)
}

/// The 1-based number of the first line of `source` containing `token`.
fn line_of(source: &str, token: &str) -> Option<usize> {
    source
        .lines()
        .position(|line| line.contains(token))
        .map(|index| index + 1)
}

/// For `event_type`: an event and routing data where every optional value
/// is present and every class reaches someone (one address through two
/// classes), and one where every optional value is missing and the
/// recipients have no names. Together they take every branch the shipped
/// templates have.
pub fn samples(event_type: EventType) -> [(Event, RoutingView); 2] {
    [
        (full_event(event_type), full_view()),
        (minimal_event(event_type), minimal_view()),
    ]
}

fn full_event(event_type: EventType) -> Event {
    sample_event(json!({
        "event_id": format!("sample-{event_type}"),
        "event_type": event_type.as_str(),
        "occurred_at": "2026-12-03T10:15:00+09:00",
        "tenant_id": "sample",
        "customer_id": "C-0001",
        "transaction": {
            "id": "T-1", "number": "NO-000001",
            "items": [
                { "product_id": "P-1", "quantity": 2, "unit_price": "12000" },
                { "product_id": "P-2", "product_name": "名前つき商品", "quantity": 1,
                  "unit_price": "500.5" }
            ],
            "total_amount": "24500.5", "currency": "JPY"
        }
    }))
}

fn minimal_event(event_type: EventType) -> Event {
    sample_event(json!({
        "event_id": format!("sample-minimal-{event_type}"),
        "event_type": event_type.as_str(),
        "occurred_at": "2026-12-03T10:15:00Z",
        "tenant_id": "sample",
        "customer_id": "C-0002",
        "transaction": { "id": "T-2", "number": "NO-000002", "items": [{ "product_id": "P-9" }] }
    }))
}

fn sample_event(value: serde_json::Value) -> Event {
    let family = value["event_type"]
        .as_str()
        .and_then(|t| t.parse::<EventType>().ok())
        .map(EventType::family)
        .expect("a sample names a known event type");
    event::parse(value.to_string().as_bytes(), family).expect("a sample event is valid")
}

fn full_view() -> RoutingView {
    let mut candidates: Vec<Candidate> = RecipientClass::ALL
        .into_iter()
        .map(|class| Candidate {
            class,
            address: format!("{class}@sample.example"),
            name: format!("{} 太郎", class.label()),
        })
        .collect();
    for class in [RecipientClass::ProductStaff, RecipientClass::CustomerStaff] {
        candidates.push(Candidate {
            class,
            address: "both@sample.example".into(),
            name: "両方 花子".into(),
        });
    }
    RoutingView {
        store_name: "サンプル".into(),
        disabled_mails: Vec::new(),
        customer_name: Some("サンプル株式会社".into()),
        product_names: [("P-1".to_string(), "クラウドバックアップ".to_string())].into(),
        candidates,
    }
}

fn minimal_view() -> RoutingView {
    RoutingView {
        store_name: "サンプル".into(),
        disabled_mails: Vec::new(),
        customer_name: None,
        product_names: Default::default(),
        candidates: RecipientClass::ALL
            .into_iter()
            .map(|class| Candidate {
                class,
                address: format!("{class}@sample.example"),
                name: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> (Catalog, PathBuf) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mail");
        let catalog = Catalog::load(&root.join("catalog.yaml")).expect("catalog");
        (catalog, root.join("templates"))
    }

    /// A copy of the shipped templates with `name` replaced by `text`.
    fn broken_copy(name: &str, text: &str) -> PathBuf {
        let (_, dir) = shipped();
        let copy = std::env::temp_dir().join(format!("tanto-templates-{}", uuid::Uuid::new_v4()));
        for path in template_files(&dir).expect("files") {
            let target = copy.join(path.strip_prefix(&dir).expect("inside"));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
            std::fs::copy(&path, &target).expect("copy");
        }
        std::fs::write(copy.join(name), text).expect("write");
        copy
    }

    #[test]
    fn the_shipped_templates_pass() {
        let (catalog, dir) = shipped();
        let report = check(&catalog, &dir).expect("check");
        assert_eq!(report.mails, catalog.mails().len());
        assert!(report.renders > 2 * catalog.mails().len(), "{report:?}");
    }

    #[test]
    fn every_sample_reaches_every_class_of_every_mail() {
        let (catalog, _) = shipped();
        for event_type in EventType::ALL {
            for (event, view) in samples(event_type) {
                let routed = plan(&catalog, &event, &view);
                assert!(routed.empty_classes.is_empty(), "{event_type}: {routed:?}");
            }
        }
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let dir = broken_copy("partials/items.txt", "line one\n{{ transaction.number }\n");
        let (catalog, _) = shipped();
        let err = check(&catalog, &dir).unwrap_err();
        let problem = err
            .downcast_ref::<TemplateProblem>()
            .expect("a template problem");
        assert_eq!(problem.template, "partials/items.txt");
        assert_eq!(problem.line, Some(2));
        assert!(problem.message.starts_with("syntax error"), "{problem}");
    }

    #[test]
    fn an_unknown_variable_in_an_included_partial_names_the_partial_and_line() {
        let dir = broken_copy(
            "partials/reason.txt",
            "{%- if recipient.classes -%}\nこのメールは {{ recipient.nickname }} 宛です。\n{%- endif -%}",
        );
        let (catalog, _) = shipped();
        let err = check(&catalog, &dir).unwrap_err();
        let problem = err
            .downcast_ref::<TemplateProblem>()
            .expect("a template problem");
        assert_eq!(problem.template, "partials/reason.txt", "{problem}");
        assert_eq!(problem.line, Some(2), "{problem}");
        assert!(problem.message.contains("recipient.nickname"), "{problem}");
    }

    #[test]
    fn a_broken_subject_names_its_mail() {
        let (catalog, dir) = shipped();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mail/catalog.yaml"),
        )
        .expect("catalog");
        let broken = text.replacen("{{ store_name }}", "{{ store }}", 1);
        let catalog_broken = Catalog::parse(&broken).expect("still a catalog");
        let err = check(&catalog_broken, &dir).unwrap_err();
        let first = &catalog.mails()[0].number;
        assert_eq!(
            err.to_string(),
            format!("subject of mail {first} line 1: Variable `store` not found in context")
        );
    }
}
