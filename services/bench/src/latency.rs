//! End-to-end latency at a fixed offered load: an open-loop generator
//! publishes events on a schedule, the notifier and the mailer run as in
//! production, and a timing SMTP sink in this process notes when each mail
//! is accepted. A mail's latency runs from its event's scheduled publish
//! time (not the actual one, so a stalled publisher cannot hide a stall) to
//! the sink's acceptance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::notifier::free_port;
use crate::setup::{self, BROKERS, BenchEnv};

#[derive(Debug, Clone)]
pub struct Latencies {
    pub offered_events_per_second: f64,
    pub mails: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

/// Accept times by Message-ID, noted by the timing sink.
type Accepted = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the pipeline at `rate` events per second for `seconds`.
pub async fn measure(env: &BenchEnv, rate: f64, seconds: u64) -> anyhow::Result<Latencies> {
    let accepted: Accepted = Arc::default();
    let sink_port = serve_sink(accepted.clone()).await?;
    let notifier = env.spawn(
        "order-notifier",
        &[("TANTO_HTTP_ADDR", format!("127.0.0.1:{}", free_port()?))],
    )?;
    let mailer = env.spawn(
        "mailer",
        &[
            ("TANTO_HTTP_ADDR", format!("127.0.0.1:{}", free_port()?)),
            ("TANTO_SMTP_PORT", sink_port.to_string()),
        ],
    )?;
    // Group joins take a few seconds; the load starts after them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let scheduled = offer_load(env, rate, seconds).await?;
    let expected = scheduled.len();
    wait_for(&accepted, expected, Duration::from_secs(seconds + 120)).await?;
    notifier.stop()?;
    mailer.stop()?;
    let mut latencies: Vec<Duration> = {
        let accepted = accepted.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        scheduled
            .iter()
            .filter_map(|(id, at)| Some(accepted.get(id)?.saturating_duration_since(*at)))
            .collect()
    };
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Latencies {
        offered_events_per_second: rate,
        mails: latencies.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    })
}

/// Publishes events on a fixed schedule; returns the Message-ID each mail
/// will carry with its event's scheduled time.
async fn offer_load(
    env: &BenchEnv,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()?;
    let count = (rate * seconds as f64) as usize;
    let events = setup::events(count);
    let start = Instant::now();
    let mut scheduled = Vec::with_capacity(count * 6);
    let mut sends = Vec::with_capacity(count);
    for (i, (key, payload)) in events.iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let event: serde_json::Value = serde_json::from_str(payload)?;
        let event_id = event["event_id"].as_str().unwrap_or_default().to_string();
        for id in setup::delivery_ids(&event_id) {
            scheduled.push((format!("<{id}@tanto>"), at));
        }
        let record = FutureRecord::to(&env.topics.orders)
            .key(key)
            .payload(payload);
        sends.push(producer.send_result(record).map_err(|(err, _)| err)?);
    }
    for sent in sends {
        sent.await?.map_err(|(err, _)| err)?;
    }
    Ok(scheduled)
}

async fn wait_for(accepted: &Accepted, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = accepted.lock().map(|a| a.len()).unwrap_or(0);
        if seen >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink accepted {seen} of {count} mails"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal SMTP server that accepts everything and notes, per
/// Message-ID, when it accepted the mail.
async fn serve_sink(accepted: Accepted) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(session(stream, accepted.clone()));
        }
    });
    Ok(port)
}

async fn session(stream: tokio::net::TcpStream, accepted: Accepted) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 bench ESMTP\r\n").await?;
    let mut message_id = None;
    let mut in_data = false;
    while let Some(line) = lines.next_line().await? {
        if in_data {
            if line == "." {
                in_data = false;
                if let (Some(id), Ok(mut accepted)) = (message_id.take(), accepted.lock()) {
                    accepted.insert(id, Instant::now());
                }
                write.write_all(b"250 2.0.0 queued\r\n").await?;
            } else if let Some(value) = header_value(&line, "message-id") {
                message_id = Some(value);
            }
            continue;
        }
        let command = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match command.as_str() {
            "EHLO" => b"250-bench\r\n250 8BITMIME\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 ok\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

fn header_value(line: &str, name: &str) -> Option<String> {
    let (key, value) = line.split_once(':')?;
    key.eq_ignore_ascii_case(name)
        .then(|| value.trim().to_string())
}
