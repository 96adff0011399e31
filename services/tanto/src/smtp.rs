//! Builds a MIME message from a rendered mail and sends it over SMTP, on a
//! bounded number of reused connections, sorting every failure by what the
//! caller must do next.
//!
//! Messages are built with lettre's builder only, every text part carries an
//! explicit base64 transfer encoding, and line endings are CRLF: lettre
//! before 0.11.24 does not dot-stuff after a bare CR or LF, so rendered text
//! must never reach the wire as 8bit (../shared/docs/stack.md).
//!
//! The mailer drives each SMTP exchange itself, one command at a time,
//! rather than through lettre's pooled transport, for three reasons:
//!
//! - It knows which step failed. A failure before the server's go-ahead for
//!   the message data means the server does not have the mail; a reply to
//!   the data is a definite answer; anything else after the data was
//!   written (a dropped connection, a timeout) means the server may or may
//!   not have it: the outcome is unknown, and is reported as such.
//! - It bounds concurrency: lettre's pool limits idle connections only.
//! - It turns off Nagle's algorithm on plain and STARTTLS connections:
//!   lettre writes the data and its final dot in two writes, and with Nagle
//!   on each mail waits for the server's delayed ACK (about 40 ms). Implicit
//!   TLS connections are opened by lettre, which keeps Nagle on.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::{Address, Message};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::{SmtpSettings, SmtpTls};
use crate::delivery::DeliveryMessage;
use crate::render::RenderedMail;
use crate::retry::{Failure, Severity};

/// A pooled connection unused for this long is closed rather than reused:
/// servers close idle sessions, and a closed one costs a failed command.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// How long a polite QUIT may take when a connection is closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// An SMTP sender: at most `connections` mails in flight, each on its own
/// connection, connections reused while they work, and an optional pace.
pub struct Sender {
    relay: Relay,
    from: Mailbox,
    permits: Semaphore,
    idle: Mutex<Vec<IdleConnection>>,
    pacer: Option<Pacer>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("host", &self.relay.host)
            .field("port", &self.relay.port)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// The right to send one mail now: one of the connection permits, taken
/// after the pace allowed it.
#[derive(Debug)]
pub struct Slot<'a> {
    sender: &'a Sender,
    _permit: SemaphorePermit<'a>,
}

impl Sender {
    pub fn new(settings: &SmtpSettings, from: &str) -> anyhow::Result<Self> {
        let from = Mailbox::from_str(from).map_err(|err| {
            anyhow::anyhow!("TANTO_MAIL_FROM is not a valid mail address ({err})")
        })?;
        Ok(Self {
            relay: Relay::new(settings)?,
            from,
            permits: Semaphore::new(settings.connections),
            idle: Mutex::new(Vec::new()),
            pacer: settings.rate_per_sec.map(Pacer::new),
        })
    }

    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Waits for a free connection and for the pace, if one is set.
    pub async fn reserve(&self) -> Slot<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        Slot {
            sender: self,
            _permit: permit,
        }
    }

    /// Says QUIT on every idle connection.
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("the idle list is never poisoned"));
        for connection in idle {
            quit(connection.connection).await;
        }
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().expect("the idle list is never poisoned");
        // The most recently used connection is the least likely to be closed.
        while let Some(connection) = idle.pop() {
            if connection.since.elapsed() < IDLE_LIMIT {
                return Some(connection.connection);
            }
        }
        None
    }

    fn put_idle(&self, connection: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().expect("the idle list is never poisoned");
        idle.push(IdleConnection {
            connection,
            since: Instant::now(),
        });
    }
}

impl Slot<'_> {
    /// Sends one message, on a pooled connection if one is idle. A pooled
    /// connection that fails before any mail data was written (the server
    /// closed it while it was idle) is replaced by a new one, once.
    pub async fn send(&self, message: &Message) -> Result<(), Failure> {
        let sender = self.sender;
        let relay = &sender.relay;
        if let Some(mut connection) = sender.take_idle() {
            match relay.transact(&mut connection, message).await {
                Ok(()) => {
                    sender.put_idle(connection);
                    return Ok(());
                }
                Err(trouble) if trouble.is_stale_connection() => quit(connection).await,
                Err(trouble) => {
                    quit(connection).await;
                    return Err(trouble.into_failure());
                }
            }
        }
        let mut connection = relay.connect().await?;
        match relay.transact(&mut connection, message).await {
            Ok(()) => {
                sender.put_idle(connection);
                Ok(())
            }
            Err(trouble) => {
                // After any failure the session's state is doubtful (a 421
                // even announces that the server closes it): never reuse it.
                quit(connection).await;
                Err(trouble.into_failure())
            }
        }
    }
}

