//! Stage 5: SQL over the running pipeline, read from the live board ([`crate::live`]).
//!
//! ```text
//!  partition actors ─snapshots─▶ live::Hub ◀─closed windows, alerts─ retention sink
//!                                   │
//!                     tables: live_windows windows alerts devices stats
//!                                   │  (DataFusion SessionContext, read-only)
//!                 ┌─────────────────┴───────────────────┐
//!          http.rs: POST /sql, /metrics,          pg.rs: PostgreSQL wire protocol
//!          /healthz, /readyz, POST /ingest        (psql, Grafana)
//! ```
//!
//! Queries run on a small tokio runtime of their own, never on the partition threads,
//! and read snapshots that the partitions swap in without waiting for readers: a slow
//! or runaway query costs CPU, but cannot stall ingestion. Every query runs with a
//! timeout and a row limit; the catalog is read-only and no object store is
//! registered, so SQL cannot create tables or read or write files.

pub mod http;
pub mod metrics;
pub mod pg;
pub mod tables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::live::Hub;

/// What the query side counts of itself (per query, not the hot path).
#[derive(Debug)]
pub struct QueryStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Query latency, µs.
    pub latency: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for QueryStats {
    fn default() -> Self {
        QueryStats {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency: Mutex::new(
                hdrhistogram::Histogram::new(3).expect("3 significant digits is valid"),
            ),
        }
    }
}

impl QueryStats {
    pub fn record(&self, ok: bool, took: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.latency.lock().record((took.as_micros() as u64).max(1));
    }
}

/// Per-query limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub max_rows: u64,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// DataFusion rejected or failed the query (its message, unchanged).
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error(
        "query cancelled: it ran longer than the query timeout ({0:?}; [server] query_timeout)"
    )]
    Timeout(Duration),
    #[error("query result has more than {0} rows ([server] max_rows): add a LIMIT or an aggregate")]
    TooManyRows(u64),
}

/// The SQL engine: a DataFusion context whose tables read the [`Hub`].
pub struct Engine {
    pub ctx: Arc<SessionContext>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub queries: QueryStats,
}

impl Engine {
    pub fn new(hub: Arc<Hub>, limits: Limits) -> Result<Self, DataFusionError> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public")
            .with_create_default_catalog_and_schema(true)
            // Snapshots are small: one partition per query plan costs the least CPU,
            // and CPU spent on queries is CPU the pipeline does not get.
            .with_target_partitions(1);
        // Column names follow the record contract (`deviceId`, `windowStart`): keep
        // identifiers as written, so `SELECT deviceId FROM windows` works unquoted.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(tables::NoObjectStores))
            .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        tables::register(&ctx, &hub)?;
        datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            "datafusion",
            datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| *e)?;
        tables::seal(&ctx);
        Ok(Engine {
            ctx: Arc::new(ctx),
            hub,
            limits,
            queries: QueryStats::default(),
        })
    }

    /// Runs one read-only query to completion within the limits.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.limits.timeout, self.run(sql))
            .await
            .unwrap_or(Err(QueryError::Timeout(self.limits.timeout)));
        self.queries.record(result.is_ok(), started.elapsed());
        result
    }

    async fn run(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, options).await?;
        collect_limited(df.execute_stream().await?, self.limits.max_rows).await
    }
}

/// Collects a stream, failing once it passes `max_rows`.
pub async fn collect_limited(
    mut stream: SendableRecordBatchStream,
    max_rows: u64,
) -> Result<Vec<RecordBatch>, QueryError> {
    let mut out = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        if rows > max_rows {
            return Err(QueryError::TooManyRows(max_rows));
        }
        out.push(batch);
    }
    Ok(out)
}

/// Query results as a JSON array of row objects. Timestamps are written as in the
/// record contract (RFC 3339, milliseconds, `Z`); non-finite floats as `null`; other
/// types through Arrow's display formatting, as strings.
pub fn to_json(batches: &[RecordBatch]) -> Result<Vec<u8>, DataFusionError> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    let mut first = true;
    let fmt = FormatOptions::default();
    for batch in batches {
        let schema = batch.schema();
        let names: Vec<Vec<u8>> = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::new();
                json_string(f.name(), &mut k);
                k
            })
            .collect();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &fmt))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'{');
            for (i, column) in batch.columns().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&names[i]);
                out.push(b':');
                json_value(column.as_ref(), row, &formatters[i], &mut out);
            }
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]\n");
    Ok(out)
}

