//! `tanto-bench`: measures tanto on the local stack against physical
//! baselines measured in the same run, alternating, and writes the figures
//! as a markdown table (docs/benchmarks.md). Run it with `make bench`.

mod latency;
mod mailer;
mod notifier;
mod routing;
mod setup;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use setup::BenchEnv;

#[derive(Debug, Parser)]
#[command(about = "Benchmark tanto against its baselines on the local stack")]
struct Args {
    /// Events per measured run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// How many times each pair (baseline, tanto) is measured, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the markdown report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The repository root (binaries in target/release, catalog in deploy/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

/// The notifier's target: this share of the bare loop's rate.
const NOTIFIER_TARGET: f64 = 0.85;
/// Routing time with a million rows may be at most this many times the
/// time with a hundred.
const ROUTING_FLATNESS_TARGET: f64 = 1.2;
/// The mailer's target: this share of the sink's ceiling.
const MAILER_TARGET: f64 = 0.5;
const RSS_TARGET_BYTES: u64 = 64 * 1024 * 1024;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payload_size = delivery_size(&args)?;
    let mut report = Report::new(&args);

    let (ceilings, notifiers) = notifier_rounds(&args, payload_size).await?;
    report.notifier(args.events, &ceilings, &notifiers);
    let (small, large, rows) = routing_sizes(&args).await?;
    report.routing(&small, &large, rows);
    let mailers = mailer_rounds(&args).await?;
    report.mailer(args.events, &mailers);
    let notifier_rate = median(notifiers.iter().map(|r| r.events_per_second).collect());
    let mailer_rate = median(mailers.tanto.iter().map(|r| r.mails_per_second).collect());
    let rate = notifier_rate.min(mailer_rate / setup::DELIVERIES_PER_EVENT as f64) / 2.0;
    eprintln!("latency at {rate:.0} events per second");
    let env = BenchEnv::new(&args.repo, 3).await?;
    let latencies = latency::measure(&env, rate, 20).await?;
    setup::cleanup(&env).await?;
    report.latency(&latencies);

    let analysis = kept_analysis(&args.out);
    std::fs::write(&args.out, report.finish() + &analysis)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The hand-written analysis below [`ANALYSIS_MARKER`] in the existing
/// report survives a new run; the figures above it are replaced.
const ANALYSIS_MARKER: &str = "<!-- analysis: kept by make bench -->";

fn kept_analysis(path: &std::path::Path) -> String {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    match existing.find(ANALYSIS_MARKER) {
        Some(at) => existing[at..].to_string(),
        None => format!("{ANALYSIS_MARKER}\n"),
    }
}

/// The size of a real delivery message, for the bare loop's payloads.
fn delivery_size(args: &Args) -> anyhow::Result<usize> {
    let example = std::fs::read(args.repo.join("schemas/examples/delivery.json"))?;
    let value: serde_json::Value = serde_json::from_slice(&example)?;
    Ok(value.to_string().len())
}

async fn notifier_rounds(
    args: &Args,
    size: usize,
) -> anyhow::Result<(Vec<notifier::Run>, Vec<notifier::Run>)> {
    let (mut ceilings, mut notifiers) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!("notifier round {round}/{}", args.rounds);
        let env = BenchEnv::new(&args.repo, 3).await?;
        ceilings.push(notifier::ceiling(&env, args.events, size).await?);
        setup::cleanup(&env).await?;
        let env = BenchEnv::new(&args.repo, 3).await?;
        notifiers.push(notifier::notifier(&env, args.events).await?);
        setup::cleanup(&env).await?;
    }
    Ok((ceilings, notifiers))
}

/// The three mail senders, alternating, each into a fresh `smtp-sink`.
struct MailerRuns {
    ceiling: Vec<mailer::Run>,
    lettre: Vec<mailer::Run>,
    tanto: Vec<mailer::Run>,
}

async fn mailer_rounds(args: &Args) -> anyhow::Result<MailerRuns> {
    let mails = args.events;
    let size = delivery_size(args)? * 3;
    let mut runs = MailerRuns {
        ceiling: Vec::new(),
        lettre: Vec::new(),
        tanto: Vec::new(),
    };
    for round in 1..=args.rounds {
        eprintln!("mailer round {round}/{}", args.rounds);
        let sink = mailer::Sink::start()?;
        runs.ceiling.push(tokio::task::block_in_place(|| {
            mailer::ceiling(&sink, mails, size)
        })?);
        let sink = mailer::Sink::start()?;
        runs.lettre
            .push(mailer::bare_lettre(&sink, mails.min(2_000), size).await?);
        let sink = mailer::Sink::start()?;
        let env = BenchEnv::new(&args.repo, 3).await?;
        runs.tanto.push(mailer::mailer(&env, &sink, mails).await?);
        setup::cleanup(&env).await?;
    }
    Ok(runs)
}

