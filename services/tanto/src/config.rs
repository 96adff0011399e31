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
    "TANTO_TOPIC_DELIVERIES_RETRY_PREFIX",
    "TANTO_TOPIC_PARTITIONS",
    "TANTO_CONSUMER_GROUP",
    "TANTO_SMTP_HOST",
    "TANTO_SMTP_PORT",
    "TANTO_SMTP_TLS",
    "TANTO_SMTP_USERNAME",
    "TANTO_SMTP_PASSWORD",
    "TANTO_SMTP_TIMEOUT_SECS",
    "TANTO_SMTP_CONNECTIONS",
    "TANTO_SMTP_RATE_PER_SEC",
    "TANTO_RETRY_DELAYS_SECS",
    "TANTO_UNKNOWN_OUTCOME",
    "TANTO_HISTORY_RETENTION_DAYS",
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
    pub mailer: MailerSettings,
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
    /// The retry tiers of the mailer, first to last: one topic per delay of
    /// `TANTO_RETRY_DELAYS_SECS`, named `<prefix>.1`, `<prefix>.2`, ...
    pub deliveries_retry: Vec<String>,
}

impl Topics {
    pub fn all(&self) -> Vec<&str> {
        let fixed = [
            &self.orders,
            &self.contracts,
            &self.quotes,
            &self.deliveries,
            &self.events_dlq,
            &self.deliveries_dlq,
        ];
        fixed
            .into_iter()
            .chain(&self.deliveries_retry)
            .map(String::as_str)
            .collect()
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
            deliveries_retry: defaults.deliveries_retry.iter().map(|t| name(t)).collect(),
        }
    }
}

/// The retry tier topics under `prefix`, one per delay.
pub fn retry_topics(prefix: &str, tiers: usize) -> Vec<String> {
    (1..=tiers).map(|tier| format!("{prefix}.{tier}")).collect()
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
            deliveries_retry: retry_topics(DEFAULT_RETRY_PREFIX, DEFAULT_RETRY_DELAYS_SECS.len()),
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
    /// At most this many mails per second leave for the relay, when set, so
    /// that a relay's quota paces the mailer instead of failing its mails.
    pub rate_per_sec: Option<f64>,
}

/// How the mailer retries, and how long it keeps what it sent.
#[derive(Debug, Clone, PartialEq)]
pub struct MailerSettings {
    /// The wait before each retry tier, first to last. A delivery is tried
    /// once, then once per tier, then dead-lettered.
    pub retry_delays: Vec<Duration>,
    pub unknown_outcome: UnknownOutcome,
    /// Ledger and history rows in a final state are deleted this long after
    /// their last change. The ledger is what stops a delivery from being
    /// sent twice, so this is also the window of that guarantee.
    pub history_retention: Duration,
}

/// What the mailer does with a send whose outcome it cannot know (the
/// process died, or the connection dropped, after the message data was
/// written and before the server answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOutcome {
    /// Send it again: a repeated notice costs less than a missed one.
    Resend,
    /// Set it aside on the dead-letter topic for an operator to decide.
    Hold,
}

impl FromStr for UnknownOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resend" => Ok(Self::Resend),
            "hold" => Ok(Self::Hold),
            other => Err(format!("expected resend or hold, got '{other}'")),
        }
    }
}

const DEFAULT_RETRY_PREFIX: &str = "tanto.deliveries.retry";
/// Half a minute rides out a relay's brief hiccup, five minutes a restart,
/// half an hour a short outage; what lasts longer needs an operator anyway.
const DEFAULT_RETRY_DELAYS_SECS: [u64; 3] = [30, 300, 1800];

/// A comma-separated list of whole seconds, each at least 1.
#[derive(Debug)]
struct Delays(Vec<Duration>);

