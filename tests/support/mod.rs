//! What the end-to-end tests share: a [`TestEnv`] per test, with its own
//! database, topics, consumer groups and mail domain on the real local stack
//! (`deploy/local/stack.sh up`), the built binaries started as processes, and
//! a reader of the MailDev inbox.
//!
//! Nothing is shared between tests but the servers, so the suite runs twice
//! in a row, and tests run in parallel.

#![allow(clippy::unwrap_used)]

pub mod mailer;
pub mod smtp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tanto::config::{Settings, Topics};

const ADMIN_DATABASE_URL: &str = "postgres://tanto:tanto@127.0.0.1:5432/tanto";
const BROKERS: &str = "127.0.0.1:9092";
const MAILDEV: &str = "http://127.0.0.1:1080";

/// How long a test waits for mails before it fails.
pub const MAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's private slice of the stack.
#[derive(Debug)]
pub struct TestEnv {
    /// A short token unique to this test run, used in every name below.
    pub id: String,
    pub database_url: String,
    pub topics: Topics,
    children: Vec<(String, Child)>,
    http_ports: BTreeMap<String, u16>,
    /// Settings this test changes, on top of [`TestEnv::vars`].
    overrides: Vec<(String, String)>,
}

impl TestEnv {
    /// Creates the database (migrated) and the topics of a new test.
    pub async fn new() -> Self {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let database_url = create_database(&id).await;
        let topics = Topics::prefixed(&id);
        let env = Self {
            id,
            database_url,
            topics,
            children: Vec::new(),
            http_ports: BTreeMap::new(),
            overrides: Vec::new(),
        };
        let settings = env.settings();
        let pool = tanto::db::pool(&settings.database).unwrap();
        tanto::db::migrate(&pool).await.unwrap();
        tanto::kafka::ensure_topics(BROKERS, &env.topics.all(), 2)
            .await
            .unwrap();
        env
    }

    /// The mail domain of this test: every address in its routing data
    /// ends with it, so its mails can be told from other tests'.
    pub fn domain(&self) -> String {
        format!("{}.example", self.id)
    }

    /// The `TANTO_*` environment of this test's binaries.
    pub fn vars(&self) -> Vec<(String, String)> {
        let repo = repo_root();
        let topics = &self.topics;
        [
            ("TANTO_KAFKA_BROKERS", BROKERS.to_string()),
            ("TANTO_DATABASE_URL", self.database_url.clone()),
            (
                "TANTO_CATALOG",
                repo.join("deploy/mail/catalog.yaml").display().to_string(),
            ),
            (
                "TANTO_TEMPLATES",
                repo.join("deploy/mail/templates").display().to_string(),
            ),
            ("TANTO_TOPIC_ORDERS", topics.orders.clone()),
            ("TANTO_TOPIC_CONTRACTS", topics.contracts.clone()),
            ("TANTO_TOPIC_QUOTES", topics.quotes.clone()),
            ("TANTO_TOPIC_DELIVERIES", topics.deliveries.clone()),
            ("TANTO_TOPIC_EVENTS_DLQ", topics.events_dlq.clone()),
            ("TANTO_TOPIC_DELIVERIES_DLQ", topics.deliveries_dlq.clone()),
            (
                "TANTO_TOPIC_DELIVERIES_RETRY_PREFIX",
                format!("{}.tanto.deliveries.retry", self.id),
            ),
            (
                "TANTO_MAIL_FROM",
                format!("ACME <noreply@{}>", self.domain()),
            ),
            ("TANTO_LOG", "info,tanto=debug".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .filter(|(key, _)| !self.overrides.iter().any(|(changed, _)| changed == key))
        .chain(self.overrides.iter().cloned())
        .collect()
    }

    /// Sets a `TANTO_*` variable for the binaries this test starts from now
    /// on, replacing the default one if there is one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.overrides.retain(|(changed, _)| changed != key);
        self.overrides.push((key.to_string(), value.into()));
    }

    /// The settings the binaries of this test run with.
    pub fn settings(&self) -> Settings {
        Settings::from_vars(self.vars()).unwrap()
    }

    /// Starts a long-running binary and waits until it logs that it is ready.
    pub fn start(&mut self, binary: &str) {
        let log_path = log_dir().join(format!("{}-{binary}.log", self.id));
        // Appended, so that a restarted binary's log follows the first one's.
        let ready_before = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("ready")
            .count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let port = free_port();
        self.http_ports.insert(binary.to_string(), port);
        let child = self
            .command(binary)
            .env("TANTO_CONSUMER_GROUP", self.group(binary))
            .env("TANTO_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary}: {err} (run `make build`)"));
        self.children.push((binary.to_string(), child));
        wait_for_ready(binary, &log_path, ready_before);
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to a running binary and waits
    /// for it to exit; returns whether it exited successfully.
    pub fn signal(&mut self, binary: &str, signal: &str) -> bool {
        let index = self
            .children
            .iter()
            .position(|(name, _)| name == binary)
            .unwrap();
        let (_, mut child) = self.children.remove(index);
        let pid = child.id().to_string();
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid)
            .status()
            .unwrap();
        child.wait().unwrap().success()
    }