struct IdleConnection {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// Where and how to reach the SMTP relay.
struct Relay {
    host: String,
    port: u16,
    tls: Option<(SmtpTls, TlsParameters)>,
    credentials: Option<Credentials>,
    timeout: Duration,
    client_id: ClientId,
}

impl Relay {
    fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        let tls = match settings.tls {
            SmtpTls::None => None,
            mode => Some((mode, TlsParameters::new(settings.host.clone())?)),
        };
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().into()))
            }
            _ => None,
        };
        Ok(Self {
            host: settings.host.clone(),
            port: settings.port,
            tls,
            credentials,
            timeout: settings.timeout,
            client_id: ClientId::default(),
        })
    }

    /// Opens a session: TCP (or implicit TLS), greeting, EHLO, STARTTLS and
    /// AUTH as configured. Every failure here is the relay's, not the
    /// mail's, so it is transient whatever the reply code.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let session = async {
            let mut connection = match &self.tls {
                Some((SmtpTls::Implicit, parameters)) => {
                    let server = (self.host.as_str(), self.port);
                    let timeout = Some(self.timeout);
                    let parameters = Some(parameters.clone());
                    AsyncSmtpConnection::connect_tokio1(
                        server,
                        timeout,
                        &self.client_id,
                        parameters,
                        None,
                    )
                    .await?
                }
                _ => {
                    let stream = TcpStream::connect((self.host.as_str(), self.port))
                        .await
                        .map_err(Trouble::Connect)?;
                    stream.set_nodelay(true).map_err(Trouble::Connect)?;
                    let stream = Box::new(stream);
                    AsyncSmtpConnection::connect_with_transport(stream, &self.client_id).await?
                }
            };
            if let Some((SmtpTls::StartTls, parameters)) = &self.tls {
                connection
                    .starttls(parameters.clone(), &self.client_id)
                    .await?;
            }
            if let Some(credentials) = &self.credentials {
                let mechanisms = [Mechanism::Plain, Mechanism::Login];
                connection.auth(&mechanisms, credentials).await?;
            }
            Ok::<_, Trouble>(connection)
        };
        match tokio::time::timeout(self.timeout, session).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(trouble)) => Err(trouble.in_session()),
            Err(_) => Err(Trouble::TimedOut.in_session()),
        }
    }

    /// One mail transaction: MAIL, RCPT, DATA, then the message and the
    /// server's answer to it, each step within the timeout.
    async fn transact(
        &self,
        connection: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> Result<(), Step> {
        let envelope = message.envelope();
        let body = message.formatted();
        let parameters = mail_parameters(connection, envelope, &body).map_err(Step::Refused)?;
        let mail = Mail::new(envelope.from().cloned(), parameters);
        self.within(connection.command(mail))
            .await
            .map_err(Step::Envelope)?;
        for recipient in envelope.to() {
            let rcpt = Rcpt::new(recipient.clone(), Vec::new());
            self.within(connection.command(rcpt))
                .await
                .map_err(Step::Envelope)?;
        }
        self.within(connection.command(Data))
            .await
            .map_err(Step::Envelope)?;
        self.within(connection.message(&body))
            .await
            .map_err(Step::Message)?;
        Ok(())
    }

    async fn within<T>(
        &self,
        step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Trouble> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result.map_err(Trouble::Smtp),
            Err(_) => Err(Trouble::TimedOut),
        }
    }
}

