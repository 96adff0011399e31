//! `tanto preview` and `tanto templates check`: the mail templates seen
//! before they are sent.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{connect, print_json, say};
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::preview::{self, Preview};
use crate::render::Renderer;
use crate::routing::Router;

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The management number of the mail, e.g. 5-1-2.
    #[arg(value_name = "MAIL_NUMBER")]
    number: String,
    /// A transaction event as JSON (schemas/event.schema.json).
    #[arg(long, value_name = "FILE")]
    event: PathBuf,
    /// Resolve with this tenant's routing data instead of the event's.
    #[arg(long)]
    tenant: Option<String>,
    /// Render the mail as this recipient gets it (default: the first).
    #[arg(long, value_name = "ADDRESS")]
    recipient: Option<String>,
    /// Also write the HTML part to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print JSON for scripts (with the HTML part).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Render every catalog mail for a sample of every event type; fails on
    /// the first template that does not parse or render. Run it before
    /// deploying a template change.
    Check {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(settings: &Settings, command: TemplatesCommand) -> anyhow::Result<()> {
    match command {
        TemplatesCommand::Check { json } => {
            let catalog = Catalog::load(&settings.mail.catalog)?;
            let report = crate::templates::check(&catalog, &settings.mail.templates)?;
            if json {
                return print_json(&report);
            }
            say(&format!(
                "templates ok: {} files, {} mails rendered {} times for {} event types",
                report.templates, report.mails, report.renders, report.event_types
            ))
        }
    }
}

pub(super) async fn preview(settings: &Settings, args: PreviewArgs) -> anyhow::Result<()> {
    let event = std::fs::read(&args.event)
        .with_context(|| format!("cannot read the event file {}", args.event.display()))
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let catalog = Catalog::load(&settings.mail.catalog)?;
    let templates = &settings.mail.templates;
    let renderer = Renderer::load(templates, catalog.clone())?;
    let router = Router::new(connect(settings).await?, catalog);
    let request = preview::Request {
        number: &args.number,
        event: &event,
        tenant: args.tenant.as_deref(),
        recipient: args.recipient.as_deref(),
    };
    let preview = preview::preview(&router, &renderer, templates, &request).await?;
    if let (Some(path), Some(rendered)) = (&args.html, &preview.rendered) {
        std::fs::write(path, &rendered.html)
            .with_context(|| format!("cannot write the HTML part to {}", path.display()))
            .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    }
    if args.json {
        return print_json(&preview);
    }
    say(&preview_text(&preview, args.html.is_some()))
}

fn preview_text(preview: &Preview, html_written: bool) -> String {
    let mut lines = vec![format!(
        "mail {} {} for {} event {} of tenant {}",
        preview.mail.number,
        preview.mail.name,
        preview.event_type,
        preview.event_id,
        preview.tenant
    )];
    lines.push(String::new());
    lines.push("recipients:".into());
    for class in &preview.recipients {
        let addresses: Vec<String> = class
            .addresses
            .iter()
            .map(|a| {
                if a.name.is_empty() {
                    a.address.clone()
                } else {
                    format!("{} <{}>", a.name, a.address)
                }
            })
            .collect();
        let reached = if addresses.is_empty() {
            "nobody".to_string()
        } else {
            addresses.join(", ")
        };
        lines.push(format!("  {} ({}): {reached}", class.label, class.class));
    }
    let Some(rendered) = &preview.rendered else {
        lines.push(String::new());
        lines.push("nothing would be sent: the mail reaches nobody".into());
        return lines.join("\n");
    };
    lines.push(String::new());
    lines.push(format!("as {} gets it:", rendered.address));
    lines.push(format!("subject: {}", rendered.subject));
    lines.push(String::new());
    lines.push(rendered.text.trim_end().to_string());
    if html_written {
        lines.push(String::new());
        lines.push("(HTML part written)".into());
    }
    lines.join("\n")
}
