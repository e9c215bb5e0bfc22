//! The `cosmos` sink: window records, alert records and device state documents in
//! Azure Cosmos DB (NoSQL API), through the official `azure_data_cosmos` client.
//!
//! The sink thread hands writes to a small tokio runtime over a bounded queue (a slow
//! or unreachable Cosmos blocks the sink thread, and through it the partitions and
//! the source: backpressure, never an unbounded buffer). A dispatcher runs up to
//! `max_concurrency` writes at once.
//!
//! - Window and alert records are upserted under their deterministic ids, so a
//!   replay rewrites the same documents.
//! - Device documents (id = partition key = deviceId) collect the latest reading,
//!   the latest aggregates per window and the alert states. Updates of one device
//!   are coalesced in the sink thread and written at most once per `flush_interval`
//!   (and before every checkpoint). The writer keeps the document as last stored
//!   with its ETag: the first write of a device in a run reads the stored document
//!   and merges it in ([`doc::DeviceDoc::merge`] keeps the newer of every part), and
//!   every write is conditional on the ETag, so a replay or another writer never
//!   moves a device's state backwards. A write that would change nothing is skipped.
//! - 429 and 503 (including the client's transport failures) are retried with
//!   exponential backoff, waiting at least `x-ms-retry-after-ms` when the service
//!   gives it. After `max_retries` the record becomes a dead letter with reason
//!   `sink` and the error text. Other errors (a bad id, a missing container) are not
//!   retried.
//! - A flush waits until every write queued before it is stored or dead-lettered,
//!   so a checkpoint released after it never passes an unwritten record.

pub mod doc;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::Secret;
use azure_core::http::Etag;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::{ContainerProperties, ItemResponse};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, ItemWriteOptions, OperationOptionsBuilder,
    Precondition, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountReference, CosmosClient, CosmosError, CosmosRuntime, RoutingStrategy,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::Stream;
use crate::config::sink::Cosmos as CosmosConfig;
use crate::event::{DeadLetter, Reason, now_ms, rfc3339_ms};
use crate::sinks::{Output, SinkError, json};
use doc::DeviceDoc;

/// The three containers, in the order of `Writer::containers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Devices = 0,
    Windows = 1,
    Alerts = 2,
}

impl Container {
    fn name(self) -> &'static str {
        match self {
            Container::Devices => "devices",
            Container::Windows => "windows",
            Container::Alerts => "alerts",
        }
    }
}

/// What the writer does.
enum Job {
    /// Upsert one record under its id.
    Record {
        container: Container,
        device: String,
        id: String,
        body: Box<RawValue>,
    },
    /// Fold a device's changes into its document and store it.
    Device(DeviceDoc),
    /// Answer once every job before it is done.
    Barrier(oneshot::Sender<()>),
}

/// The counters the sink logs.
#[derive(Debug, Clone)]
pub struct CosmosStats {
    /// Documents written (upserts and creates that succeeded).
    pub writes: u64,
    /// Device documents read (first write of a device in a run, or after a conflict).
    pub reads: u64,
    /// Requests sent again after a 429, 503 or transport failure.
    pub retries: u64,
    /// Device writes that found the stored document changed (ETag mismatch).
    pub conflicts: u64,
    /// Device writes skipped because the stored document was already as new.
    pub unchanged: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Request units charged.
    pub request_charge: f64,
    /// Latency of successful requests, µs.
    pub latency: Histogram<u64>,
}