/// The MAIL parameters the message needs, or why the server cannot take
/// it. Rendered mails are ASCII on the wire (base64 parts, encoded
/// headers); an address may not be.
fn mail_parameters(
    connection: &AsyncSmtpConnection,
    envelope: &lettre::address::Envelope,
    body: &[u8],
) -> Result<Vec<MailParameter>, Failure> {
    let server = connection.server_info();
    let mut parameters = Vec::new();
    let mut addresses = envelope.to().iter().chain(envelope.from());
    if addresses.any(|address| !AsRef::<str>::as_ref(address).is_ascii()) {
        if !server.supports_feature(Extension::SmtpUtfEight) {
            return Err(Failure::permanent(
                "invalid_address",
                "the address is not ASCII and the server does not support SMTPUTF8",
            ));
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !server.supports_feature(Extension::EightBitMime) {
            return Err(Failure::permanent(
                "invalid_message",
                "the message is not ASCII and the server does not support 8BITMIME",
            ));
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(parameters)
}

/// What went wrong in one step of an SMTP exchange.
#[derive(Debug)]
enum Trouble {
    Connect(std::io::Error),
    Smtp(lettre::transport::smtp::Error),
    TimedOut,
}

impl From<lettre::transport::smtp::Error> for Trouble {
    fn from(err: lettre::transport::smtp::Error) -> Self {
        Trouble::Smtp(err)
    }
}

/// A failed mail transaction, by the step that failed.
#[derive(Debug)]
enum Step {
    /// The message cannot be offered to this server at all.
    Refused(Failure),
    /// MAIL, RCPT or DATA: the server has no mail data yet.
    Envelope(Trouble),
    /// The mail data and the server's answer to it.
    Message(Trouble),
}

impl Step {
    /// A pooled connection the server closed while it was idle fails on its
    /// first command, with no reply or with 421 (closing).
    fn is_stale_connection(&self) -> bool {
        match self {
            Step::Envelope(Trouble::Smtp(err)) => match err.status() {
                Some(code) => u16::from(code) == 421,
                None => !err.is_timeout(),
            },
            _ => false,
        }
    }

    fn into_failure(self) -> Failure {
        match self {
            Step::Refused(failure) => failure,
            Step::Envelope(trouble) => trouble.classify(Severity::Transient),
            Step::Message(trouble) => trouble.classify(Severity::Unknown),
        }
    }
}

impl Trouble {
    /// A reply code is a definite answer: 4xx transient, 5xx permanent.
    /// Anything else is `otherwise`: transient before the mail data was
    /// written, unknown after.
    fn classify(self, otherwise: Severity) -> Failure {
        let detail = self.detail();
        let (severity, class, smtp_reply) = match &self {
            Trouble::Smtp(err) => match err.status() {
                Some(code) => {
                    let reply = Some(reply_of(err, code));
                    if err.is_permanent() {
                        (Severity::Permanent, "smtp_5xx", reply)
                    } else {
                        (Severity::Transient, "smtp_4xx", reply)
                    }
                }
                None if otherwise == Severity::Unknown => (otherwise, "unknown_outcome", None),
                None if err.is_timeout() => (otherwise, "timeout", None),
                None if err.is_tls() => (otherwise, "tls", None),
                None => (otherwise, "connection", None),
            },
            Trouble::TimedOut if otherwise == Severity::Unknown => {
                (otherwise, "unknown_outcome", None)
            }
            Trouble::TimedOut => (otherwise, "timeout", None),
            Trouble::Connect(_) => (otherwise, "connection", None),
        };
        Failure {
            severity,
            class,
            detail,
            smtp_reply,
        }
    }

    /// A failure while opening the session is transient, reply or not.
    fn in_session(self) -> Failure {
        let mut failure = self.classify(Severity::Transient);
        if failure.severity == Severity::Permanent {
            failure.severity = Severity::Transient;
            failure.class = "session_refused";
        }
        failure
    }

    fn detail(&self) -> String {
        match self {
            Trouble::Connect(err) => format!("cannot connect: {err}"),
            Trouble::Smtp(err) => crate::error_chain(err),
            Trouble::TimedOut => "no answer within the SMTP timeout".to_string(),
        }
    }
}

/// The server's reply as it said it: code, then text.
fn reply_of(
    err: &lettre::transport::smtp::Error,
    code: lettre::transport::smtp::response::Code,
) -> String {
    use std::error::Error as _;
    match err.source() {
        Some(text) => format!("{code} {text}"),
        None => code.to_string(),
    }
}

/// Ends a session politely if the server still listens; a connection that
/// does not answer is simply dropped.
async fn quit(mut connection: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, connection.abort()).await;
}

/// Spaces the starts of sends at least `1 / rate` seconds apart, across
/// every connection.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate_per_sec: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate_per_sec),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().expect("the pacer is never poisoned");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Builds the MIME message: multipart/alternative, text then HTML, both
/// base64, with a `Message-ID` derived from the delivery id.
pub fn build_message(
    from: &Mailbox,
    delivery: &DeliveryMessage,
    mail: &RenderedMail,
) -> Result<Message, Failure> {
    let address = Address::from_str(delivery.recipient.address.trim())
        .map_err(|err| Failure::permanent("invalid_address", err.to_string()))?;
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
        .map_err(|err| Failure::permanent("invalid_message", err.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_ending_becomes_crlf() {
        assert_eq!(to_crlf("a\nb\r\nc\rd"), "a\r\nb\r\nc\r\nd");
        assert_eq!(to_crlf("\n.\nQUIT\n"), "\r\n.\r\nQUIT\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_sends_by_the_rate() {
        let pacer = Pacer::new(4.0);
        let start = Instant::now();
        for _ in 0..9 {
            pacer.wait().await;
        }
        // The first send goes at once, the next eight a quarter second apart.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_does_not_save_up_sends() {
        let pacer = Pacer::new(2.0);
        pacer.wait().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
