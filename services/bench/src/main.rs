//! `tanto-bench`: measures tanto on the local stack against physical
//! baselines measured in the same run, alternating, and writes the figures
//! as a markdown table (docs/benchmarks.md). Run it with `make bench`.

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
const RSS_TARGET_BYTES: u64 = 64 * 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payload_size = delivery_size(&args)?;
    let mut report = Report::new(&args);

    let (ceilings, notifiers) = notifier_rounds(&args, payload_size).await?;
    report.notifier(args.events, &ceilings, &notifiers);
    let (small, large, rows) = routing_sizes(&args).await?;
    report.routing(&small, &large, rows);

    std::fs::write(&args.out, report.finish())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
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
            "Each figure is the median of {} runs of {} events; baseline and tanto runs alternate, on the same broker, database and build (release).\n",
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
