//! tanto: staff and customer notification mails for subscription commerce.
//!
//! Transaction events arrive on Kafka; the notifiers ([`notifier`]) resolve
//! who is in charge from the routing data in Postgres ([`routing`]) and write
//! one delivery message per recipient address ([`delivery`]); the mailer
//! ([`mailer`]) renders ([`render`]) and sends ([`smtp`]) each one, retries
//! what failed for now through retry tiers ([`retry`]), and keeps the ledger
//! and send history ([`ledger`]). The binaries are thin wrappers around
//! [`app`] and [`cli`].

pub mod app;
pub mod audit;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letters;
pub mod delivery;
pub mod event;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod mailer;
pub mod metrics;
pub mod notifier;
pub mod preview;
pub mod render;
pub mod replay;
pub mod retry;
pub mod routing;
pub mod shutdown;
pub mod smtp;
pub mod telemetry;
pub mod templates;

/// An error with its causes on one line, `outer: inner: innermost`, for
/// errors of libraries that keep the useful part in their sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
