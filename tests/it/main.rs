//! eventide's integration tests, in one test binary: every test binary links
//! DataFusion, librdkafka and the Azure SDK, so one binary builds and links once.
//!
//! - [`config_files`]: the shipped configs, `check-config`, the deploy manifests.
//! - [`end_to_end`]: the binary against an independent reference model, every layout.
//! - [`properties`]: property tests of decode, dedupe and windows against the model.
//! - [`sql`]: SQL over HTTP, the real `psql` and tokio-postgres.
//! - [`kafka`]: librdkafka's mock cluster and a tansu broker (TLS, SASL, rebalances).
//! - [`cosmos`]: a Cosmos NoSQL API server behind a fault-injecting proxy.
//! - [`webhook`]: an HTTP server on loopback receiving alerts, failing on purpose.

mod common;
mod config_files;
mod cosmos;
mod end_to_end;
mod kafka;
mod properties;
mod sql;
mod webhook;