/// Routing time with the bench's own ~100 rows, then with a million more.
async fn routing_sizes(
    args: &Args,
) -> anyhow::Result<(Vec<notifier::Run>, Vec<notifier::Run>, u64)> {
    let events = args.events.min(5_000);
    let (mut small, mut large) = (Vec::new(), Vec::new());
    let mut rows = 0;
    for round in 1..=args.rounds {
        eprintln!("routing round {round}/{}", args.rounds);
        let env = BenchEnv::new(&args.repo, 3).await?;
        small.push(notifier::notifier(&env, events).await?);
        setup::cleanup(&env).await?;
        let env = BenchEnv::new(&args.repo, 3).await?;
        rows = routing::grow_to_a_million_rows(&env).await?;
        large.push(notifier::notifier(&env, events).await?);
        setup::cleanup(&env).await?;
    }
    Ok((small, large, rows))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The markdown report.
struct Report {
    text: String,
}

impl Report {
    fn new(args: &Args) -> Self {
        let mut text = String::from("# Benchmarks\n\n");
        let _ = writeln!(
            text,
            "Written by `make bench` (services/bench) on {}.",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(text, "Machine: {}.", machine());
        let _ = writeln!(
            text,
            "Each figure is the median of {} runs of {} events; baseline and tanto runs \
             alternate, on the same broker, database and build (release).\n",
            args.rounds, args.events
        );
        Self { text }
    }

    fn notifier(&mut self, events: usize, ceilings: &[notifier::Run], notifiers: &[notifier::Run]) {
        let ceiling = median(ceilings.iter().map(|r| r.events_per_second).collect());
        let tanto = median(notifiers.iter().map(|r| r.events_per_second).collect());
        let ratio = tanto / ceiling;
        let cpu_per_event = |runs: &[notifier::Run]| {
            median(runs.iter().map(|r| r.usage.cpu.as_secs_f64()).collect()) * 1e6 / events as f64
        };
        let rss = notifiers
            .iter()
            .map(|r| r.usage.peak_rss_bytes)
            .max()
            .unwrap_or(0);
        let _ = writeln!(self.text, "## Notifier throughput\n");
        let _ = writeln!(
            self.text,
            "| measure | tanto order-notifier | bare rdkafka loop (ceiling) | ratio | target | |"
        );
        let _ = writeln!(self.text, "|---|---|---|---|---|---|");
        let _ = writeln!(
            self.text,
            "| events per second | {tanto:.0} | {ceiling:.0} | {ratio:.2} | ≥ {NOTIFIER_TARGET} | {} |",
            verdict(ratio >= NOTIFIER_TARGET)
        );
        let _ = writeln!(
            self.text,
            "| CPU time per event | {:.0} µs | {:.0} µs | | | |",
            cpu_per_event(notifiers),
            cpu_per_event(ceilings),
        );
        let _ = writeln!(
            self.text,
            "| peak resident memory | {:.1} MiB | | | < 64 MiB | {} |",
            rss as f64 / 1048576.0,
            verdict(rss < RSS_TARGET_BYTES)
        );
        let raw: Vec<String> = notifiers
            .iter()
            .zip(ceilings)
            .map(|(n, c)| format!("{:.0} / {:.0}", n.events_per_second, c.events_per_second))
            .collect();
        let _ = writeln!(
            self.text,
            "\nRaw runs (tanto / ceiling, events per second): {}.\n",
            raw.join(", ")
        );
        let share = |part: fn(&notifier::Breakdown) -> std::time::Duration| {
            median(
                notifiers
                    .iter()
                    .map(|r| part(&r.breakdown).as_secs_f64() / r.breakdown.elapsed.as_secs_f64())
                    .collect(),
            )
        };
        let (routing, recording) = (share(|b| b.routing), share(|b| b.recording));
        let _ = writeln!(
            self.text,
            "Where the notifier's wall time goes, from its own histograms \
             (median share of the run):\n"
        );
        let _ = writeln!(
            self.text,
            "| routing (three queries per batch, and planning) \
             | recording routed events (one insert per batch) \
             | the rest: consuming, producing and waiting for Kafka's acknowledgements |"
        );
        let _ = writeln!(self.text, "|---|---|---|");
        let _ = writeln!(
            self.text,
            "| {:.0}% | {:.0}% | {:.0}% |\n",
            routing * 100.0,
            recording * 100.0,
            (1.0 - routing - recording) * 100.0
        );
    }

    fn routing(&mut self, small: &[notifier::Run], large: &[notifier::Run], rows: u64) {
        let micros = |runs: &[notifier::Run]| {
            median(
                runs.iter()
                    .map(|r| r.mean_routing.as_secs_f64() * 1e6)
                    .collect(),
            )
        };
        let (small_us, large_us) = (micros(small), micros(large));
        let ratio = large_us / small_us;
        let _ = writeln!(
            self.text,
            "## Routing time per event and the size of the routing data\n"
        );
        let _ = writeln!(
            self.text,
            "| routing data | mean routing time per event | ratio | target | |"
        );
        let _ = writeln!(self.text, "|---|---|---|---|---|");
        let _ = writeln!(
            self.text,
            "| the bench tenant alone (~20 rows) | {small_us:.0} µs | 1.00 | | |"
        );
        let _ = writeln!(
            self.text,
            "| plus 1,000 other tenants ({rows} rows) | {large_us:.0} µs | {ratio:.2} | ≤ {ROUTING_FLATNESS_TARGET} | {} |\n",
            verdict(ratio <= ROUTING_FLATNESS_TARGET)
        );
    }

    fn mailer(&mut self, mails: usize, runs: &MailerRuns) {
        let rate = |runs: &[mailer::Run]| median(runs.iter().map(|r| r.mails_per_second).collect());
        let (ceiling, lettre, tanto) = (rate(&runs.ceiling), rate(&runs.lettre), rate(&runs.tanto));
        let ratio = tanto / ceiling;
        let cpu = median(
            runs.tanto
                .iter()
                .map(|r| r.usage.cpu.as_secs_f64())
                .collect(),
        );
        let rss = runs
            .tanto
            .iter()
            .map(|r| r.usage.peak_rss_bytes)
            .max()
            .unwrap_or(0);
        let _ = writeln!(self.text, "## Mailer throughput into Postfix's smtp-sink\n");
        let _ = writeln!(
            self.text,
            "Every sender uses {} connections.\n",
            mailer::CONNECTIONS
        );
        let _ = writeln!(
            self.text,
            "| sender | mails per second | ratio to the sink's ceiling | target | |"
        );
        let _ = writeln!(self.text, "|---|---|---|---|---|");
        let _ = writeln!(
            self.text,
            "| smtp-source, reused connections (ceiling) | {ceiling:.0} | 1.00 | | |"
        );
        let _ = writeln!(
            self.text,
            "| bare lettre loop, pooled transport | {lettre:.0} | {:.2} | | |",
            lettre / ceiling
        );
        let _ = writeln!(
            self.text,
            "| tanto mailer (ledger, history, rendering) | {tanto:.0} | {ratio:.2} | ≥ 0.5 | {} |",
            verdict(ratio >= MAILER_TARGET)
        );
        let _ = writeln!(
            self.text,
            "\nMailer CPU time per mail: {:.0} µs; peak resident memory: {:.1} MiB ({}).\n",
            cpu * 1e6 / mails as f64,
            rss as f64 / 1048576.0,
            verdict(rss < RSS_TARGET_BYTES)
        );
        let raw = |runs: &[mailer::Run]| {
            runs.iter()
                .map(|r| format!("{:.0}", r.mails_per_second))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            self.text,
            "Raw runs: ceiling {}; lettre {}; tanto {}.\n",
            raw(&runs.ceiling),
            raw(&runs.lettre),
            raw(&runs.tanto)
        );
        // Per mail, summed over every handler: the statements and sends of
        // concurrent handlers overlap, so these add up to more than the wall
        // time a mail takes at this rate.
        let per_mail = |part: fn(&mailer::Breakdown) -> std::time::Duration| {
            median(
                runs.tanto
                    .iter()
                    .map(|r| part(&r.breakdown).as_secs_f64() * 1e3)
                    .collect(),
            ) / mails as f64
        };
        let slot = per_mail(|b| b.slot_time);
        let _ = writeln!(
            self.text,
            "\nWhere a mail's time goes, from the mailer's own histograms, per mail:\n"
        );
        let _ = writeln!(
            self.text,
            "| a send slot turns over (wall time × connections ÷ mails) | rendering \
             | the SMTP exchange | ledger statements (read, begin, record) |"
        );
        let _ = writeln!(self.text, "|---|---|---|---|");
        let _ = writeln!(
            self.text,
            "| {slot:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            per_mail(|b| b.rendering),
            per_mail(|b| b.smtp),
            per_mail(|b| b.ledger),
        );
    }

    fn latency(&mut self, latencies: &latency::Latencies) {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let _ = writeln!(
            self.text,
            "## End-to-end latency at half the measured maximum\n"
        );
        let _ = writeln!(
            self.text,
            "An open-loop generator offered {:.0} events per second for 20 s ({} mails); \
             latency runs from an event's scheduled publish time to the SMTP sink's \
             acceptance of each of its mails.\n",
            latencies.offered_events_per_second, latencies.mails
        );
        let _ = writeln!(self.text, "| p50 | p99 | p99.9 |");
        let _ = writeln!(self.text, "|---|---|---|");
        let _ = writeln!(
            self.text,
            "| {:.0} ms | {:.0} ms | {:.0} ms |\n",
            ms(latencies.p50),
            ms(latencies.p99),
            ms(latencies.p999)
        );
    }

    fn finish(self) -> String {
        self.text
    }
}

/// One line describing the machine: CPU model, cores and memory.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.0} GiB",
        mem_kib as f64 / 1048576.0
    )
}