    /// Whether a started binary is still running.
    pub fn is_running(&mut self, binary: &str) -> bool {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(name, _)| name == binary)
            .unwrap();
        child.try_wait().unwrap().is_none()
    }

    /// GETs `path` from a running binary's HTTP endpoints: (status, body).
    pub async fn http_get(&self, binary: &str, path: &str) -> (u16, String) {
        let port = self.http_ports[binary];
        let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The value of one sample in a binary's `/metrics`, e.g.
    /// `tanto_mails_sent_total{mail="5-1-1"}`; 0 when it is absent.
    pub async fn metric(&self, binary: &str, sample: &str) -> f64 {
        let (_, text) = self.http_get(binary, "/metrics").await;
        metric_value(&text, sample)
    }

    /// The log of a binary of this test.
    pub fn log(&self, binary: &str) -> String {
        std::fs::read_to_string(log_dir().join(format!("{}-{binary}.log", self.id)))
            .unwrap_or_default()
    }

    /// The consumer group this test's `binary` runs in.
    pub fn group(&self, binary: &str) -> String {
        format!("{}-{binary}", self.id)
    }

    /// Kills a binary with SIGKILL, as a crash or an OOM kill would: no
    /// shutdown path runs.
    pub fn kill(&mut self, binary: &str) {
        let index = self
            .children
            .iter()
            .position(|(name, _)| name == binary)
            .unwrap_or_else(|| panic!("{binary} is not running"));
        let (_, mut child) = self.children.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Runs the `tanto` CLI with this test's settings.
    pub fn tanto(&self, args: &[&str]) -> Output {
        self.command("tanto").args(args).output().unwrap()
    }

    /// Applies a routing file and fails the test if it is refused.
    pub fn apply(&self, yaml: &str) {
        let path = log_dir().join(format!("{}-routing-{}.yaml", self.id, uuid::Uuid::new_v4()));
        std::fs::write(&path, yaml).unwrap();
        let output = self.tanto(&["apply", "-f", path.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Publishes one event, keyed by its transaction id, to `topic`.
    pub async fn publish(&self, topic: &str, event: &serde_json::Value) {
        let key = event["transaction"]["id"]
            .as_str()
            .unwrap_or("no-key")
            .to_string();
        let payload = event.to_string();
        publish_raw(topic, &key, payload.as_bytes()).await;
    }

    /// A client of this test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin_dir().join(binary));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        command.current_dir(repo_root()).envs(self.vars());
        command
    }
}

impl Drop for TestEnv {
    /// Stops the binaries with SIGTERM, so their shutdown path runs too.
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for (_, child) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "kept for inspection: database tanto_{id}, topics {id}.*",
                id = self.id
            );
        } else {
            self.remove_topics_and_database();
        }
    }
}

