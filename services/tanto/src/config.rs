//! Typed settings, read once at start-up from `TANTO_*` environment variables.
//!
//! Every setting has a default that works with the local stack (`make up`).
//! A value that does not parse, and a `TANTO_*` variable that no binary knows,
//! stop start-up with one sentence naming the variable: a typo in a setting
//! name must not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// Every variable the binaries and scripts read. `TANTO_BIN_DIR` is read only
/// by the scripts and tests that start the binaries; it is listed so that it
/// may be present in the environment the binaries inherit.
pub const KNOWN_VARIABLES: &[&str] = &[
    "TANTO_KAFKA_BROKERS",
    "TANTO_DATABASE_URL",
    "TANTO_DATABASE_POOL_SIZE",
    "TANTO_DATABASE_TIMEOUT_SECS",
    "TANTO_CATALOG",
    "TANTO_TEMPLATES",
    "TANTO_TOPIC_ORDERS",
    "TANTO_TOPIC_CONTRACTS",
    "TANTO_TOPIC_QUOTES",
    "TANTO_TOPIC_DELIVERIES",
    "TANTO_TOPIC_EVENTS_DLQ",
    "TANTO_TOPIC_DELIVERIES_DLQ",
    "TANTO_TOPIC_PARTITIONS",
    "TANTO_CONSUMER_GROUP",
    "TANTO_SMTP_HOST",
    "TANTO_SMTP_PORT",
    "TANTO_SMTP_TLS",
    "TANTO_SMTP_USERNAME",
    "TANTO_SMTP_PASSWORD",
    "TANTO_SMTP_TIMEOUT_SECS",
    "TANTO_SMTP_CONNECTIONS",
    "TANTO_MAIL_FROM",
    "TANTO_LOG",
    "TANTO_LOG_FORMAT",
    "TANTO_SHUTDOWN_DEADLINE_SECS",
    "TANTO_WATCHDOG_STALL_SECS",
    "TANTO_HTTP_ADDR",
    "TANTO_BIN_DIR",
];

/// All settings. Each binary reads the sections it needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub mail: MailSettings,
    pub smtp: SmtpSettings,
    pub telemetry: TelemetrySettings,
    /// How long a binary may take, after SIGTERM or SIGINT, to finish its
    /// in-flight work before it gives up and exits.
    pub shutdown_deadline: Duration,
    /// A consumer that receives nothing for this long while its partitions
    /// have messages waiting is replaced.
    pub watchdog_stall: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; each binary
    /// has its own default port.
    pub http_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topics: Topics,
    /// Overrides the binary's own default consumer group.
    pub consumer_group: Option<String>,
    /// Partitions given to topics that `tanto topics ensure` creates.
    pub topic_partitions: i32,
}

/// Names of every topic tanto reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub orders: String,
    pub contracts: String,
    pub quotes: String,
    pub deliveries: String,
    pub events_dlq: String,
    pub deliveries_dlq: String,
}

impl Topics {
    pub fn all(&self) -> [&str; 6] {
        [
            &self.orders,
            &self.contracts,
            &self.quotes,
            &self.deliveries,
            &self.events_dlq,
            &self.deliveries_dlq,
        ]
    }
}