fn json_value(
    a: &dyn Array,
    row: usize,
    fmt: &datafusion::arrow::util::display::ArrayFormatter,
    out: &mut Vec<u8>,
) {
    use datafusion::arrow::datatypes::{
        Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
        UInt32Type, UInt64Type,
    };
    if a.is_null(row) {
        out.extend_from_slice(b"null");
        return;
    }
    let mut int = |v: i128| out.extend_from_slice(v.to_string().as_bytes());
    match a.data_type() {
        DataType::Boolean => {
            let v = a.as_boolean().value(row);
            out.extend_from_slice(if v { b"true" } else { b"false" });
        }
        DataType::Int8 => int(a.as_primitive::<Int8Type>().value(row) as i128),
        DataType::Int16 => int(a.as_primitive::<Int16Type>().value(row) as i128),
        DataType::Int32 => int(a.as_primitive::<Int32Type>().value(row) as i128),
        DataType::Int64 => int(a.as_primitive::<Int64Type>().value(row) as i128),
        DataType::UInt8 => int(a.as_primitive::<UInt8Type>().value(row) as i128),
        DataType::UInt16 => int(a.as_primitive::<UInt16Type>().value(row) as i128),
        DataType::UInt32 => int(a.as_primitive::<UInt32Type>().value(row) as i128),
        DataType::UInt64 => int(a.as_primitive::<UInt64Type>().value(row) as i128),
        DataType::Float32 => float(a.as_primitive::<Float32Type>().value(row) as f64, out),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(row), out),
        DataType::Timestamp(unit, _) => {
            let raw = timestamp_ms(a, row, *unit);
            out.push(b'"');
            crate::event::push_rfc3339_ms(out, raw);
            out.push(b'"');
        }
        _ => json_string(&fmt.value(row).to_string(), out),
    }
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    crate::sinks::json::escape_into(s, out);
    out.push(b'"');
}

fn float(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        crate::sinks::json::number_into(v, out);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn timestamp_ms(a: &dyn Array, row: usize, unit: TimeUnit) -> i64 {
    use datafusion::arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match unit {
        TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(row) * 1000,
        TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(row),
        TimeUnit::Microsecond => a
            .as_primitive::<TimestampMicrosecondType>()
            .value(row)
            .div_euclid(1000),
        TimeUnit::Nanosecond => a
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1_000_000),
    }
}

/// Query results as CSV with a header row.
pub fn to_csv(batches: &[RecordBatch]) -> Result<Vec<u8>, DataFusionError> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
            .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3f".to_string())
            .build(&mut out);
        for b in batches {
            w.write(b)?;
        }
    }
    Ok(out)
}

/// Query results as an Arrow IPC stream.
pub fn to_arrow_ipc(
    schema: &datafusion::arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, DataFusionError> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// The running query endpoints: a tokio runtime of their own (two worker threads,
/// apart from the partition threads) serving HTTP and PostgreSQL.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub http: Option<std::net::SocketAddr>,
    pub postgres: Option<std::net::SocketAddr>,
    pub engine: Arc<Engine>,
}

/// Why the endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the query runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot set up SQL: {0}")]
    Sql(#[from] DataFusionError),
}

impl Server {
    /// Starts the endpoints `cfg` asks for. With `lenient` (the demo), an address in
    /// use is a warning and that endpoint stays off; otherwise it is an error.
    pub fn start(
        cfg: &crate::config::ServerConfig,
        hub: Arc<Hub>,
        lenient: bool,
    ) -> Result<Server, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sql")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        let limits = Limits {
            timeout: cfg.query_timeout().0,
            max_rows: cfg.max_rows(),
        };
        let engine = Arc::new(Engine::new(hub, limits)?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let bind = |key: &'static str, addr: Option<std::net::SocketAddr>| {
            let Some(addr) = addr else {
                return Ok(None);
            };
            match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
                Ok(l) => Ok(Some(l)),
                Err(source) if lenient => {
                    tracing::warn!(%addr, error = %source, "server.{key}: cannot listen; this endpoint is off.");
                    eprintln!("eventide: cannot listen on {addr} ({source}): {key} endpoint off");
                    Ok(None)
                }
                Err(source) => Err(StartError::Bind { key, addr, source }),
            }
        };
        let http = bind("http", cfg.http_addr())?;
        let pg = bind("postgres", cfg.postgres_addr())?;
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let pg_addr = pg.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = http {
            let engine = engine.clone();
            let token = cfg.token();
            runtime.spawn(async move {
                let shutdown = async {
                    let _ = rx.await;
                };
                if let Err(e) = http::serve(listener, engine, token, shutdown).await {
                    tracing::error!(error = %e, "HTTP server failed.");
                }
            });
        }
        if let Some(listener) = pg {
            runtime.spawn(pg::serve(
                listener,
                engine.clone(),
                cfg.user().to_owned(),
                cfg.password(),
            ));
        }
        Ok(Server {
            runtime: Some(runtime),
            shutdown: Some(tx),
            http: http_addr,
            postgres: pg_addr,
            engine,
        })
    }
}

/// Queries yield the CPU to the pipeline: the query threads run at a lower
/// scheduling priority (nice +10), so under load a heavy query slows down rather
/// than the partitions.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; a failure only leaves the
    // priority unchanged.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