impl TestEnv {
    /// Deletes what the test created, so that runs do not pile up topics.
    /// Drop cannot await, so this runs on a runtime of its own.
    fn remove_topics_and_database(&self) {
        let topics: Vec<String> = self.topics.all().iter().map(|t| t.to_string()).collect();
        let database = format!("tanto_{}", self.id);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            runtime.unwrap().block_on(async {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", BROKERS)
                    .create()
                    .unwrap();
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
                let db = connect(ADMIN_DATABASE_URL).await;
                let _ = db
                    .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Produces one raw message, as any producer would.
pub async fn publish_raw(topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap();
}

/// A mail as MailDev shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Mail {
    #[serde(default)]
    pub id: String,
    pub subject: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub html: String,
    pub to: Vec<MailAddress>,
    #[serde(default)]
    pub headers: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailAddress {
    pub address: String,
    #[serde(default)]
    pub name: String,
}

impl Mail {
    pub fn recipient(&self) -> &str {
        &self.to[0].address
    }

    pub fn message_id(&self) -> String {
        self.headers
            .get("message-id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    }
}

/// Every mail MailDev holds for an address at `domain` or a subdomain of it.
pub async fn mails_for(domain: &str) -> Vec<Mail> {
    let all: Vec<Mail> = reqwest::get(format!("{MAILDEV}/api/email"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let (at, dot) = (format!("@{domain}"), format!(".{domain}"));
    let ours = |address: &str| {
        let address = address.to_lowercase();
        address.ends_with(&at) || address.ends_with(&dot)
    };
    all.into_iter()
        .filter(|mail| mail.to.iter().any(|to| ours(&to.address)))
        .collect()
}

/// Waits until at least `count` mails for `domain` have arrived, then a
/// little longer so that an extra mail (a duplicate) would show, and returns
/// them sorted by (recipient, subject).
pub async fn wait_for_mails(domain: &str, count: usize) -> Vec<Mail> {
    let deadline = Instant::now() + MAIL_TIMEOUT;
    loop {
        let mails = mails_for(domain).await;
        if mails.len() >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} mails for {domain} arrived in {MAIL_TIMEOUT:?}",
            mails.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut mails = mails_for(domain).await;
    mails.sort_by(|a, b| (a.recipient(), &a.subject).cmp(&(b.recipient(), &b.subject)));
    mails
}

/// (recipient, subject) of each mail, for compact assertions.
pub fn summary(mails: &[Mail]) -> Vec<(String, String)> {
    mails
        .iter()
        .map(|m| (m.recipient().to_string(), m.subject.clone()))
        .collect()
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn create_database(id: &str) -> String {
    let admin = connect(ADMIN_DATABASE_URL).await;
    admin
        .batch_execute(&format!("CREATE DATABASE tanto_{id}"))
        .await
        .unwrap();
    format!("{ADMIN_DATABASE_URL}_{id}")
}

fn wait_for_ready(binary: &str, log_path: &Path, ready_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.matches("ready").count() > ready_before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{binary} did not become ready:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where the binaries are. Unless `TANTO_BIN_DIR` names a prebuilt set,
/// they are built once per test binary first: `cargo test` builds the
/// library the tests link, not the binaries they start, and a stale binary
/// would test old code.
pub fn bin_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    if let Ok(dir) = std::env::var("TANTO_BIN_DIR") {
        return repo_root().join(dir);
    }
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "tanto", "--bins"])
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(status.success(), "the binaries do not build");
    });
    repo_root().join("target/debug")
}

fn log_dir() -> PathBuf {
    let dir = repo_root().join("target/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The routing data most tests use, for tenant `env.id`, store `ACME`:
///
/// - `acc-ops` is company-wide;
/// - `acc-tanaka` is in both groups, so product staff and customer staff;
/// - `acc-suzuki` is product staff only, `east-sales-ml` (a mailing list)
///   customer staff only, and `acc-sato` is product staff but inactive;
/// - product P-100 is linked to `solution`, P-200 to nobody;
/// - customer C-1001 is linked to `east`, with an admin and one invitee.
pub fn standard_routing(env: &TestEnv) -> String {
    let d = env.domain();
    format!(
        r#"
tenant: {id}
store_name: ACME
company_wide: [acc-ops]
disabled_mails: []
accounts:
  - {{ id: acc-ops, email: ops@{d}, name: 運用チーム }}
  - {{ id: acc-tanaka, email: tanaka@{d}, name: 田中 一郎 }}
  - {{ id: acc-suzuki, email: suzuki@{d}, name: 鈴木 次郎 }}
  - {{ id: acc-sato, email: sato@{d}, name: 佐藤 三郎, active: false }}
  - {{ id: acc-ml, email: east-sales-ml@{d}, name: 東日本営業ML }}
groups:
  - {{ id: solution, name: ソリューション商品担当部門, members: [acc-tanaka, acc-suzuki, acc-sato] }}
  - {{ id: east, name: 東日本エリア販売グループ, members: [acc-tanaka, acc-ml] }}
products:
  - {{ id: P-100, name: クラウドバックアップ Pro, groups: [solution] }}
  - {{ id: P-200, name: セキュリティ診断, groups: [] }}
customers:
  - id: C-1001
    name: サンプル株式会社
    groups: [east]
    admin: {{ email: admin@c1.{d}, name: 山田 太郎 }}
    invitees: [ {{ email: buyer@c1.{d}, name: 佐藤 花子 }} ]
"#,
        id = env.id
    )
}

/// A transaction event of `event_type` for tenant `tenant`, customer C-1001,
/// with one item of each product id given, and a fresh event id.
pub fn event(tenant: &str, event_type: &str, products: &[&str]) -> serde_json::Value {
    let family = event_type.split('.').next().unwrap();
    let (id, number) = match family {
        "order" => ("O-1", "ORD-000123"),
        "contract" => ("K-1", "CNT-000045"),
        _ => ("Q-1", "QUO-000678"),
    };
    let items: Vec<serde_json::Value> = products
        .iter()
        .map(|product| {
            serde_json::json!({
                "product_id": product, "quantity": 2, "unit_price": "12000"
            })
        })
        .collect();
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "occurred_at": "2026-12-03T10:15:00+09:00",
        "tenant_id": tenant,
        "customer_id": "C-1001",
        "transaction": {
            "id": id, "number": number, "items": items,
            "total_amount": (24000 * products.len()).to_string(), "currency": "JPY"
        }
    })
}

/// The subject of a mail of store ACME.
pub fn subject(text: &str) -> String {
    format!("[ACME ストア・マイページ]{text}")
}

/// (recipient, status, classes) of every ledger row, sorted.
pub async fn ledger(env: &TestEnv) -> Vec<(String, String, Vec<String>)> {
    let rows = env
        .db()
        .await
        .query(
            "SELECT recipient_address, status, recipient_classes FROM deliveries
             ORDER BY recipient_address, management_number",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// Publishes events as a stream over about `over`, in small chunks, from a
/// task of its own, so that a fault can land in the middle of it.
pub fn publish_stream(
    topic: &str,
    events: Vec<serde_json::Value>,
    over: Duration,
) -> tokio::task::JoinHandle<()> {
    let topic = topic.to_string();
    let chunks = 50;
    let pause = over / chunks;
    tokio::spawn(async move {
        for chunk in events.chunks(events.len().div_ceil(chunks as usize)) {
            publish_all(&topic, chunk).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// Publishes many events at once, each keyed by its transaction id.
pub async fn publish_all(topic: &str, events: &[serde_json::Value]) {
    publish_all_at(BROKERS, topic, events).await;
}

/// [`publish_all`] on the cluster at `brokers`.
pub async fn publish_all_at(brokers: &str, topic: &str, events: &[serde_json::Value]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payloads: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["transaction"]["id"].as_str().unwrap().to_string(),
                e.to_string(),
            )
        })
        .collect();
    let sends = payloads.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(err, _)| err).unwrap();
    }
}

/// Every message a topic holds now, from the beginning of each partition.
pub fn read_topic(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic_at(BROKERS, topic)
}

/// [`read_topic`] on the cluster at `brokers`, with the library's reader.
pub fn read_topic_at(brokers: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::Message;
    let mut messages = Vec::new();
    tanto::kafka::read_to_end(brokers, topic, Duration::from_secs(30), |m| {
        messages.push(m)
    })
    .unwrap();
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    messages
}

/// The delivery messages on a topic, parsed.
pub fn deliveries_on(topic: &str) -> Vec<tanto::delivery::DeliveryMessage> {
    deliveries_at(BROKERS, topic)
}

/// [`deliveries_on`] on the cluster at `brokers`.
pub fn deliveries_at(brokers: &str, topic: &str) -> Vec<tanto::delivery::DeliveryMessage> {
    use rdkafka::Message;
    read_topic_at(brokers, topic)
        .iter()
        .map(|m| tanto::delivery::DeliveryMessage::from_json(m.payload().unwrap()).unwrap())
        .collect()
}

/// The offsets `group` committed on `topic`, summed over partitions, and
/// the sum of the partitions' end offsets.
pub fn committed_and_end(group: &str, topic: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    let mut end = 0;
    for partition in metadata.topics()[0].partitions() {
        partitions.add_partition(topic, partition.id());
        end += consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .unwrap()
            .1;
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let sum = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum();
    (sum, end)
}

/// Waits until `check` holds, polling; fails the test after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many events this test's notifier has routed.
pub async fn routed_count(env: &TestEnv) -> i64 {
    let row = env
        .db()
        .await
        .query_one("SELECT count(*) FROM routed_events", &[])
        .await
        .unwrap();
    row.get(0)
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `sample` (name and labels as Prometheus prints them, labels
/// in any order) in a text exposition; 0 when it is absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    let (name, labels) = match sample.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (sample, ""),
    };
    let wanted: BTreeSet<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (*series, ""),
            };
            let labels: BTreeSet<&str> =
                series_labels.split(',').filter(|l| !l.is_empty()).collect();
            series_name == name && wanted.is_subset(&labels)
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// Runs the CLI and returns its standard output; fails the test if the
/// command fails.
pub fn tanto_ok(env: &TestEnv, args: &[&str]) -> String {
    let output = env.tanto(args);
    assert!(
        output.status.success(),
        "tanto {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the CLI with `--json` and parses what it printed.
pub fn tanto_json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&tanto_ok(env, &args)).unwrap()
}