impl Topics {
    /// The default names behind `prefix.`, for a test or a benchmark run
    /// that must not share topics with anyone.
    pub fn prefixed(prefix: &str) -> Self {
        let defaults = Self::default();
        let name = |topic: &str| format!("{prefix}.{topic}");
        Self {
            orders: name(&defaults.orders),
            contracts: name(&defaults.contracts),
            quotes: name(&defaults.quotes),
            deliveries: name(&defaults.deliveries),
            events_dlq: name(&defaults.events_dlq),
            deliveries_dlq: name(&defaults.deliveries_dlq),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            orders: "commerce.orders".into(),
            contracts: "commerce.contracts".into(),
            quotes: "commerce.quotes".into(),
            deliveries: "tanto.deliveries".into(),
            events_dlq: "tanto.events.dlq".into(),
            deliveries_dlq: "tanto.deliveries.dlq".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub pool_size: usize,
    /// Bounds a pool checkout and a connection attempt: deadpool waits forever
    /// by default, which would turn a database outage into a silent hang.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    pub catalog: PathBuf,
    pub templates: PathBuf,
    /// The `From:` of every mail, e.g. `ACME <noreply@acme.example>`.
    pub from: String,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
    /// At most this many mails are sent at once, each on its own connection.
    pub connections: usize,
}

/// How the mailer secures its SMTP connection. There is deliberately no
/// opportunistic mode: a production relay is reached with TLS or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP, for the local stack only.
    None,
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
}

impl FromStr for SmtpTls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Implicit),
            other => Err(format!("expected none, starttls or tls, got '{other}'")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// A `tracing` filter directive, e.g. `info,tanto=debug`.
    pub filter: String,
    pub json: bool,
}

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Returns a database or broker URL with its password replaced by `***`, for
/// log lines and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from the given variables; only `TANTO_*` ones count.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let vars = Vars::new(vars)?;
        let settings = Self {
            kafka: KafkaSettings {
                brokers: vars.string("TANTO_KAFKA_BROKERS", "127.0.0.1:9092"),
                topics: Topics {
                    orders: vars.string("TANTO_TOPIC_ORDERS", "commerce.orders"),
                    contracts: vars.string("TANTO_TOPIC_CONTRACTS", "commerce.contracts"),
                    quotes: vars.string("TANTO_TOPIC_QUOTES", "commerce.quotes"),
                    deliveries: vars.string("TANTO_TOPIC_DELIVERIES", "tanto.deliveries"),
                    events_dlq: vars.string("TANTO_TOPIC_EVENTS_DLQ", "tanto.events.dlq"),
                    deliveries_dlq: vars
                        .string("TANTO_TOPIC_DELIVERIES_DLQ", "tanto.deliveries.dlq"),
                },
                consumer_group: vars.optional("TANTO_CONSUMER_GROUP"),
                topic_partitions: vars.parsed("TANTO_TOPIC_PARTITIONS", 3)?,
            },
            database: DatabaseSettings {
                url: Secret::new(vars.string(
                    "TANTO_DATABASE_URL",
                    "postgres://tanto:tanto@127.0.0.1:5432/tanto",
                )),
                pool_size: vars.parsed("TANTO_DATABASE_POOL_SIZE", 8)?,
                timeout: vars.seconds("TANTO_DATABASE_TIMEOUT_SECS", 5)?,
            },
            mail: MailSettings {
                catalog: vars
                    .string("TANTO_CATALOG", "deploy/mail/catalog.yaml")
                    .into(),
                templates: vars
                    .string("TANTO_TEMPLATES", "deploy/mail/templates")
                    .into(),
                from: vars.string("TANTO_MAIL_FROM", "tanto <noreply@tanto.localhost>"),
            },
            smtp: SmtpSettings {
                host: vars.string("TANTO_SMTP_HOST", "127.0.0.1"),
                port: vars.parsed("TANTO_SMTP_PORT", 1025)?,
                tls: vars.parsed("TANTO_SMTP_TLS", SmtpTls::None)?,
                username: vars.optional("TANTO_SMTP_USERNAME"),
                password: vars.optional("TANTO_SMTP_PASSWORD").map(Secret::new),
                timeout: vars.seconds("TANTO_SMTP_TIMEOUT_SECS", 30)?,
                connections: vars.parsed("TANTO_SMTP_CONNECTIONS", 4)?,
            },
            telemetry: TelemetrySettings {
                filter: vars.string("TANTO_LOG", "info,rdkafka=warn"),
                json: vars.parsed::<LogFormat>("TANTO_LOG_FORMAT", LogFormat::Text)?
                    == LogFormat::Json,
            },
            shutdown_deadline: vars.seconds("TANTO_SHUTDOWN_DEADLINE_SECS", 20)?,
            watchdog_stall: vars.seconds("TANTO_WATCHDOG_STALL_SECS", 60)?,
            http_addr: vars.optional_parsed("TANTO_HTTP_ADDR")?,
        };
        settings.check()?;
        Ok(settings)
    }

    /// Rules that involve more than one setting.
    fn check(&self) -> anyhow::Result<()> {
        if self.smtp.username.is_some() != self.smtp.password.is_some() {
            bail!("TANTO_SMTP_USERNAME and TANTO_SMTP_PASSWORD must be set together");
        }
        if self.smtp.password.is_some() && self.smtp.tls == SmtpTls::None {
            bail!("TANTO_SMTP_PASSWORD is set but TANTO_SMTP_TLS is none: credentials need TLS");
        }
        if self.watchdog_stall < Duration::from_secs(1) {
            bail!("TANTO_WATCHDOG_STALL_SECS must be at least 1");
        }
        if self.kafka.topic_partitions < 1 {
            bail!("TANTO_TOPIC_PARTITIONS must be at least 1");
        }
        if self.smtp.connections < 1 {
            bail!("TANTO_SMTP_CONNECTIONS must be at least 1");
        }
        if self.database.pool_size < 1 {
            bail!("TANTO_DATABASE_POOL_SIZE must be at least 1");
        }
        lettre::message::Mailbox::from_str(&self.mail.from).map_err(|err| {
            anyhow::anyhow!("TANTO_MAIL_FROM is not a valid mail address ({err})")
        })?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("expected text or json, got '{other}'")),
        }
    }
}