impl Default for CosmosStats {
    fn default() -> Self {
        CosmosStats {
            writes: 0,
            reads: 0,
            retries: 0,
            conflicts: 0,
            unchanged: 0,
            dead_lettered: 0,
            request_charge: 0.0,
            latency: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

/// A device document as last stored, with the ETag the store gave it.
struct Stored {
    doc: DeviceDoc,
    etag: Option<Etag>,
}

/// State the writer tasks share (locked briefly per request, never per event).
#[derive(Default)]
struct Shared {
    failed: Mutex<Vec<DeadLetter>>,
    stats: Mutex<CosmosStats>,
    stored: Mutex<HashMap<String, Stored>>,
}

/// Performs the writes, with retries.
struct Writer {
    containers: [Option<ContainerClient>; 3],
    max_retries: u32,
    shared: Arc<Shared>,
}

/// Where the sink connects and what it writes: the `[[sinks]]` keys, resolved.
#[derive(Debug, Clone)]
pub struct CosmosSettings {
    pub endpoint: String,
    pub key: String,
    pub database: String,
    pub devices: Option<String>,
    pub windows: Option<String>,
    pub alerts: Option<String>,
    pub create_if_missing: bool,
    pub max_concurrency: usize,
    pub max_retries: u32,
    pub flush_interval: Duration,
}

impl CosmosSettings {
    /// Resolves a validated sink config; reads the key from `key_env` if given.
    pub fn from_config(c: &CosmosConfig) -> Result<Self, SinkError> {
        let key = match (&c.key, &c.key_env) {
            (Some(k), _) => k.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                SinkError::Cosmos(format!(
                    "key_env: the environment variable {var} (the account key) is not set"
                ))
            })?,
            (None, None) => unreachable!("validated: cosmos sinks have key or key_env"),
        };
        let streams = c
            .streams
            .clone()
            .unwrap_or_else(|| vec![Stream::Windows, Stream::Alerts]);
        let container = |s: Stream, name: &Option<String>, default: &str| {
            streams
                .contains(&s)
                .then(|| name.clone().unwrap_or_else(|| default.to_owned()))
        };
        Ok(CosmosSettings {
            endpoint: c.endpoint.clone(),
            key,
            database: c.database.clone(),
            devices: container(Stream::Devices, &c.devices_container, "devices"),
            windows: container(Stream::Windows, &c.windows_container, "windows"),
            alerts: container(Stream::Alerts, &c.alerts_container, "alerts"),
            create_if_missing: c.create_if_missing.unwrap_or(false),
            max_concurrency: c.max_concurrency.unwrap_or(32) as usize,
            max_retries: c.max_retries.unwrap_or(10),
            flush_interval: c.flush_interval.map_or(Duration::from_secs(1), |d| d.0),
        })
    }
}

/// The sink, as the sink thread holds it.
pub struct CosmosSink {
    rt: tokio::runtime::Runtime,
    tx: Option<mpsc::Sender<Job>>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    windows: bool,
    alerts: bool,
    devices: bool,
    /// Device changes since they were last handed to the writer, by deviceId.
    pending: HashMap<String, DeviceDoc>,
    flush_interval: Duration,
    last_devices: Instant,
    last_log: Instant,
    buf: Vec<u8>,
}

impl CosmosSink {
    /// Connects (creating the database and containers if asked to) and starts the
    /// writer. Fails if the account cannot be reached or a container is missing.
    pub fn connect(s: CosmosSettings) -> Result<Self, SinkError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cosmos")
            .enable_all()
            .build()
            .map_err(|e| SinkError::Cosmos(format!("cannot start the client runtime: {e}")))?;
        let containers = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), open_containers(&s))
                .await
                .map_err(|_| {
                    SinkError::Cosmos(format!(
                        "no answer from {} within 60s while opening the containers",
                        s.endpoint
                    ))
                })?
        })?;
        let shared = Arc::new(Shared::default());
        let writer = Arc::new(Writer {
            containers,
            max_retries: s.max_retries,
            shared: shared.clone(),
        });
        let (tx, rx) = mpsc::channel(s.max_concurrency * 4);
        let dispatcher = rt.spawn(dispatch(rx, writer, s.max_concurrency));
        Ok(CosmosSink {
            rt,
            tx: Some(tx),
            dispatcher: Some(dispatcher),
            shared,
            windows: s.windows.is_some(),
            alerts: s.alerts.is_some(),
            devices: s.devices.is_some(),
            pending: HashMap::new(),
            flush_interval: s.flush_interval,
            last_devices: Instant::now(),
            last_log: Instant::now(),
            buf: Vec::with_capacity(1024),
        })
    }

    /// Queues one output's records; blocks while the queue is full.
    pub fn write(&mut self, out: &Output) -> Result<(), SinkError> {
        if let Some(batch) = &out.windows {
            if self.windows {
                let mut records = json::WindowRecords::new(batch);
                for row in 0..batch.num_rows() {
                    self.buf.clear();
                    records.write(row, &mut self.buf);
                    let body = raw(&self.buf)?;
                    let ids: RecordKeys = serde_json::from_str(body.get())
                        .map_err(|e| SinkError::Cosmos(format!("window record: {e}")))?;
                    let (device, id) = (ids.device_id, doc::doc_id(&ids.id).into_owned());
                    let body = if id == ids.id {
                        body
                    } else {
                        with_id(body.get(), &id)?
                    };
                    self.send(Job::Record {
                        container: Container::Windows,
                        device,
                        id,
                        body,
                    })?;
                }
            }
            if self.devices {
                for (device, window, kind, agg) in doc::window_rows(batch) {
                    self.pending_doc(device).apply_window(window, kind, &agg);
                }
            }
        }
        for a in &out.alerts {
            if self.alerts {
                self.buf.clear();
                let id = doc::doc_id(&a.id).into_owned();
                let written = if id == a.id {
                    serde_json::to_writer(&mut self.buf, a)
                } else {
                    let mut doc = a.clone();
                    doc.id.clone_from(&id);
                    serde_json::to_writer(&mut self.buf, &doc)
                };
                written.map_err(|e| SinkError::Cosmos(format!("alert record: {e}")))?;
                let body = raw(&self.buf)?;
                self.send(Job::Record {
                    container: Container::Alerts,
                    device: a.device_id.clone(),
                    id,
                    body,
                })?;
            }
            if self.devices {
                self.pending_doc(&a.device_id).apply_alert(a);
            }
        }
        if self.devices {
            for u in &out.devices {
                self.pending_doc(&u.device_id).apply_update(u);
            }
        }
        Ok(())
    }

    fn pending_doc(&mut self, device: &str) -> &mut DeviceDoc {
        if !self.pending.contains_key(device) {
            self.pending
                .insert(device.to_owned(), DeviceDoc::new(device));
        }
        self.pending.get_mut(device).expect("inserted above")
    }

    fn send(&mut self, job: Job) -> Result<(), SinkError> {
        let tx = self
            .tx
            .as_ref()
            .expect("the writer runs until the sink is dropped");
        tx.blocking_send(job)
            .map_err(|_| SinkError::Cosmos("the writer stopped".into()))
    }

    /// Waits until everything queued so far is written or dead-lettered. Device
    /// documents are handed over first when `flush_interval` has passed, when a
    /// checkpoint depends on this flush (`durable`), and at the end (`last`).
    pub fn flush(&mut self, last: bool, durable: bool) -> Result<(), SinkError> {
        if !self.pending.is_empty()
            && (last || durable || self.last_devices.elapsed() >= self.flush_interval)
        {
            let docs: Vec<DeviceDoc> = self.pending.drain().map(|(_, d)| d).collect();
            for d in docs {
                self.send(Job::Device(d))?;
            }
            self.last_devices = Instant::now();
        }
        let (ack, done) = oneshot::channel();
        self.send(Job::Barrier(ack))?;
        done.blocking_recv()
            .map_err(|_| SinkError::Cosmos("the writer stopped".into()))?;
        if last || self.last_log.elapsed() >= Duration::from_secs(10) {
            self.log_stats(last);
            self.last_log = Instant::now();
        }
        Ok(())
    }

    pub fn stats(&self) -> CosmosStats {
        self.shared.stats.lock().clone()
    }

    fn log_stats(&self, last: bool) {
        let s = self.stats();
        let q = |p: f64| Duration::from_micros(s.latency.value_at_quantile(p));
        tracing::info!(
            writes = s.writes,
            reads = s.reads,
            retries = s.retries,
            conflicts = s.conflicts,
            unchanged = s.unchanged,
            dead_lettered = s.dead_lettered,
            request_charge = format!("{:.1}", s.request_charge),
            p50 = ?q(0.5),
            p99 = ?q(0.99),
            max = ?Duration::from_micros(s.latency.max()),
            "{}",
            if last { "Cosmos sink: done." } else { "Cosmos sink." }
        );
    }

    /// Records given up on since the last call.
    pub fn take_failed(&mut self, into: &mut Vec<DeadLetter>) {
        into.append(&mut self.shared.failed.lock());
    }
}

