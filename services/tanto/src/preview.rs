//! Previewing a catalog mail (`tanto preview`): one sample event, resolved
//! with a tenant's real routing data and rendered with the real templates,
//! exactly as the notifier and the mailer would, without sending anything.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{MailSpec, RecipientClass};
use crate::event::{self, EventType, Family};
use crate::render::Renderer;
use crate::routing::{RouteError, Router};
use crate::templates::{TemplateProblem, locate};

/// What a preview shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub mail: MailSummary,
    pub tenant: String,
    pub event_id: String,
    pub event_type: EventType,
    /// Who would receive the mail, by class, in the catalog's class order.
    /// An address reached through several classes is under each, and gets
    /// one mail.
    pub recipients: Vec<ClassRecipients>,
    /// The mail as one recipient would get it; `None` when it reaches nobody.
    pub rendered: Option<RenderedFor>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailSummary {
    pub number: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassRecipients {
    pub class: RecipientClass,
    pub label: &'static str,
    pub addresses: Vec<Addressee>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addressee {
    pub address: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenderedFor {
    pub address: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why there is no preview; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("mail {0} is not in the catalog (docs/catalog.md lists the numbers)")]
    UnknownMail(String),
    #[error("the event is not valid ({0}); fix the file and try again")]
    InvalidEvent(event::Rejection),
    #[error("mail {number} is sent for {wanted} events, but the event is {given}")]
    WrongEventType {
        number: String,
        wanted: EventType,
        given: EventType,
    },
    #[error("tenant '{0}' has no routing data; apply its routing file first (tanto apply -f FILE)")]
    UnknownTenant(String),
    #[error("tenant '{tenant}' has switched mail {number} off (disabled_mails); it is not sent")]
    Disabled { tenant: String, number: String },
    #[error("{address} does not receive mail {number} for this event")]
    NotARecipient { address: String, number: String },
    #[error("mail {number} does not render: {problem}")]
    Render {
        number: String,
        problem: TemplateProblem,
    },
    #[error(transparent)]
    Unavailable(anyhow::Error),
}

/// What to preview.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub number: &'a str,
    /// The event, as a file would hold it.
    pub event: &'a [u8],
    /// Replaces the event's `tenant_id`, to preview a sample event with any
    /// tenant's data.
    pub tenant: Option<&'a str>,
    /// Renders the mail as this address gets it; by default the first
    /// recipient in address order.
    pub recipient: Option<&'a str>,
}

/// Resolves and renders one mail for one event.
pub async fn preview(
    router: &Router,
    renderer: &Renderer,
    templates: &std::path::Path,
    request: &Request<'_>,
) -> Result<Preview, PreviewError> {
    let mail = router
        .catalog()
        .get(request.number)
        .ok_or_else(|| PreviewError::UnknownMail(request.number.to_string()))?;
    let event = parse_event(request.event, request.tenant)?;
    if event.event_type != mail.event_type {
        return Err(PreviewError::WrongEventType {
            number: mail.number.clone(),
            wanted: mail.event_type,
            given: event.event_type,
        });
    }
    let routed = match router.route(&event).await {
        Ok(routed) => routed,
        Err(RouteError::Rejected(_)) => return Err(PreviewError::UnknownTenant(event.tenant_id)),
        Err(RouteError::Unavailable(err)) => return Err(PreviewError::Unavailable(err)),
    };
    if routed.disabled_mails.contains(&mail.number) {
        return Err(PreviewError::Disabled {
            tenant: event.tenant_id,
            number: mail.number.clone(),
        });
    }
    let deliveries: Vec<_> = routed
        .deliveries
        .into_iter()
        .filter(|delivery| delivery.mail.number == mail.number)
        .collect();
    let chosen = match request.recipient {
        Some(address) => {
            let wanted = crate::delivery::normalize_address(address);
            let found = deliveries
                .iter()
                .find(|d| crate::delivery::normalize_address(&d.recipient.address) == wanted);
            Some(found.ok_or_else(|| PreviewError::NotARecipient {
                address: address.to_string(),
                number: mail.number.clone(),
            })?)
        }
        None => deliveries.first(),
    };
    let rendered = match chosen {
        Some(delivery) => {
            let mail_text = renderer
                .render(delivery)
                .map_err(|err| PreviewError::Render {
                    number: mail.number.clone(),
                    problem: locate(templates, renderer.catalog(), err),
                })?;
            Some(RenderedFor {
                address: delivery.recipient.address.clone(),
                subject: mail_text.subject,
                text: mail_text.text,
                html: mail_text.html,
            })
        }
        None => None,
    };
    Ok(Preview {
        mail: MailSummary {
            number: mail.number.clone(),
            name: mail.name.clone(),
        },
        tenant: event.tenant_id.clone(),
        event_id: event.event_id.clone(),
        event_type: event.event_type,
        recipients: by_class(mail, &deliveries),
        rendered,
    })
}

/// Parses an event file whatever its family; `tenant` replaces its tenant.
fn parse_event(payload: &[u8], tenant: Option<&str>) -> Result<event::Event, PreviewError> {
    let mut payload = payload.to_vec();
    if let Some(tenant) = tenant
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&payload)
        && let Some(object) = value.as_object_mut()
    {
        object.insert("tenant_id".into(), tenant.into());
        payload = value.to_string().into_bytes();
    }
    let family = serde_json::from_slice::<serde_json::Value>(&payload)
        .ok()
        .and_then(|value| value["event_type"].as_str()?.parse::<EventType>().ok())
        .map_or(Family::Order, EventType::family);
    event::parse(&payload, family).map_err(PreviewError::InvalidEvent)
}

fn by_class(
    mail: &MailSpec,
    deliveries: &[crate::delivery::DeliveryMessage],
) -> Vec<ClassRecipients> {
    let mut classes: BTreeMap<RecipientClass, Vec<Addressee>> = mail
        .recipients
        .iter()
        .map(|class| (*class, Vec::new()))
        .collect();
    for delivery in deliveries {
        for class in &delivery.recipient.classes {
            classes.entry(*class).or_default().push(Addressee {
                address: delivery.recipient.address.clone(),
                name: delivery.recipient.name.clone(),
            });
        }
    }
    mail.recipients
        .iter()
        .map(|class| ClassRecipients {
            class: *class,
            label: class.label(),
            addresses: classes.remove(class).unwrap_or_default(),
        })
        .collect()
}
