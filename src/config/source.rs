//! `[source]`: one table per kind, chosen by `kind`. Each kind's struct takes only its
//! own keys (any other is rejected when the table is read, naming it), so readers never
//! re-check which keys belong to which kind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::kafka::{
    KAFKA_SOURCE_OWNED, SaslMechanism, Secret, SecurityProtocol, check_properties, kafka_security,
};
use super::{ConfigError, Dur, FieldsConfig};
use crate::ingest::decode::Fields;

/// Which kind of source a `[source]` table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    File,
    Stdin,
    Simulator,
    Kafka,
    Http,
}

/// `[source]`, by kind.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    File(File),
    Stdin(Stdin),
    Simulator(Simulator),
    Kafka(Kafka),
    Http(Http),
}

/// `kind = "file"`: an NDJSON file read to its end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The NDJSON file to read.
    pub path: PathBuf,
    /// Which input member fills each role (`[source.fields]`).
    pub fields: Option<FieldsConfig>,
}

/// `kind = "stdin"`: NDJSON on standard input, to its end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdin {
    pub fields: Option<FieldsConfig>,
}

/// `kind = "http"`: bodies posted to the server's `POST /ingest`, until stopped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub fields: Option<FieldsConfig>,
}

/// `kind = "simulator"`: the built-in event generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulator {
    /// Number of devices (default 1000).
    pub devices: Option<u32>,
    /// Events per second; 0 or absent is as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this much wall-clock time.
    pub duration: Option<Dur>,
    /// Seed of the generated stream.
    pub seed: Option<u64>,
    /// Fraction of messages re-sent as duplicates.
    pub duplicates: Option<f64>,
    /// Largest lag of createdAt behind the device clock.
    pub max_disorder: Option<Dur>,
    /// Fraction of malformed messages.
    pub malformed: Option<f64>,
    /// Fraction of messages that are batches.
    pub batch_fraction: Option<f64>,
    /// Events per batch.
    pub batch_size: Option<u32>,
    /// Fields in complexData.
    pub complex_fields: Option<u32>,
    /// Devices whose CO2 swings around `threshold`.
    pub hot_devices: Option<u32>,
    /// The CO2 threshold the hot devices cross.
    pub threshold: Option<f64>,
    /// Each device reports about once per this event-time interval.
    pub interval: Option<Dur>,
    /// Event time of the first event, RFC 3339 or "now" (the default).
    pub start: Option<String>,
    pub fields: Option<FieldsConfig>,
}

/// `kind = "kafka"`: a consumer-group member (Kafka, Event Hubs' Kafka endpoint).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id (default `eventide`).
    pub group_id: Option<String>,
    /// Extra librdkafka properties, passed through as given.
    pub properties: Option<BTreeMap<String, String>>,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<SecurityProtocol>,
    /// `PLAIN` (default with a `sasl_` protocol), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user name (`$ConnectionString` for Event Hubs).
    pub sasl_username: Option<String>,
    /// The SASL password (prefer `sasl_password_env`); never logged.
    pub sasl_password: Option<Secret>,
    /// The environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
    /// A PEM file (or directory) of CA certificates to verify the brokers with
    /// (default: the system's).
    pub ssl_ca_location: Option<PathBuf>,
    /// End the run once every partition is consumed up to the end offset it had
    /// when the run started (default false).
    pub stop_at_end: Option<bool>,
    /// How often safe offsets are committed (default 1s).
    pub commit_interval: Option<Dur>,
    /// Keep checkpoints (offset + resume state) as records in this topic instead of
    /// in offset-commit metadata, for brokers that do not return commit metadata.
    /// Created (compacted, 1 partition) if missing.
    pub checkpoint_topic: Option<String>,
    /// Whether every message's events belong to the device it is keyed by
    /// (`by_device`, the default), or not (`any`: events are re-keyed by device
    /// through `repartition_topic` first).
    pub partitioning: Option<Partitioning>,
    /// `partitioning = "any"`: the topic events are re-keyed through (default
    /// `{group_id}-by-device`; created with the input's partition count if missing).
    pub repartition_topic: Option<String>,
    pub fields: Option<FieldsConfig>,
}

/// `[source] partitioning` (kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Every message's events belong to the device it is keyed by.
    #[default]
    ByDevice,
    /// Messages may mix devices or be keyed otherwise: events are de-batched and
    /// re-keyed by device through a repartition topic.
    Any,
}

kafka_security!(Kafka);

impl Kafka {
    pub fn group_id(&self) -> &str {
        self.group_id.as_deref().unwrap_or("eventide")
    }

    pub fn commit_interval(&self) -> Duration {
        self.commit_interval.map_or(Duration::from_secs(1), |d| d.0)
    }

    pub fn partitioning(&self) -> Partitioning {
        self.partitioning.unwrap_or_default()
    }