impl Drop for CosmosSink {
    fn drop(&mut self) {
        // Closing the queue lets the dispatcher finish what is in flight.
        self.tx.take();
        if let Some(d) = self.dispatcher.take() {
            let _ = self.rt.block_on(d);
        }
    }
}

/// The fields of a record the write needs besides its body.
#[derive(serde::Deserialize)]
struct RecordKeys {
    id: String,
    #[serde(rename = "deviceId")]
    device_id: String,
}

fn raw(bytes: &[u8]) -> Result<Box<RawValue>, SinkError> {
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| SinkError::Cosmos(format!("record is not UTF-8: {e}")))?;
    RawValue::from_string(text).map_err(|e| SinkError::Cosmos(format!("record is not JSON: {e}")))
}

/// The record `json` with its `id` member set to `id` (its document id, see
/// [`doc::doc_id`]); the other members keep their order and values.
fn with_id(json: &str, id: &str) -> Result<Box<RawValue>, SinkError> {
    let mut record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| SinkError::Cosmos(format!("record is not a JSON object: {e}")))?;
    record.insert("id".into(), id.into());
    let text =
        serde_json::to_string(&record).map_err(|e| SinkError::Cosmos(format!("record: {e}")))?;
    RawValue::from_string(text).map_err(|e| SinkError::Cosmos(format!("record is not JSON: {e}")))
}

