//! Every metric tanto exports, named once, here (docs/metrics.md lists them).
//!
//! Names follow Prometheus conventions: a `tanto_` prefix, base units
//! (seconds), `_total` for counters. Labels are of low cardinality: a topic,
//! an event type, a management number, a recipient class, an error class,
//! never an address or an id.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::catalog::Catalog;
use crate::event::{EventType, Family, RejectReason};

/// Buckets for in-process steps (routing, rendering, queries, SMTP sends).
const STEP_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets for the time from an event to the SMTP server's acceptance,
/// which includes retries.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events read by a notifier, by topic, event type and outcome.
    pub events_consumed: IntCounterVec,
    /// Deliveries produced, by management number and recipient class; a
    /// delivery reached through two classes counts once under each.
    pub deliveries_produced: IntCounterVec,
    /// Recipient classes of a mail that resolved to nobody.
    pub empty_classes: IntCounterVec,
    /// Customers and products an event named that the routing data lacks.
    pub unknown_references: IntCounterVec,
    pub routing_duration: Histogram,
    pub db_query_duration: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub watchdog_restarts: IntCounterVec,
    pub dead_letters_waiting: IntGaugeVec,
    pub mails_sent: IntCounterVec,
    pub mails_retried: IntCounterVec,
    pub mails_dead_lettered: IntCounterVec,
    pub mails_unknown: IntCounterVec,
    pub deliveries_skipped: IntCounter,
    pub event_to_smtp_duration: Histogram,
    pub smtp_send_duration: Histogram,
    pub render_duration: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        register_process_metrics(&registry);
        Self {
            events_consumed: counter_vec(
                &registry,
                "tanto_events_consumed_total",
                "Events read by a notifier, by outcome (routed, or dead-lettered and why).",
                &["topic", "event_type", "outcome", "reason"],
            ),
            deliveries_produced: counter_vec(
                &registry,
                "tanto_deliveries_produced_total",
                "Delivery messages produced, by management number and recipient class.",
                &["mail", "class"],
            ),
            empty_classes: counter_vec(
                &registry,
                "tanto_recipient_classes_empty_total",
                "Recipient classes of a mail that resolved to nobody.",
                &["mail", "class"],
            ),
            unknown_references: counter_vec(
                &registry,
                "tanto_unknown_references_total",
                "Customers and products named by an event but absent from the routing data.",
                &["kind"],
            ),
            routing_duration: histogram(
                &registry,
                "tanto_routing_duration_seconds",
                "Time to resolve one event's deliveries from the routing data.",
                STEP_BUCKETS,
            ),
            db_query_duration: histogram_vec(
                &registry,
                "tanto_db_query_duration_seconds",
                "Postgres query time, by query name.",
                &["query"],
                STEP_BUCKETS,
            ),
            consumer_lag: gauge_vec(
                &registry,
                "tanto_consumer_lag",
                "Messages waiting in an assigned partition, from librdkafka's statistics.",
                &["topic", "partition"],
            ),
            watchdog_restarts: counter_vec(
                &registry,
                "tanto_watchdog_restarts_total",
                "Consumers replaced because they made no progress while messages waited.",
                &["topic"],
            ),
            dead_letters_waiting: gauge_vec(
                &registry,
                "tanto_dead_letters_waiting",
                "Dead letters an operator has not replayed yet, by kind (events, deliveries).",
                &["kind"],
            ),
            mails_sent: counter_vec(
                &registry,
                "tanto_mails_sent_total",
                "Mails the SMTP server accepted, by management number.",
                &["mail"],
            ),
            mails_retried: counter_vec(
                &registry,
                "tanto_mails_retried_total",
                "Mails scheduled for another attempt, by management number and retry tier.",
                &["mail", "tier"],
            ),
            mails_dead_lettered: counter_vec(
                &registry,
                "tanto_mails_dead_lettered_total",
                "Mails given up on, by management number and error class.",
                &["mail", "error_class"],
            ),
            mails_unknown: counter_vec(
                &registry,
                "tanto_mails_unknown_total",
                "Sends whose outcome is unknown (the mailer died mid-send), by management number.",
                &["mail"],
            ),
            deliveries_skipped: counter(
                &registry,
                "tanto_deliveries_skipped_total",
                "Deliveries that arrived again after they were sent, and were not sent twice.",
            ),
            event_to_smtp_duration: histogram(
                &registry,
                "tanto_event_to_smtp_seconds",
                "Time from an event's occurred_at to the SMTP server's acceptance of its mail.",
                LATENCY_BUCKETS,
            ),
            smtp_send_duration: histogram(
                &registry,
                "tanto_smtp_send_duration_seconds",
                "Time to send one mail over SMTP.",
                STEP_BUCKETS,
            ),
            render_duration: histogram(
                &registry,
                "tanto_render_duration_seconds",
                "Time to render one mail's subject, text and HTML.",
                STEP_BUCKETS,
            ),
            registry,
        }
    }

    /// Creates, at zero, the series a notifier of `topic` can produce, so
    /// that dashboards and `rate()` see them before the first increment.
    pub fn init_notifier(&self, topic: &str, catalog: &Catalog, family: Family) {
        for event_type in EventType::ALL.into_iter().filter(|t| t.family() == family) {
            let labels = [topic, event_type.as_str(), "routed", "none"];
            self.events_consumed.with_label_values(&labels).reset();
        }
        for reason in RejectReason::ALL {
            let labels = [topic, "unknown", "dead_lettered", reason.as_str()];
            self.events_consumed.with_label_values(&labels).reset();
        }
        for mail in catalog
            .mails()
            .iter()
            .filter(|m| m.event_type.family() == family)
        {
            for class in &mail.recipients {
                self.deliveries_produced
                    .with_label_values(&[&mail.number, class.as_str()])
                    .reset();
                self.empty_classes
                    .with_label_values(&[&mail.number, class.as_str()])
                    .reset();
            }
        }
        for kind in ["customer", "product"] {
            self.unknown_references.with_label_values(&[kind]).reset();
        }
        self.watchdog_restarts.with_label_values(&[topic]).reset();
        self.dead_letters_waiting
            .with_label_values(&["events"])
            .set(0);
        for query in ["routing_view", "record_routed_event"] {
            let _ = self.db_query_duration.with_label_values(&[query]);
        }
    }

    /// Creates, at zero, the series the mailer can produce.
    pub fn init_mailer(
        &self,
        topic: &str,
        catalog: &Catalog,
        error_classes: &[&str],
        tiers: usize,
    ) {
        for mail in catalog.mails() {
            let number = mail.number.as_str();
            self.mails_sent.with_label_values(&[number]).reset();
            self.mails_unknown.with_label_values(&[number]).reset();
            for tier in 1..=tiers {
                self.mails_retried
                    .with_label_values(&[number, &tier.to_string()])
                    .reset();
            }
            for class in error_classes {
                self.mails_dead_lettered
                    .with_label_values(&[number, class])
                    .reset();
            }
        }
        self.watchdog_restarts.with_label_values(&[topic]).reset();
        self.dead_letters_waiting
            .with_label_values(&["deliveries"])
            .set(0);
        for query in [
            "ledger_entry",
            "ledger_begin_attempt",
            "ledger_record_sent",
            "ledger_record_failure",
        ] {
            let _ = self.db_query_duration.with_label_values(&[query]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// Times a step into `histogram` and returns its result.
pub async fn timed<T>(histogram: &Histogram, step: impl Future<Output = T>) -> T {
    let timer = histogram.start_timer();
    let result = step.await;
    timer.observe_duration();
    result
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("every metric name is registered once");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

/// CPU time, resident memory and open files of this process
/// (`process_*`), for the benchmarks and for capacity planning.
fn register_process_metrics(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    registry
        .register(Box::new(collector))
        .expect("registered once");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_by_the_conventions() {
        let metrics = Metrics::new();
        metrics
            .events_consumed
            .with_label_values(&["t", "order.applied", "routed", "none"])
            .inc();
        let text = metrics.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE tanto_")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
                _ => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
        assert!(text.contains("tanto_events_consumed_total{event_type=\"order.applied\""));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