impl FromStr for Delays {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let delays = s
            .split(',')
            .map(|part| match part.trim().parse::<u64>() {
                Ok(secs) if secs >= 1 => Ok(Duration::from_secs(secs)),
                _ => Err(format!(
                    "expected whole seconds of at least 1, separated by commas, got '{part}'"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(delays))
    }
}

/// A number of mails per second greater than zero.
#[derive(Debug)]
struct Rate(f64);

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Self(rate)),
            _ => Err(format!(
                "expected a number of mails per second above 0, got '{s}'"
            )),
        }
    }
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
        let retry_delays = match vars.optional_parsed::<Delays>("TANTO_RETRY_DELAYS_SECS")? {
            Some(delays) => delays.0,
            None => DEFAULT_RETRY_DELAYS_SECS.map(Duration::from_secs).to_vec(),
        };
        let retry_prefix = vars.string("TANTO_TOPIC_DELIVERIES_RETRY_PREFIX", DEFAULT_RETRY_PREFIX);
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
                    deliveries_retry: retry_topics(&retry_prefix, retry_delays.len()),
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
                rate_per_sec: vars
                    .optional_parsed::<Rate>("TANTO_SMTP_RATE_PER_SEC")?
                    .map(|rate| rate.0),
            },
            mailer: MailerSettings {
                retry_delays,
                unknown_outcome: vars.parsed("TANTO_UNKNOWN_OUTCOME", UnknownOutcome::Resend)?,
                history_retention: Duration::from_secs(
                    vars.parsed::<u64>("TANTO_HISTORY_RETENTION_DAYS", 90)?
                        .saturating_mul(24 * 60 * 60),
                ),
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
        let schedule: Duration = self.mailer.retry_delays.iter().sum();
        if self.mailer.history_retention <= schedule {
            bail!(
                "TANTO_HISTORY_RETENTION_DAYS must be longer than the whole retry schedule \
                 of TANTO_RETRY_DELAYS_SECS ({} s): a delivery still being retried must keep \
                 its ledger row",
                schedule.as_secs()
            );
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

    fn optional_parsed<T>(&self, key: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.optional(key)
            .map(|raw| {
                raw.parse()
                    .map_err(|err| anyhow::anyhow!("{err}"))
                    .with_context(|| format!("{key} has an invalid value '{raw}'"))
            })
            .transpose()
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
        assert_eq!(settings.smtp.rate_per_sec, None);
    }

    #[test]
    fn the_default_retry_schedule_has_three_tiers_each_with_its_topic() {
        let settings = Settings::from_vars(vars(&[])).expect("defaults");
        let secs: Vec<u64> = settings
            .mailer
            .retry_delays
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [30, 300, 1800]);
        assert_eq!(
            settings.kafka.topics.deliveries_retry,
            [
                "tanto.deliveries.retry.1",
                "tanto.deliveries.retry.2",
                "tanto.deliveries.retry.3"
            ]
        );
        assert!(
            settings
                .kafka
                .topics
                .all()
                .contains(&"tanto.deliveries.retry.3")
        );
        assert_eq!(settings.mailer.unknown_outcome, UnknownOutcome::Resend);
        assert_eq!(
            settings.mailer.history_retention,
            Duration::from_secs(90 * 24 * 60 * 60)
        );
    }

    #[test]
    fn the_retry_tiers_follow_the_configured_delays_and_prefix() {
        let settings = Settings::from_vars(vars(&[
            ("TANTO_RETRY_DELAYS_SECS", "1, 2"),
            ("TANTO_TOPIC_DELIVERIES_RETRY_PREFIX", "t.retry"),
            ("TANTO_UNKNOWN_OUTCOME", "hold"),
            ("TANTO_SMTP_RATE_PER_SEC", "2.5"),
        ]))
        .expect("settings");
        assert_eq!(
            settings.mailer.retry_delays,
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(
            settings.kafka.topics.deliveries_retry,
            ["t.retry.1", "t.retry.2"]
        );
        assert_eq!(settings.mailer.unknown_outcome, UnknownOutcome::Hold);
        assert_eq!(settings.smtp.rate_per_sec, Some(2.5));
    }

    #[test]
    fn bad_mailer_settings_name_their_variable() {
        for (key, value, expected) in [
            (
                "TANTO_RETRY_DELAYS_SECS",
                "30,,60",
                "whole seconds of at least 1",
            ),
            (
                "TANTO_RETRY_DELAYS_SECS",
                "0",
                "whole seconds of at least 1",
            ),
            ("TANTO_UNKNOWN_OUTCOME", "maybe", "expected resend or hold"),
            ("TANTO_SMTP_RATE_PER_SEC", "0", "mails per second above 0"),
            ("TANTO_HISTORY_RETENTION_DAYS", "-1", "invalid digit"),
        ] {
            let err = Settings::from_vars(vars(&[(key, value)])).unwrap_err();
            let message = format!("{err:#}");
            assert!(
                message.starts_with(&format!("{key} has an invalid value")),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn a_retention_shorter_than_the_retry_schedule_is_refused() {
        let err = Settings::from_vars(vars(&[
            ("TANTO_HISTORY_RETENTION_DAYS", "1"),
            ("TANTO_RETRY_DELAYS_SECS", "86400,3600"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("TANTO_HISTORY_RETENTION_DAYS must be longer than the whole retry"),
            "{err}"
        );
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