/// Builds the client and opens the containers the sink writes.
async fn open_containers(s: &CosmosSettings) -> Result<[Option<ContainerClient>; 3], SinkError> {
    let err = |what: &str, e: CosmosError| SinkError::Cosmos(format!("{what}: {e}"));
    let endpoint: azure_data_cosmos::AccountEndpoint = s
        .endpoint
        .parse()
        .map_err(|e| SinkError::Cosmos(format!("endpoint {:?}: {e}", s.endpoint)))?;
    // HTTP/2 where the account speaks TLS; plain-HTTP local servers speak HTTP/1.1.
    let https = s.endpoint.trim().to_ascii_lowercase().starts_with("https:");
    let pool = ConnectionPoolOptions::builder()
        .with_is_http2_allowed(https)
        .build()
        .map_err(|e| err("connection pool options", e))?;
    // The sink retries throttled requests itself (counting them, honouring
    // x-ms-retry-after-ms, up to max_retries): the client must not retry them too.
    let operation = OperationOptionsBuilder::new()
        .with_throttling_retry_options(
            ThrottlingRetryOptionsBuilder::new()
                .with_max_retry_count(0)
                .build(),
        )
        .build();
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .with_default_operation_options(operation)
        .build()
        .await
        .map_err(|e| err("client runtime", e))?;
    let account = AccountReference::with_authentication_key(endpoint, Secret::from(s.key.clone()));
    let client = CosmosClient::builder()
        .with_runtime(runtime)
        // Plain JSON: the text the contract defines, and what every server speaks.
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
        .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
        .await
        .map_err(|e| err(&format!("cannot connect to {}", s.endpoint), e))?;
    if s.create_if_missing {
        match client.create_database(&s.database, None).await {
            Ok(_) => tracing::info!(database = s.database, "Cosmos: created the database."),
            Err(e) if e.status().is_conflict() => {}
            Err(e) => return Err(err(&format!("create database {}", s.database), e)),
        }
    }
    let db = client.database_client(s.database.as_str());
    let mut out: [Option<ContainerClient>; 3] = [None, None, None];
    for (slot, name) in [
        (Container::Devices, &s.devices),
        (Container::Windows, &s.windows),
        (Container::Alerts, &s.alerts),
    ] {
        let Some(name) = name else { continue };
        if s.create_if_missing {
            let props = ContainerProperties::new(name.clone(), "/deviceId".into());
            match db.create_container(props, None).await {
                Ok(_) => tracing::info!(container = name, "Cosmos: created the container."),
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(err(&format!("create container {name}"), e)),
            }
        }
        let c = db
            .container_client(name.as_str(), None)
            .await
            .map_err(|e| {
                err(
                    &format!(
                        "container {name} in database {} (create_if_missing = true creates it)",
                        s.database
                    ),
                    e,
                )
            })?;
        out[slot as usize] = Some(c);
    }
    Ok(out)
}

