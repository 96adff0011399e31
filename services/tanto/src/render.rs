//! Renders a delivery's subject, text part and HTML part with tera.
//!
//! Rendering is strict: a template that uses a variable the context does not
//! have fails (tera's default), and that failure is permanent for the
//! delivery. HTML parts are autoescaped because their file names end in
//! `.html`; text parts and subjects are not, since they are not markup.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use tera::{Context, Tera};

use crate::catalog::{Catalog, MailSpec};
use crate::delivery::DeliveryMessage;

/// A rendered mail, ready to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a mail could not be rendered; it names the template.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("mail {0} is not in the catalog")]
    UnknownMail(String),
    #[error("template {template} failed to render: {cause}")]
    Template { template: String, cause: String },
}

#[derive(Debug)]
pub struct Renderer {
    tera: Tera,
    catalog: Catalog,
}

impl Renderer {
    /// Loads every template under `dir` and checks that each catalog entry
    /// has its subject, text and HTML templates.
    pub fn load(dir: &Path, catalog: Catalog) -> anyhow::Result<Self> {
        let glob = format!("{}/**/*", dir.display());
        let mut tera = Tera::new(&glob)
            .map_err(|err| anyhow::anyhow!(crate::error_chain(&err)))
            .with_context(|| format!("the mail templates in {} do not load", dir.display()))?;
        for mail in catalog.mails() {
            tera.add_raw_template(&subject_template(mail), &mail.subject)
                .map_err(|err| anyhow::anyhow!(crate::error_chain(&err)))
                .with_context(|| format!("the subject of mail {} does not parse", mail.number))?;
            for name in [text_template(mail), html_template(mail)] {
                if !tera.get_template_names().any(|known| known == name) {
                    anyhow::bail!(
                        "mail {} needs the template {name} in {}",
                        mail.number,
                        dir.display()
                    );
                }
            }
        }
        Ok(Self { tera, catalog })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn render(&self, delivery: &DeliveryMessage) -> Result<RenderedMail, RenderError> {
        let mail = self
            .catalog
            .get(&delivery.mail.number)
            .ok_or_else(|| RenderError::UnknownMail(delivery.mail.number.clone()))?;
        let context = context(delivery);
        Ok(RenderedMail {
            subject: self
                .render_one(&subject_template(mail), &context)?
                .trim()
                .to_string(),
            text: self.render_one(&text_template(mail), &context)?,
            html: self.render_one(&html_template(mail), &context)?,
        })
    }

    fn render_one(&self, template: &str, context: &Context) -> Result<String, RenderError> {
        self.tera
            .render(template, context)
            .map_err(|err| RenderError::Template {
                template: template.to_string(),
                cause: crate::error_chain(&err),
            })
    }
}

fn subject_template(mail: &MailSpec) -> String {
    format!("subject/{}", mail.number)
}

fn text_template(mail: &MailSpec) -> String {
    format!("{}.txt", mail.template)
}

fn html_template(mail: &MailSpec) -> String {
    format!("{}.html", mail.template)
}

/// The variables a template sees (documented in docs/catalog.md): the
/// delivery message itself, plus the Japanese labels of the recipient's
/// classes.
fn context(delivery: &DeliveryMessage) -> Context {
    let mut value = serde_json::to_value(delivery).expect("a delivery message always serializes");
    let labels: Vec<&str> = delivery
        .recipient
        .classes
        .iter()
        .map(|class| class.label())
        .collect();
    value["recipient"]["class_labels"] = json!(labels);
    Context::from_value(value).expect("a JSON object is a valid tera context")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DeliveryMessage;

    fn shipped() -> Renderer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mail");
        let catalog = Catalog::load(&root.join("catalog.yaml")).expect("catalog");
        Renderer::load(&root.join("templates"), catalog).expect("templates")
    }

    fn sample(number: &str) -> DeliveryMessage {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples/delivery.json");
        let mut delivery =
            DeliveryMessage::from_json(&std::fs::read(path).expect("example")).expect("delivery");
        delivery.mail.number = number.to_string();
        delivery
    }

    #[test]
    fn every_shipped_mail_renders_its_subject_text_and_html() {
        let renderer = shipped();
        for mail in renderer.catalog().mails() {
            let rendered = renderer.render(&sample(&mail.number)).expect(&mail.number);
            assert!(
                rendered.subject.starts_with("[ACME ストア・マイページ]"),
                "{}",
                rendered.subject
            );
            assert!(
                rendered.text.contains("ORD-000123"),
                "{}: {}",
                mail.number,
                rendered.text
            );
            assert!(rendered.html.contains("ORD-000123"), "{}", mail.number);
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let mut delivery = sample("5-1-2");
        delivery.transaction.items[0].product_name = "<b>Pro</b> & more".into();
        let rendered = shipped().render(&delivery).expect("render");
        assert!(
            rendered
                .html
                .contains("&lt;b&gt;Pro&lt;&#x2F;b&gt; &amp; more"),
            "{}",
            rendered.html
        );
        assert!(rendered.text.contains("<b>Pro</b> & more"));
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_the_template() {
        let dir = std::env::temp_dir().join(format!("tanto-render-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("broken.txt"), "{{ transaction.no_such_field }}").expect("txt");
        std::fs::write(dir.join("broken.html"), "<p>{{ store_name }}</p>").expect("html");
        let catalog = Catalog::parse(
            "mails:\n  - { number: \"5-1-2\", name: n, event_type: order.applied, audience: staff,\n      recipients: [company_wide], subject: s, template: broken, origin: tanto }\n",
        )
        .expect("catalog");
        let err = Renderer::load(&dir, catalog)
            .expect("load")
            .render(&sample("5-1-2"))
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("broken.txt"), "{message}");
        assert!(message.contains("no_such_field"), "{message}");
    }

    #[test]
    fn a_catalog_entry_without_its_templates_stops_loading() {
        let dir = std::env::temp_dir().join(format!("tanto-render-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("only.txt"), "x").expect("txt");
        let catalog = Catalog::parse(
            "mails:\n  - { number: \"5-1-2\", name: n, event_type: order.applied, audience: staff,\n      recipients: [company_wide], subject: s, template: only, origin: tanto }\n",
        )
        .expect("catalog");
        let err = Renderer::load(&dir, catalog).unwrap_err();
        assert!(
            err.to_string().contains("needs the template only.html"),
            "{err}"
        );
    }
}
