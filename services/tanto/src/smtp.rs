//! Builds a MIME message from a rendered mail and sends it over SMTP, sorting
//! every failure into transient (worth retrying) or permanent.
//!
//! Messages are built with lettre's builder only, every text part carries an
//! explicit base64 transfer encoding, and line endings are CRLF: lettre
//! before 0.11.24 does not dot-stuff after a bare CR or LF, so rendered text
//! must never reach the wire as 8bit (../shared/docs/stack.md).

use std::str::FromStr;
use std::sync::Arc;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use tokio::sync::Semaphore;

use crate::config::{SmtpSettings, SmtpTls};
use crate::delivery::DeliveryMessage;
use crate::render::RenderedMail;

/// How a send failed, by what the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later: a 4xx reply, a refused or dropped
    /// connection, a timeout, a TLS failure.
    #[error("transient {class} failure: {detail}")]
    Transient { class: &'static str, detail: String },
    /// Trying again cannot help: a 5xx reply or an invalid address.
    #[error("permanent {class} failure: {detail}")]
    Permanent { class: &'static str, detail: String },
}

impl SendError {
    /// A short stable name for the history, headers and metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Transient { class, .. } | SendError::Permanent { class, .. } => class,
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            SendError::Transient { detail, .. } | SendError::Permanent { detail, .. } => detail,
        }
    }
}

/// An SMTP sender with a connection pool and a bound on concurrent sends:
/// lettre's pool limits idle connections only, not concurrent ones.
#[derive(Debug, Clone)]
pub struct Sender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    permits: Arc<Semaphore>,
}

impl Sender {
    pub fn new(settings: &SmtpSettings, from: &str) -> anyhow::Result<Self> {
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(TlsParameters::new(settings.host.clone())?),
            SmtpTls::Implicit => Tls::Wrapper(TlsParameters::new(settings.host.clone())?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().into()));
        }
        let from = Mailbox::from_str(from).map_err(|err| {
            anyhow::anyhow!("TANTO_MAIL_FROM is not a valid mail address ({err})")
        })?;
        let pool = PoolConfig::new().max_size(u32::try_from(settings.connections)?);
        Ok(Self {
            transport: builder.pool_config(pool).build(),
            from,
            permits: Arc::new(Semaphore::new(settings.connections)),
        })
    }

    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Sends one rendered delivery.
    pub async fn send(
        &self,
        delivery: &DeliveryMessage,
        mail: &RenderedMail,
    ) -> Result<(), SendError> {
        let message = build_message(&self.from, delivery, mail)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(classify)
    }
}

/// Builds the MIME message: multipart/alternative, text then HTML, both
/// base64, with a `Message-ID` derived from the delivery id.
pub fn build_message(
    from: &Mailbox,
    delivery: &DeliveryMessage,
    mail: &RenderedMail,
) -> Result<Message, SendError> {
    let address = Address::from_str(delivery.recipient.address.trim()).map_err(|err| {
        SendError::Permanent {
            class: "invalid_address",
            detail: err.to_string(),
        }
    })?;
    let name = Some(delivery.recipient.name.clone()).filter(|name| !name.is_empty());
    let body = MultiPart::alternative()
        .singlepart(text_part(ContentType::TEXT_PLAIN, &mail.text))
        .singlepart(text_part(ContentType::TEXT_HTML, &mail.html));
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(name, address))
        .subject(mail.subject.clone())
        .message_id(Some(message_id(delivery)))
        .multipart(body)
        .map_err(|err| SendError::Permanent {
            class: "invalid_message",
            detail: err.to_string(),
        })
}

/// `<delivery-id@tanto>`: the same delivery always has the same Message-ID,
/// so a copy sent twice is recognisable as one mail at the server.
pub fn message_id(delivery: &DeliveryMessage) -> String {
    format!("<{}@tanto>", delivery.delivery_id)
}

fn text_part(content_type: ContentType, text: &str) -> SinglePart {
    SinglePart::builder()
        .header(content_type)
        .header(ContentTransferEncoding::Base64)
        .body(to_crlf(text))
}

/// Normalises every line ending (CRLF, bare LF, bare CR) to CRLF.
fn to_crlf(text: &str) -> String {
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    unified.replace('\n', "\r\n")
}

fn classify(err: lettre::transport::smtp::Error) -> SendError {
    let detail = crate::error_chain(&err);
    if err.is_permanent() {
        SendError::Permanent {
            class: "smtp_5xx",
            detail,
        }
    } else if err.is_transient() {
        SendError::Transient {
            class: "smtp_4xx",
            detail,
        }
    } else if err.is_timeout() {
        SendError::Transient {
            class: "timeout",
            detail,
        }
    } else if err.is_tls() {
        SendError::Transient {
            class: "tls",
            detail,
        }
    } else {
        SendError::Transient {
            class: "connection",
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_ending_becomes_crlf() {
        assert_eq!(to_crlf("a\nb\r\nc\rd"), "a\r\nb\r\nc\r\nd");
        assert_eq!(to_crlf("\n.\nQUIT\n"), "\r\n.\r\nQUIT\r\n");
    }
}