/// Runs jobs with at most `max` in flight; a barrier waits for all of them.
async fn dispatch(mut rx: mpsc::Receiver<Job>, writer: Arc<Writer>, max: usize) {
    let permits = Arc::new(Semaphore::new(max));
    let all = max as u32;
    while let Some(job) = rx.recv().await {
        match job {
            Job::Barrier(ack) => {
                let everything = permits.acquire_many(all).await.expect("never closed");
                drop(everything);
                let _ = ack.send(());
            }
            job => {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let w = writer.clone();
                tokio::spawn(async move {
                    w.run(job).await;
                    drop(permit);
                });
            }
        }
    }
    let _ = permits.acquire_many(all).await;
}

/// Whether sending the request again can help: throttling, unavailability
/// (including the client's own transport failures), timeouts, gone, and a gateway
/// in between failing.
fn retryable(e: &CosmosError) -> bool {
    let s = e.status();
    s.is_transient() || s.is_gone() || matches!(u16::from(s.status_code()), 502 | 504)
}

/// How long to wait before attempt `attempt + 1`: exponential from 100 ms, capped at
/// 5 s (the default 10 retries ride out about 25 s of outage), and never less than
/// the service's `x-ms-retry-after-ms`.
fn backoff(e: &CosmosError, attempt: u32) -> Duration {
    let ours = Duration::from_millis((100u64 << attempt.min(6)).min(5_000));
    let theirs = e
        .response()
        .and_then(|r| r.headers().retry_after_ms)
        .map(Duration::from_millis)
        .unwrap_or_default();
    ours.max(theirs)
}

impl Writer {
    fn container(&self, c: Container) -> &ContainerClient {
        self.containers[c as usize]
            .as_ref()
            .expect("jobs go only to containers the sink opened")
    }

    async fn run(&self, job: Job) {
        match job {
            Job::Record {
                container,
                device,
                id,
                body,
            } => {
                let c = self.container(container);
                let result = self
                    .retrying(|| c.upsert_item(&device, &id, &*body, None))
                    .await;
                if let Err(e) = result {
                    self.give_up(container, &id, body.get(), &e);
                } else {
                    self.shared.stats.lock().writes += 1;
                }
            }
            Job::Device(changes) => self.write_device(changes).await,
            Job::Barrier(_) => unreachable!("the dispatcher answers barriers"),
        }
    }

