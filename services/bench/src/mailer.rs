//! The mailer against its ceiling: Postfix's `smtp-sink` takes the mail,
//! and `smtp-source` sending into the same sink over the same number of
//! reused connections is what the sink can take. A bare lettre loop at the
//! same concurrency is a second reference.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tanto::delivery::DeliveryMessage;

use crate::notifier::free_port;
use crate::setup::{BROKERS, BenchEnv, Scrape, Usage};

/// Sends happen over this many connections in every measurement.
pub const CONNECTIONS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub mails_per_second: f64,
    pub usage: Usage,
    /// Where the mailer's send slots spent their time (tanto only).
    pub breakdown: Breakdown,
}

/// The mailer's slot time (wall time times connections) and the parts of
/// it its histograms measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakdown {
    pub slot_time: Duration,
    pub rendering: Duration,
    pub smtp: Duration,
    pub ledger: Duration,
}

/// A running `smtp-sink` on a port of its own.
pub struct Sink {
    child: std::process::Child,
    pub port: u16,
}

impl Sink {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("smtp-sink")
            .args(["-u", "root", &format!("127.0.0.1:{port}"), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start smtp-sink (make bench installs Postfix)")?;
        wait_for_port(port)?;
        Ok(Self { child, port })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `smtp-source` over [`CONNECTIONS`] reused connections: the ceiling.
pub fn ceiling(sink: &Sink, mails: usize, size: usize) -> anyhow::Result<Run> {
    let started = Instant::now();
    let status = Command::new("smtp-source")
        .args([
            "-d",
            "-s",
            &CONNECTIONS.to_string(),
            "-m",
            &mails.to_string(),
        ])
        .args([
            "-l",
            &size.to_string(),
            "-f",
            "bench@bench.example",
            "-t",
            "sink@bench.example",
        ])
        .arg(format!("127.0.0.1:{}", sink.port))
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "smtp-source failed");
    Ok(Run {
        mails_per_second: mails as f64 / started.elapsed().as_secs_f64(),
        usage: Usage::default(),
        breakdown: Breakdown::default(),
    })
}

/// lettre's pooled transport, [`CONNECTIONS`] sends at a time, nothing else.
pub async fn bare_lettre(sink: &Sink, mails: usize, size: usize) -> anyhow::Result<Run> {
    let pool = PoolConfig::new().max_size(CONNECTIONS as u32);
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port)
        .pool_config(pool)
        .build();
    let message = Message::builder()
        .from("bench@bench.example".parse()?)
        .to("sink@bench.example".parse()?)
        .subject("bench")
        .header(ContentType::TEXT_PLAIN)
        .body("x".repeat(size))?;
    let (transport, message) = (Arc::new(transport), Arc::new(message));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..CONNECTIONS).map(|_| {
        let (transport, message, next) = (transport.clone(), message.clone(), next.clone());
        tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < mails {
                transport.send((*message).clone()).await?;
            }
            anyhow::Ok(())
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(Run {
        mails_per_second: mails as f64 / started.elapsed().as_secs_f64(),
        usage: Usage::default(),
        breakdown: Breakdown::default(),
    })
}

/// The real mailer (release build) over `mails` deliveries published to
/// its topic, sending into the sink over [`CONNECTIONS`] connections.
pub async fn mailer(env: &BenchEnv, sink: &Sink, mails: usize) -> anyhow::Result<Run> {
    publish_deliveries(env, mails).await?;
    let port = free_port()?;
    let process = env.spawn(
        "mailer",
        &[
            ("TANTO_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("TANTO_SMTP_PORT", sink.port.to_string()),
            ("TANTO_SMTP_CONNECTIONS", CONNECTIONS.to_string()),
        ],
    )?;
    let elapsed = time_sent(port, mails as f64).await?;
    let scrape = Scrape::of(port).await?;
    let usage = process.stop()?;
    let seconds = |series: &str| Duration::from_secs_f64(scrape.sum(series));
    let breakdown = Breakdown {
        slot_time: elapsed * CONNECTIONS as u32,
        rendering: seconds("tanto_render_duration_seconds_sum"),
        smtp: seconds("tanto_smtp_send_duration_seconds_sum"),
        ledger: seconds("tanto_db_query_duration_seconds_sum{query=\"ledger_"),
    };
    Ok(Run {
        mails_per_second: mails as f64 / elapsed.as_secs_f64(),
        usage,
        breakdown,
    })
}

/// Deliveries of the bench tenant's staff mail, each with its own id.
async fn publish_deliveries(env: &BenchEnv, mails: usize) -> anyhow::Result<()> {
    let example = std::fs::read(env.repo.join("schemas/examples/delivery.json"))?;
    let template = DeliveryMessage::from_json(&example)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "10")
        .create()?;
    let payloads: Vec<(String, Vec<u8>)> = (0..mails)
        .map(|i| {
            let mut delivery = template.clone();
            delivery.delivery_id = uuid::Uuid::new_v4();
            delivery.recipient.address = format!("staff{i}@bench.example");
            (delivery.delivery_id.to_string(), delivery.to_json())
        })
        .collect();
    for chunk in payloads.chunks(10_000) {
        let sends = chunk.iter().map(|(key, payload)| {
            let record = FutureRecord::to(&env.topics.deliveries)
                .key(key)
                .payload(payload);
            producer.send(record, Duration::from_secs(30))
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(err, _)| err)?;
        }
    }
    Ok(())
}

/// Times the mailer's sent counter from its first mail to `target`.
async fn time_sent(port: u16, target: f64) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + TIMEOUT;
    let mut first = None;
    loop {
        let sent = sent_count(port).await.unwrap_or(0.0);
        if sent > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        if sent >= target {
            return Ok(first.map(|t| t.elapsed()).unwrap_or_default());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mailer sent {sent} of {target} in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn sent_count(port: u16) -> anyhow::Result<f64> {
    Ok(Scrape::of(port).await?.sum("tanto_mails_sent_total{"))
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