/// The `TANTO_*` variables, with typed accessors that name the variable in
/// every error.
struct Vars(BTreeMap<String, String>);

impl Vars {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(key, _)| key.starts_with("TANTO_"))
            .collect();
        if let Some(unknown) = vars
            .keys()
            .find(|key| !KNOWN_VARIABLES.contains(&key.as_str()))
        {
            bail!("{unknown} is not a tanto setting (see docs/configuration.md for the list)");
        }
        Ok(Self(vars))
    }

    fn optional(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|value| !value.is_empty()).cloned()
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.optional(key).unwrap_or_else(|| default.to_string())
    }

    fn parsed<T>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        Ok(self.optional_parsed(key)?.unwrap_or(default))
    }

    fn optional_parsed<T>(&self, key: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let Some(raw) = self.optional(key) else {
            return Ok(None);
        };
        let value = raw.parse().map_err(|err| anyhow::anyhow!("{err}"));
        value
            .map(Some)
            .with_context(|| format!("{key} has an invalid value '{raw}'"))
    }

    fn seconds(&self, key: &str, default: u64) -> anyhow::Result<Duration> {
        self.parsed(key, default).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_local_stack() {
        let settings = Settings::from_vars(vars(&[("PATH", "/bin")])).expect("defaults");
        assert_eq!(settings.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(settings.kafka.topics, Topics::default());
        assert_eq!(settings.smtp.port, 1025);
        assert_eq!(settings.smtp.tls, SmtpTls::None);
    }

    #[test]
    fn an_unknown_setting_stops_start_up() {
        let err = Settings::from_vars(vars(&[("TANTO_SMTP_PROT", "25")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("TANTO_SMTP_PROT is not a tanto setting"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = Settings::from_vars(vars(&[("TANTO_SMTP_PORT", "smtp")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("TANTO_SMTP_PORT has an invalid value 'smtp'"),
            "{err}"
        );
        let err = Settings::from_vars(vars(&[("TANTO_SMTP_TLS", "maybe")])).unwrap_err();
        assert!(
            format!("{err:#}").contains("expected none, starttls or tls"),
            "{err:#}"
        );
    }

    #[test]
    fn credentials_without_tls_are_refused() {
        let err = Settings::from_vars(vars(&[
            ("TANTO_SMTP_USERNAME", "relay"),
            ("TANTO_SMTP_PASSWORD", "hunter2"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("credentials need TLS"), "{err}");
        assert!(!format!("{err:#}").contains("hunter2"));
    }

    #[test]
    fn secrets_and_urls_do_not_print_their_password() {
        let settings = Settings::from_vars(vars(&[(
            "TANTO_DATABASE_URL",
            "postgres://tanto:hunter2@db:5432/tanto",
        )]))
        .expect("settings");
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(
            redact_url(settings.database.url.expose()),
            "postgres://tanto:***@db:5432/tanto"
        );
        assert_eq!(redact_url("postgres://db/tanto"), "postgres://db/tanto");
    }
}
