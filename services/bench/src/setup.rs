//! What every stage needs: a fresh database with routing data, fresh
//! topics, events to publish, the release binaries started as processes,
//! and their CPU time and peak memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tanto::config::{Settings, Topics};
use tanto::routing::{self, RoutingFile};

pub const BROKERS: &str = "127.0.0.1:9092";
const ADMIN_DATABASE_URL: &str = "postgres://tanto:tanto@127.0.0.1:5432/tanto";

/// A bench run's private database, topics and mail domain.
#[derive(Debug)]
pub struct BenchEnv {
    pub id: String,
    pub database_url: String,
    pub topics: Topics,
    pub repo: PathBuf,
}

impl BenchEnv {
    pub async fn new(repo: &Path, partitions: i32) -> anyhow::Result<Self> {
        let id = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let admin = connect(ADMIN_DATABASE_URL).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE tanto_{id}"))
            .await?;
        let topics = Topics::prefixed(&id);
        let env = Self {
            database_url: format!("{ADMIN_DATABASE_URL}_{id}"),
            id,
            topics,
            repo: repo.to_path_buf(),
        };
        let pool = tanto::db::pool(&env.settings()?.database)?;
        tanto::db::migrate(&pool).await?;
        tanto::kafka::ensure_topics(BROKERS, &env.topics.all(), partitions).await?;
        env.apply_routing(&pool).await?;
        Ok(env)
    }

    pub fn vars(&self) -> Vec<(String, String)> {
        let topics = &self.topics;
        [
            ("TANTO_KAFKA_BROKERS", BROKERS.to_string()),
            ("TANTO_DATABASE_URL", self.database_url.clone()),
            ("TANTO_TOPIC_ORDERS", topics.orders.clone()),
            ("TANTO_TOPIC_CONTRACTS", topics.contracts.clone()),
            ("TANTO_TOPIC_QUOTES", topics.quotes.clone()),
            ("TANTO_TOPIC_DELIVERIES", topics.deliveries.clone()),
            ("TANTO_TOPIC_EVENTS_DLQ", topics.events_dlq.clone()),
            ("TANTO_TOPIC_DELIVERIES_DLQ", topics.deliveries_dlq.clone()),
            ("TANTO_LOG", "warn".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        Settings::from_vars(self.vars())
    }

    /// The routing data of tenant `bench`: each order reaches two customer
    /// users and four staff, six deliveries per event.
    async fn apply_routing(&self, pool: &deadpool_postgres::Pool) -> anyhow::Result<()> {
        let catalog = tanto::catalog::Catalog::load(&self.repo.join("deploy/mail/catalog.yaml"))?;
        let routing = RoutingFile::parse(ROUTING)?.validate(&catalog)?;
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        routing::apply(&tx, &routing, false).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a release binary with this run's settings.
    pub fn spawn(&self, binary: &str, extra: &[(&str, String)]) -> anyhow::Result<Process> {
        let path = self.repo.join("target/release").join(binary);
        let mut command = Command::new(&path);
        command
            .current_dir(&self.repo)
            .envs(self.vars())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        Ok(Process { child })
    }
}

const ROUTING: &str = r#"
tenant: bench
store_name: BENCH
company_wide: [acc-ops]
accounts:
  - { id: acc-ops, email: ops@bench.example }
  - { id: acc-a, email: a@bench.example }
  - { id: acc-b, email: b@bench.example }
  - { id: acc-c, email: c@bench.example }
groups:
  - { id: products, members: [acc-a, acc-b] }
  - { id: customers, members: [acc-a, acc-c] }
products:
  - { id: P-1, name: Product, groups: [products] }
customers:
  - id: C-1
    name: Customer
    groups: [customers]
    admin: { email: admin@customer.example }
    invitees: [ { email: buyer@customer.example } ]
"#;

/// The deliveries one bench event produces with [`ROUTING`].
pub const DELIVERIES_PER_EVENT: i64 = 6;

/// The delivery ids of an `order.applied` event of tenant `bench`, as
/// [`ROUTING`] resolves it: 5-1-1 to the customer's two users, 5-1-2 to
/// the company-wide account and three staff.
pub fn delivery_ids(event_id: &str) -> Vec<uuid::Uuid> {
    let customer = ["admin@customer.example", "buyer@customer.example"].map(|to| ("5-1-1", to));
    let staff = [
        "ops@bench.example",
        "a@bench.example",
        "b@bench.example",
        "c@bench.example",
    ]
    .map(|to| ("5-1-2", to));
    customer
        .into_iter()
        .chain(staff)
        .map(|(number, to)| tanto::delivery::delivery_id("bench", event_id, number, to))
        .collect()
}

/// `count` order events of tenant `bench`, keyed by transaction.
pub fn events(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let event = serde_json::json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "event_type": "order.applied",
                "occurred_at": chrono::Utc::now().to_rfc3339(),
                "tenant_id": "bench",
                "customer_id": "C-1",
                "transaction": {
                    "id": format!("O-{i}"), "number": format!("ORD-{i:06}"),
                    "items": [{ "product_id": "P-1", "quantity": 1, "unit_price": "1000" }],
                    "total_amount": "1000", "currency": "JPY"
                }
            });
            (format!("O-{i}"), event.to_string())
        })
        .collect()
}

pub async fn publish(topic: &str, messages: &[(String, String)]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "10")
        .create()?;
    for chunk in messages.chunks(10_000) {
        let sends = chunk.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(err, _)| err)?;
        }
    }
    Ok(())
}

/// Times how fast `topic` grows to `target` messages: from the first
/// message seen to the last, so start-up and group joining do not count.
pub fn time_growth(topic: &str, target: i64, timeout: Duration) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()?;
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let size = tanto::kafka::topic_size(consumer.client(), topic)?;
        if size > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if size >= target {
            return Ok(first.map(|t| t.elapsed()).unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("{topic} reached {size} of {target} messages in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running binary of the bench.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

/// CPU time and peak resident memory of a process, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's usage so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage_of(self.pid())
    }

    /// Stops it with SIGTERM and returns its usage just before.
    pub fn stop(mut self) -> anyhow::Result<Usage> {
        let usage = self.usage()?;
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(usage)
    }
}

pub fn usage_of(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces; utime and stime are fields 14 and 15 of the whole line.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu: Duration::from_millis(ticks * 1000 / clock_ticks()),
        peak_rss_bytes: peak_kib * 1024,
    })
}

fn clock_ticks() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output();
    output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Drops the run's database and deletes its topics.
pub async fn cleanup(env: &BenchEnv) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()?;
    let all = env.topics.all();
    admin.delete_topics(&all, &AdminOptions::new()).await?;
    let db = connect(ADMIN_DATABASE_URL).await?;
    db.batch_execute(&format!("DROP DATABASE tanto_{} WITH (FORCE)", env.id))
        .await?;
    Ok(())
}

/// One scrape of a binary's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Scrape(String);

impl Scrape {
    pub async fn of(port: u16) -> anyhow::Result<Self> {
        let url = format!("http://127.0.0.1:{port}/metrics");
        Ok(Self(reqwest::get(url).await?.text().await?))
    }

    /// The sum of every sample whose series starts with `prefix`, e.g.
    /// `tanto_mails_sent_total{` or `tanto_routing_duration_seconds_sum`.
    pub fn sum(&self, prefix: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}