    /// `partitioning = "any"`: the repartition topic.
    pub fn repartition_topic(&self) -> String {
        self.repartition_topic
            .clone()
            .unwrap_or_else(|| format!("{}-by-device", self.group_id()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "source.brokers",
                "a kafka source needs brokers, e.g. \"127.0.0.1:9092\"",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "source.topics",
                "a kafka source needs a non-empty list of topics",
            ));
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ConfigError::invalid("source.group_id", "is empty"));
        }
        if let Some(t) = &self.checkpoint_topic
            && (t.trim().is_empty() || self.topics.contains(t))
        {
            return Err(ConfigError::invalid(
                "source.checkpoint_topic",
                "must name a topic of its own, not empty and not one of source.topics",
            ));
        }
        if let Some(t) = &self.repartition_topic {
            if self.partitioning() != Partitioning::Any {
                return Err(ConfigError::invalid(
                    "source.repartition_topic",
                    "is used only with partitioning = \"any\"",
                ));
            }
            if t.trim().is_empty() {
                return Err(ConfigError::invalid("source.repartition_topic", "is empty"));
            }
        }
        if self.partitioning() == Partitioning::Any {
            let t = self.repartition_topic();
            if self.topics.contains(&t) || self.checkpoint_topic.as_ref() == Some(&t) {
                return Err(ConfigError::invalid(
                    if self.repartition_topic.is_some() {
                        "source.repartition_topic"
                    } else {
                        "source.partitioning"
                    },
                    format!(
                        "the repartition topic {t:?} must be a topic of its own, not one of source.topics or the checkpoint topic"
                    ),
                ));
            }
        }
        check_properties("source.properties", &self.properties, KAFKA_SOURCE_OWNED)?;
        self.security().validate("source", &self.properties)?;
        if self.commit_interval.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(
                "source.commit_interval",
                "must be more than 0s",
            ));
        }
        Ok(())
    }
}

impl Simulator {
    fn validate(&self) -> Result<(), ConfigError> {
        for (k, v) in [
            ("duplicates", self.duplicates),
            ("malformed", self.malformed),
            ("batch_fraction", self.batch_fraction),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(ConfigError::invalid(
                    format!("source.{k}"),
                    format!("must be between 0 and 1, got {v}"),
                ));
            }
        }
        if self.rate.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
            return Err(ConfigError::invalid("source.rate", "must be a number ≥ 0"));
        }
        if self.devices == Some(0) {
            return Err(ConfigError::invalid("source.devices", "must be at least 1"));
        }
        if let Some(start) = &self.start
            && start != "now"
            && eventide_simulator::time::parse_rfc3339_ms(start).is_none()
        {
            return Err(ConfigError::invalid(
                "source.start",
                format!("must be RFC 3339 or \"now\", got {start:?}"),
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    /// Reads a `[source]` table: `kind` chooses the struct that takes the rest.
    pub(super) fn from_table(mut table: toml::Table) -> Result<Self, ConfigError> {
        let kind = super::kind::<SourceKind>(&mut table, "source", None)?;
        let at = "source";
        Ok(match kind {
            SourceKind::File => SourceConfig::File(super::typed(table, at)?),
            SourceKind::Stdin => SourceConfig::Stdin(super::typed(table, at)?),
            SourceKind::Simulator => SourceConfig::Simulator(super::typed(table, at)?),
            SourceKind::Kafka => SourceConfig::Kafka(super::typed(table, at)?),
            SourceKind::Http => SourceConfig::Http(super::typed(table, at)?),
        })
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::File(_) => SourceKind::File,
            SourceConfig::Stdin(_) => SourceKind::Stdin,
            SourceConfig::Simulator(_) => SourceKind::Simulator,
            SourceConfig::Kafka(_) => SourceKind::Kafka,
            SourceConfig::Http(_) => SourceKind::Http,
        }
    }

    /// `[source.fields]` as written.
    pub fn fields_config(&self) -> Option<&FieldsConfig> {
        match self {
            SourceConfig::File(s) => s.fields.as_ref(),
            SourceConfig::Stdin(s) => s.fields.as_ref(),
            SourceConfig::Simulator(s) => s.fields.as_ref(),
            SourceConfig::Kafka(s) => s.fields.as_ref(),
            SourceConfig::Http(s) => s.fields.as_ref(),
        }
    }

    /// The member names events are read with (validated with the config).
    pub fn fields(&self) -> Fields {
        self.fields_config()
            .cloned()
            .unwrap_or_default()
            .resolve()
            .expect("fields were validated with the config")
    }

    /// What the types alone cannot check.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            SourceConfig::Kafka(k) => k.validate(),
            SourceConfig::Simulator(s) => s.validate(),
            SourceConfig::File(_) | SourceConfig::Stdin(_) | SourceConfig::Http(_) => Ok(()),
        }
    }
}
