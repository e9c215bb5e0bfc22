//! eventide: windowed complex-event processing for IoT telemetry.
//!
//! Data flows one way: sources produce blocks for partitions, the runtime runs one
//! actor per partition, the actors hand outputs to the sink thread. The live board
//! sits below all of them; SQL reads it.
//!
//! ```text
//!  ingest/                  pipeline/ (the runtime)                        sinks/
//!  ┌──────────────┐ Feed   ┌───────────────────────────────────────────┐  ┌──────────────┐
//!  │ file, stdin, │ per    │ one actor per partition, one loop:        │  │ jsonl stdout │
//!  │ simulator,   │ part-  │ decode → filter → dedupe → watermark      │─▶│ kafka cosmos │
//!  │ http (routed │ ition  │ → panes → close windows → rules           │  │ retention    │
//!  │ by deviceId) │───────▶│ (windows/, rules/, dedupe)                │  │ dead-letter  │
//!  │ kafka        │ Host   │ (per device or per partition event time)  │  │ webhook      │
//!  └──────────────┘        └───────────────────────────────────────────┘  └──────────────┘
//!                                    │ snapshots, counts                      │ retained
//!                                    ▼                                        ▼
//!          live (the board: Hub, counts, snapshots)  ◀── sql/ (DataFusion, HTTP, PostgreSQL)
//!          output (Output, Checkpoint)   kafka (librdkafka plumbing)   config   event
//!          reference (tables rules read, reloaded by a thread of their own)
//! ```
//!
//! # Layout
//!
//! - [`reference`](mod@reference): per-device reference tables (CSV, JSON, NDJSON) that rule
//!   expressions read, loaded and reloaded; it imports nothing of the crate.
//! - [`config`]: the TOML configuration, strict parsing and `validate()`; sources, sinks
//!   and the dead-letter sink one struct per kind ([`config::source`], [`config::sink`]),
//!   the Kafka client keys they share ([`config::kafka`]).
//! - [`event`]: the shared data model: alert, dead letter, device update, the Arrow
//!   schema of closed windows, time formatting.
//! - [`output`]: what partitions hand the sinks ([`output::Output`]) and a source
//!   position safe to commit once written ([`output::Checkpoint`]).
//! - [`live`]: the live board: partition snapshots, counts, retained windows and
//!   alerts, sink counters, the run's phase, the `http` source's queue.
//! - [`kafka`]: librdkafka plumbing shared by the Kafka source, its checkpoint log
//!   and the Kafka sinks.
//! - [`ingest`]: sources (file, stdin, simulator, http, kafka), de-batching, routing,
//!   decoding, and the source/runtime contract ([`ingest::feed`]: `Feed`, `Host`);
//!   for Kafka input not keyed by device, the stage that re-keys it through a
//!   repartition topic ([`ingest::repartition`]).
//! - [`dedupe`]: duplicate detection by event id and by device sequence number.
//! - [`windows`]: panes, tumbling and sliding windows, closing by a partition's
//!   watermark or by each device's.
//! - [`rules`]: threshold rules with hysteresis, absence rules, and their expression
//!   language.
//! - [`pipeline`]: the runtime (every partition actor, the one actor loop), the
//!   partition state machine, wiring and accounting.
//! - [`sinks`]: JSONL, stdout, Kafka, Cosmos DB, webhooks, retention for queries; dead
//!   letters.
//! - [`sql`]: DataFusion tables over the live board, HTTP and PostgreSQL endpoints,
//!   metrics.
//!
//! Imports go down this list's dependency order: `ingest` imports none of
//! `pipeline`, `sinks` or `sql`; `pipeline` and `sinks` do not import `sql`; no module
//! imports one that imports it back (`.ci/import-cycles.py` checks).
//!
//! Errors: hot-path errors are plain enums ([`ingest::decode::DecodeError`]); the rest
//! are `thiserror` enums beside the code that raises them; `anyhow` only in `main.rs`.

pub mod config;
pub mod dedupe;
pub mod event;
pub(crate) mod hint;
pub mod ingest;
pub mod kafka;
pub mod live;
pub mod output;
pub mod pipeline;
pub mod reference;
pub mod rules;
pub mod sinks;
pub mod sql;
pub mod windows;

/// The embedded demo's configuration (`eventide run` with no config).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