    /// Sends a request until it succeeds, fails for good, or `max_retries` retries
    /// have failed.
    async fn retrying<F, Fut>(&self, mut request: F) -> Result<ItemResponse, CosmosError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_data_cosmos::Result<ItemResponse>>,
    {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match request().await {
                Ok(r) => {
                    let mut s = self.shared.stats.lock();
                    let _ = s.latency.record(started.elapsed().as_micros() as u64);
                    s.request_charge += r.headers().request_charge().map_or(0.0, |c| c.value());
                    return Ok(r);
                }
                Err(e) if attempt < self.max_retries && retryable(&e) => {
                    let wait = backoff(&e, attempt);
                    attempt += 1;
                    self.shared.stats.lock().retries += 1;
                    tracing::debug!(error = %e, attempt, ?wait, "Cosmos: retrying a request.");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Folds `changes` into the device's stored document and writes it if anything
    /// changed, conditionally on the ETag it was read with.
    async fn write_device(&self, changes: DeviceDoc) {
        let c = self.container(Container::Devices);
        let id = changes.id.clone();
        let device = changes.device_id.clone();
        // Conflicts (another writer stored the document in between) are resolved by
        // reading it again; a bounded number of rounds, then the write is given up.
        for _ in 0..16 {
            let held = self.shared.stored.lock().remove(&id);
            let (stored, etag) = match held {
                Some(s) => (s.doc, s.etag),
                None => match self.retrying(|| c.read_item(&device, &id, None)).await {
                    Ok(r) => {
                        self.shared.stats.lock().reads += 1;
                        let etag = r.headers().etag().cloned();
                        match r.into_model::<DeviceDoc>() {
                            Ok(doc) => (doc, etag),
                            Err(e) => {
                                // Not a document this sink wrote: start afresh over it.
                                tracing::warn!(device = id, error = %e, "Cosmos: the stored device document is not in the expected shape; replacing it.");
                                (DeviceDoc::new(&device), etag)
                            }
                        }
                    }
                    Err(e) if e.status().is_not_found() => (DeviceDoc::new(&device), None),
                    Err(e) => {
                        self.give_up_doc(&changes, &e);
                        return;
                    }
                },
            };
            let mut doc = stored.clone();
            doc.merge(&changes);
            if etag.is_some() && doc == stored {
                self.shared.stats.lock().unchanged += 1;
                self.shared.stored.lock().insert(id, Stored { doc, etag });
                return;
            }
            let result = match &etag {
                Some(tag) => {
                    let options = ItemWriteOptions::default()
                        .with_precondition(Precondition::IfMatch(tag.clone()));
                    self.retrying(|| c.upsert_item(&device, &id, &doc, Some(options.clone())))
                        .await
                }
                None => {
                    self.retrying(|| c.create_item(&device, &id, &doc, None))
                        .await
                }
            };
            match result {
                Ok(r) => {
                    let etag = r.headers().etag().cloned();
                    self.shared.stats.lock().writes += 1;
                    self.shared.stored.lock().insert(id, Stored { doc, etag });
                    return;
                }
                Err(e) if e.status().is_precondition_failed() || e.status().is_conflict() => {
                    // Stored by someone else (or by an attempt whose answer was
                    // lost): read it again and merge.
                    self.shared.stats.lock().conflicts += 1;
                }
                Err(e) => {
                    // Keep the merged state: a later write carries these changes
                    // too (the ETag still names what is stored, or it fails as a
                    // conflict and is read again).
                    self.give_up_doc(&doc, &e);
                    self.shared.stored.lock().insert(id, Stored { doc, etag });
                    return;
                }
            }
        }
        let e = CosmosError::builder()
            .with_status(azure_data_cosmos::error::CosmosStatus::new(
                azure_core::http::StatusCode::PreconditionFailed,
            ))
            .with_message("the stored document kept changing (16 conflicts)")
            .build();
        self.give_up_doc(&changes, &e);
    }

    fn give_up_doc(&self, doc: &DeviceDoc, e: &CosmosError) {
        let body = serde_json::to_string(doc).unwrap_or_default();
        self.give_up(Container::Devices, &doc.id, &body, e);
    }

    fn give_up(&self, container: Container, id: &str, body: &str, e: &CosmosError) {
        tracing::warn!(
            container = container.name(),
            id,
            error = %e,
            "Cosmos: giving up on a record (it is dead-lettered)."
        );
        self.shared.stats.lock().dead_lettered += 1;
        self.shared.failed.lock().push(DeadLetter {
            reason: Reason::Sink,
            error: format!("cosmos {} container, id {id}: {e}", container.name()),
            payload: body.to_owned(),
            source: format!("cosmos:{}", container.name()),
            received_at: rfc3339_ms(now_ms()),
        });
    }
}
