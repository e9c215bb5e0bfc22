//! The data model every stage shares: the decoded event, the output records and
//! the Arrow schema of closed windows.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

pub use eventide_simulator::time::{
    MinuteCache, parse_rfc3339_ms, push_rfc3339_ms, rfc3339_ms, rfc3339_ms_bytes,
};

/// An alert state change produced by a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `{rule}|{deviceId}|{windowEnd}`.
    pub id: String,
    pub rule: Arc<str>,
    #[serde(rename = "deviceId")]
    pub device_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub window: Arc<str>,
    #[serde(rename = "windowStart")]
    pub window_start: String,
    #[serde(rename = "windowEnd")]
    pub window_end: String,
    /// The aggregate the condition tested.
    pub value: f64,
    pub state: AlertState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Raised,
    Cleared,
}

/// A device's latest accepted reading, as its partition last saw it: what the
/// `devices` stream carries (one per device changed since the partition's last output,
/// never one per event).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    pub device_id: String,
    pub kind: String,
    pub value: f64,
    /// `createdAt` of the reading, epoch ms.
    pub created_at: i64,
    pub seq: u64,
}

/// Why an input was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not valid JSON.
    Parse,
    /// Valid JSON, but not an event: a field missing or of the wrong type.
    Schema,
    /// Arrived after every window it belongs to had closed.
    Late,
    /// Its event time is more than `pipeline.max_clock_skew` ahead of its partition's
    /// event-time clock (a device clock that is wrong): it moves no watermark.
    Skew,
    /// A sink could not store an output record.
    Sink,
}

/// A rejected input, as written to the dead-letter sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: Reason,
    pub error: String,
    /// The raw message or event, exactly as received (lossy only for invalid UTF-8).
    pub payload: String,
    /// Where it came from, e.g. `events.ndjson:17`.
    pub source: String,
    #[serde(rename = "receivedAt")]
    pub received_at: String,
}

/// Column names of a closed-window `RecordBatch`, in order.
pub mod col {
    pub const WINDOW: usize = 0;
    pub const DEVICE_ID: usize = 1;
    pub const TYPE: usize = 2;
    pub const WINDOW_START: usize = 3;
    pub const WINDOW_END: usize = 4;
    pub const COUNT: usize = 5;
    pub const SUM: usize = 6;
    pub const AVG: usize = 7;
    pub const MIN: usize = 8;
    pub const MAX: usize = 9;
}

/// The Arrow schema of closed windows (one row per window, device and type).
pub fn window_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
            Arc::new(Schema::new(vec![
                Field::new("window", DataType::Utf8, false),
                Field::new("deviceId", DataType::Utf8, false),
                Field::new("type", DataType::Utf8, false),
                Field::new("windowStart", ts.clone(), false),
                Field::new("windowEnd", ts, false),
                Field::new("count", DataType::UInt64, false),
                Field::new("sum", DataType::Float64, false),
                Field::new("avg", DataType::Float64, false),
                Field::new("min", DataType::Float64, false),
                Field::new("max", DataType::Float64, false),
            ]))
        })
        .clone()
}

/// Wall-clock now in epoch milliseconds.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
