//! eventide: windowed complex-event processing for IoT telemetry.
//!
//! ```text
//!  ingest/                 one actor per partition                         sinks/
//!  ┌─────────────┐ route  ┌───────────────────────────────────────────┐  ┌──────────────┐
//!  │ file        │ hash of│ decode → filter → dedupe → watermark       │  │ jsonl        │
//!  │ stdin       │deviceId│ → panes (columns) → close windows → rules │─▶│ stdout       │
//!  │ simulator   │───────▶│ (windows/, rules/)                        │  │ dead-letter  │
//!  └─────────────┘        └───────────────────────────────────────────┘  └──────────────┘
//! ```
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, strict parsing and `validate()`.
//! - [`event`]: the shared data model: decoded event, alert, dead letter, the Arrow
//!   schema of closed windows.
//! - [`ingest`]: sources (file, stdin, simulator), de-batching, routing, decoding.
//! - [`dedupe`]: duplicate detection by event id and by device sequence number.
//! - [`windows`]: panes, tumbling and sliding windows, closing by watermark.
//! - [`rules`]: threshold rules with hysteresis, and their expression language.
//! - [`sinks`]: JSONL and stdout sinks, the dead-letter sink.
//! - [`pipeline`]: wiring, the partition actor, accounting.
//! - [`sql`]: DataFusion tables over the live state, HTTP and PostgreSQL endpoints,
//!   metrics, and the `http` source's ingest endpoint.
//!
//! Errors: hot-path errors are plain enums ([`ingest::decode::DecodeError`]); the rest
//! are `thiserror` enums beside the code that raises them; `anyhow` only in `main.rs`.

pub mod config;
pub mod dedupe;
pub mod event;
pub(crate) mod hint;
pub mod ingest;
pub mod pipeline;
pub mod rules;
pub mod sinks;
pub mod sql;
pub mod windows;

/// The embedded demo's configuration (`eventide run` with no config).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
