//! Configuration: TOML, strict (unknown keys are errors), then [`Config::validate`].
//!
//! Every error names the offending key path (`windows[1].slide`), so that
//! `eventide check-config` can tell a user exactly what to fix.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::ingest::decode::{Fields, TimeFormat};
use crate::rules::expr;

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

/// A duration written as a string: `"500ms"`, `"5s"`, `"1m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn ms(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128 / 4) as i64
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration string such as "500ms", "5s" or "1m""#)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s)
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// `[server]`: present → the SQL/HTTP/PostgreSQL endpoints run.
    pub server: Option<ServerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    File,
    Stdin,
    Simulator,
    Kafka,
    Http,
}

/// `[source]`. One table for every kind; `validate` rejects keys that do not
/// belong to the chosen kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// file: the NDJSON file to read.
    pub path: Option<PathBuf>,
    /// simulator: number of devices (default 1000).
    pub devices: Option<u32>,
    /// simulator: events per second; 0 or absent is as fast as possible.
    pub rate: Option<f64>,
    /// simulator: stop after this many events.
    pub count: Option<u64>,
    /// simulator: stop after this much wall-clock time.
    pub duration: Option<Dur>,
    /// simulator: seed of the generated stream.
    pub seed: Option<u64>,
    /// simulator: fraction of messages re-sent as duplicates.
    pub duplicates: Option<f64>,
    /// simulator: largest lag of createdAt behind the device clock.
    pub max_disorder: Option<Dur>,
    /// simulator: fraction of malformed messages.
    pub malformed: Option<f64>,
    /// simulator: fraction of messages that are batches.
    pub batch_fraction: Option<f64>,
    /// simulator: events per batch.
    pub batch_size: Option<u32>,
    /// simulator: fields in complexData.
    pub complex_fields: Option<u32>,
    /// simulator: devices whose CO2 swings around `threshold`.
    pub hot_devices: Option<u32>,
    /// simulator: the CO2 threshold the hot devices cross.
    pub threshold: Option<f64>,
    /// simulator: each device reports about once per this event-time interval.
    pub interval: Option<Dur>,
    /// simulator: event time of the first event, RFC 3339 or "now" (the default).
    pub start: Option<String>,
    /// kafka: bootstrap servers, `host:port[,host:port…]`.
    pub brokers: Option<String>,
    /// kafka: topics to consume.
    pub topics: Option<Vec<String>>,
    /// kafka: consumer group id (default `eventide`).
    pub group_id: Option<String>,
    /// kafka: extra librdkafka properties, passed through as given.
    pub properties: Option<BTreeMap<String, String>>,
    /// kafka: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<SecurityProtocol>,
    /// kafka: `PLAIN` (default with a `sasl_` protocol), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// kafka: the SASL user name (`$ConnectionString` for Event Hubs).
    pub sasl_username: Option<String>,
    /// kafka: the SASL password (prefer `sasl_password_env`); never logged.
    pub sasl_password: Option<Secret>,
    /// kafka: the environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
    /// kafka: a PEM file (or directory) of CA certificates to verify the brokers with
    /// (default: the system's).
    pub ssl_ca_location: Option<PathBuf>,
    /// kafka: end the run once every partition is consumed up to the end offset it
    /// had when the run started (default false).
    pub stop_at_end: Option<bool>,
    /// kafka: how often safe offsets are committed (default 1s).
    pub commit_interval: Option<Dur>,
    /// Which input member fills each role (`[source.fields]`, every kind).
    pub fields: Option<FieldsConfig>,
    /// kafka: keep checkpoints (offset + resume state) as records in this topic
    /// instead of in offset-commit metadata, for brokers that do not return commit
    /// metadata. Created (compacted, 1 partition) if missing.
    pub checkpoint_topic: Option<String>,
}

impl SourceConfig {
    /// The member names events are read with (validated with the config).
    pub fn fields(&self) -> Fields {
        self.fields
            .clone()
            .unwrap_or_default()
            .resolve()
            .expect("fields were validated with the config")
    }
    pub fn group_id(&self) -> &str {
        self.group_id.as_deref().unwrap_or("eventide")
    }
    pub fn commit_interval(&self) -> Duration {
        self.commit_interval.map_or(Duration::from_secs(1), |d| d.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupeMode {
    /// By `eventId` (the default: ids are meant to be unique, sequence numbers not
    /// always are).
    #[default]
    EventId,
    /// By (`deviceId`, `deviceSequenceNumber`).
    DeviceSequence,
    /// Either.
    Both,
    /// Keep everything.
    None,
}

impl DedupeMode {
    /// Whether events are deduplicated by `eventId`.
    pub fn by_event_id(self) -> bool {
        matches!(self, DedupeMode::EventId | DedupeMode::Both)
    }

    /// Whether events are deduplicated by (`deviceId`, `deviceSequenceNumber`).
    pub fn by_sequence(self) -> bool {
        matches!(self, DedupeMode::DeviceSequence | DedupeMode::Both)
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Partition actors (default: the number of cores).
    pub partitions: Option<usize>,
    /// How far behind the newest event time an event may arrive (default 5s).
    pub max_out_of_order: Option<Dur>,
    /// How long past its end (in watermark time) a window stays open (default 0s).
    pub allowed_lateness: Option<Dur>,
    /// After this long without events a partition's watermark follows the wall clock
    /// (default 10s).
    pub idle_timeout: Option<Dur>,
    /// How duplicates are recognised (default event_id; device_sequence when the input
    /// has no event id, none when it has neither). Sequence gaps are counted in every
    /// mode that has sequence numbers.
    pub dedupe: Option<DedupeMode>,
    /// How long (in event time) event ids are remembered; default
    /// max_out_of_order + allowed_lateness + the largest window.
    pub dedupe_horizon: Option<Dur>,
    /// Event types to keep; others are counted as filtered. Absent: keep all.
    pub types: Option<Vec<String>>,
}

impl PipelineConfig {
    pub fn partitions(&self) -> usize {
        self.partitions.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    }
    pub fn max_out_of_order(&self) -> Dur {
        self.max_out_of_order.unwrap_or(Dur(Duration::from_secs(5)))
    }
    pub fn allowed_lateness(&self) -> Dur {
        self.allowed_lateness.unwrap_or_default()
    }
    pub fn idle_timeout(&self) -> Dur {
        self.idle_timeout.unwrap_or(Dur(Duration::from_secs(10)))
    }
    /// The dedupe mode, given which of the roles dedupe reads the input has.
    pub fn dedupe(&self, fields: &Fields) -> DedupeMode {
        self.dedupe
            .unwrap_or(match (&fields.event_id, &fields.sequence) {
                (Some(_), _) => DedupeMode::EventId,
                (None, Some(_)) => DedupeMode::DeviceSequence,
                (None, None) => DedupeMode::None,
            })
    }
}

/// `[source.fields]`: which input member fills each role (every key optional; the
/// contract's names by default; `""` for a role the input does not have).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    pub event_id: Option<String>,
    pub device_id: Option<String>,
    pub sequence: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<ValueNames>,
    pub time: Option<String>,
    pub time_format: Option<TimeFormatConfig>,
}

/// `value`: one member, or a list of members each of which is its own series.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ValueNames {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormatConfig {
    Rfc3339,
    EpochMs,
    EpochS,
}

impl FieldsConfig {
    /// The decoder's [`Fields`]; the error names the key (`source.fields.…`).
    pub fn resolve(&self) -> Result<Fields, ConfigError> {
        let named = |v: &Option<String>, default: &'static str| -> Option<String> {
            match v.as_deref() {
                None => Some(default.to_string()),
                Some("") => None,
                Some(n) => Some(n.to_string()),
            }
        };
        let event_id = named(&self.event_id, "eventId");
        let sequence = named(&self.sequence, "deviceSequenceNumber");
        let kind = named(&self.kind, "type");
        let device_id = self.device_id.clone().unwrap_or_else(|| "deviceId".into());
        let time = self.time.clone().unwrap_or_else(|| "createdAt".into());
        let values: Vec<String> = match &self.value {
            None => vec!["value".into()],
            Some(ValueNames::One(v)) => vec![v.clone()],
            Some(ValueNames::Many(v)) => v.clone(),
        };
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let time_format = match self.time_format {
            None | Some(TimeFormatConfig::Rfc3339) => TimeFormat::Rfc3339,
            Some(TimeFormatConfig::EpochMs) => TimeFormat::EpochMs,
            Some(TimeFormatConfig::EpochS) => TimeFormat::EpochS,
        };
        Fields::new(
            event_id.as_deref(),
            &device_id,
            sequence.as_deref(),
            kind.as_deref(),
            &values,
            &time,
            time_format,
        )
        .map_err(|(key, message)| ConfigError::invalid(format!("source.fields.{key}"), message))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Tumbling,
    Sliding,
}

/// `[[windows]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub name: String,
    pub kind: WindowKind,
    pub size: Dur,
    /// sliding only: how far apart window starts are.
    pub slide: Option<Dur>,
}

impl WindowConfig {
    /// The slide, which for a tumbling window is its size.
    pub fn slide(&self) -> Dur {
        self.slide.unwrap_or(self.size)
    }
}

/// `[[rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// The `[[windows]]` name whose closed windows the rule tests.
    pub window: String,
    /// Which windows the rule looks at, e.g. `type = 'CO2'`.
    pub filter: Option<String>,
    /// Raise when this holds, e.g. `avg > 1000`.
    pub when: String,
    /// Clear when this holds, e.g. `avg < 950` (default: when `when` no longer holds).
    pub clear: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Windows,
    Alerts,
    Devices,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Jsonl,
    Stdout,
    Cosmos,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// One JSON record per line (the contract's records).
    #[default]
    Json,
    /// Alerts one per line and a summary per closed window set, for people.
    Pretty,
}

/// `[[sinks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// Which records this sink receives (default: windows and alerts).
    pub streams: Option<Vec<Stream>>,
    /// jsonl: the file to write.
    pub path: Option<PathBuf>,
    /// jsonl: append to an existing file instead of replacing it (default false).
    pub append: Option<bool>,
    /// stdout: `json` (default) or `pretty`.
    pub format: Option<StdoutFormat>,
    /// kafka: bootstrap servers.
    pub brokers: Option<String>,
    /// kafka: topic of window records (default `eventide-windows`).
    pub windows_topic: Option<String>,
    /// kafka: topic of alert records (default `eventide-alerts`).
    pub alerts_topic: Option<String>,
    /// kafka: extra librdkafka producer properties.
    pub properties: Option<BTreeMap<String, String>>,
    /// kafka: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<SecurityProtocol>,
    /// kafka: `PLAIN` (default with a `sasl_` protocol), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// kafka: the SASL user name (`$ConnectionString` for Event Hubs).
    pub sasl_username: Option<String>,
    /// kafka: the SASL password (prefer `sasl_password_env`); never logged.
    pub sasl_password: Option<Secret>,
    /// kafka: the environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
    /// kafka: a PEM file (or directory) of CA certificates to verify the brokers with
    /// (default: the system's).
    pub ssl_ca_location: Option<PathBuf>,
    /// kafka, cosmos: how often a record whose delivery failed is sent again before it
    /// is dead-lettered with reason `sink` (default 5 for kafka, 10 for cosmos).
    pub max_retries: Option<u32>,
    /// cosmos: the account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    pub endpoint: Option<String>,
    /// cosmos: the account key (prefer `key_env`).
    pub key: Option<String>,
    /// cosmos: the environment variable holding the account key.
    pub key_env: Option<String>,
    /// cosmos: the database.
    pub database: Option<String>,
    /// cosmos: container of device state documents (default `devices`).
    pub devices_container: Option<String>,
    /// cosmos: container of window records (default `windows`).
    pub windows_container: Option<String>,
    /// cosmos: container of alert records (default `alerts`).
    pub alerts_container: Option<String>,
    /// cosmos: create the database and containers (partition key `/deviceId`) when
    /// they are missing (default false).
    pub create_if_missing: Option<bool>,
    /// cosmos: how many writes are in flight at once (default 32).
    pub max_concurrency: Option<u32>,
    /// cosmos: how often device documents are written; updates of one device in
    /// between are coalesced into one write (default 1s).
    pub flush_interval: Option<Dur>,
}

/// The security keys of a Kafka client's table, seen together.
macro_rules! kafka_security {
    ($t:ty) => {
        impl $t {
            /// This table's Kafka security keys.
            pub fn security(&self) -> KafkaSecurity<'_> {
                KafkaSecurity {
                    protocol: self.security_protocol,
                    mechanism: self.sasl_mechanism,
                    username: self.sasl_username.as_deref(),
                    password: self.sasl_password.as_ref(),
                    password_env: self.sasl_password_env.as_deref(),
                    ca_location: self.ssl_ca_location.as_deref(),
                }
            }

            /// The librdkafka properties of this client: the security keys', then
            /// `properties` as given.
            pub fn kafka_properties(&self) -> BTreeMap<String, String> {
                let mut p: BTreeMap<String, String> =
                    self.security().properties().into_iter().collect();
                p.extend(self.properties.clone().into_iter().flatten());
                p
            }

            /// Reads the SASL password from `sasl_password_env` (at start-up, not
            /// at check-config, as the Cosmos key); `key` is the table's path.
            fn resolve_password(&mut self, key: &str) -> Result<(), ConfigError> {
                if let Some(var) = &self.sasl_password_env {
                    let value = std::env::var(var).map_err(|_| {
                        ConfigError::invalid(
                            format!("{key}.sasl_password_env"),
                            format!("the environment variable {var} is not set"),
                        )
                    })?;
                    self.sasl_password = Some(Secret(value));
                }
                Ok(())
            }
        }
    };
}
kafka_security!(SourceConfig);
kafka_security!(SinkConfig);
kafka_security!(DeadLetterConfig);

/// `security_protocol`: how a Kafka client talks to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SecurityProtocol {
    #[serde(rename = "plaintext", alias = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "ssl", alias = "SSL")]
    Ssl,
    #[serde(rename = "sasl_plaintext", alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "sasl_ssl", alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// `sasl_mechanism`: the SASL mechanisms this build serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A secret from the config: its `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The security keys of one Kafka client (source, kafka sink, kafka dead-letter).
#[derive(Debug, Clone, Copy)]
pub struct KafkaSecurity<'a> {
    pub protocol: Option<SecurityProtocol>,
    pub mechanism: Option<SaslMechanism>,
    pub username: Option<&'a str>,
    pub password: Option<&'a Secret>,
    pub password_env: Option<&'a str>,
    pub ca_location: Option<&'a Path>,
}

impl KafkaSecurity<'_> {
    /// The first security key set, if any (for tables whose kind is not Kafka).
    fn first_set(&self) -> Option<&'static str> {
        [
            ("security_protocol", self.protocol.is_some()),
            ("sasl_mechanism", self.mechanism.is_some()),
            ("sasl_username", self.username.is_some()),
            ("sasl_password", self.password.is_some()),
            ("sasl_password_env", self.password_env.is_some()),
            ("ssl_ca_location", self.ca_location.is_some()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k))
    }

    /// Checks the keys together, and against what this build of librdkafka serves
    /// and the properties given beside them; `table` is the key path of the table.
    fn validate(
        &self,
        table: &str,
        properties: &Option<BTreeMap<String, String>>,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{table}.{k}");
        let protocol = self.protocol.unwrap_or(SecurityProtocol::Plaintext);
        let sasl = [
            ("sasl_mechanism", self.mechanism.is_some()),
            ("sasl_username", self.username.is_some()),
            ("sasl_password", self.password.is_some()),
            ("sasl_password_env", self.password_env.is_some()),
        ];
        if !protocol.sasl()
            && let Some((k, _)) = sasl.iter().find(|(_, set)| *set)
        {
            return Err(ConfigError::invalid(
                key(k),
                "needs security_protocol = \"sasl_plaintext\" or \"sasl_ssl\"",
            ));
        }
        if protocol.sasl() {
            if self.username.is_none_or(str::is_empty) {
                return Err(ConfigError::invalid(
                    key("sasl_username"),
                    format!(
                        "security_protocol = \"{}\" needs a user name",
                        protocol.librdkafka()
                    ),
                ));
            }
            match (self.password, self.password_env) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        key("sasl_password_env"),
                        "give sasl_password or sasl_password_env, not both",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        key("sasl_password"),
                        "a SASL login needs sasl_password or sasl_password_env",
                    ));
                }
                (None, Some("")) => {
                    return Err(ConfigError::invalid(key("sasl_password_env"), "is empty"));
                }
                _ => {}
            }
        }
        if let Some(ca) = self.ca_location {
            if !protocol.tls() {
                return Err(ConfigError::invalid(
                    key("ssl_ca_location"),
                    "needs security_protocol = \"ssl\" or \"sasl_ssl\"",
                ));
            }
            if !ca.exists() {
                return Err(ConfigError::invalid(
                    key("ssl_ca_location"),
                    format!("{} does not exist", ca.display()),
                ));
            }
        }
        for (k, first_class) in [
            ("security.protocol", "security_protocol"),
            ("sasl.mechanism", "sasl_mechanism"),
            ("sasl.mechanisms", "sasl_mechanism"),
            ("sasl.username", "sasl_username"),
            ("sasl.password", "sasl_password"),
            ("ssl.ca.location", "ssl_ca_location"),
        ] {
            if properties.as_ref().is_some_and(|p| p.contains_key(k)) && self.first_set().is_some()
            {
                return Err(ConfigError::invalid(
                    format!("{table}.properties.{k}"),
                    format!("set {first_class} instead (not both ways)"),
                ));
            }
        }
        // What the build must serve: TLS, and the SASL mechanism.
        let features = kafka_features();
        let given_protocol = properties
            .as_ref()
            .and_then(|p| p.get("security.protocol"))
            .map(|v| v.to_ascii_lowercase());
        let needs_tls = protocol.tls()
            || given_protocol
                .as_deref()
                .is_some_and(|p| p == "ssl" || p == "sasl_ssl");
        if needs_tls && !features.split(',').any(|f| f == "ssl") {
            return Err(ConfigError::invalid(
                key("security_protocol"),
                format!("this build of librdkafka has no TLS (features: {features})"),
            ));
        }
        let mechanism = match (protocol.sasl(), self.mechanism) {
            (true, m) => Some(m.unwrap_or(SaslMechanism::Plain)),
            (false, _) => None,
        };
        let feature = match mechanism {
            Some(SaslMechanism::Plain) => Some("sasl_plain"),
            Some(_) => Some("sasl_scram"),
            None => None,
        };
        if let Some(f) = feature
            && !features.split(',').any(|x| x == f)
        {
            return Err(ConfigError::invalid(
                key("sasl_mechanism"),
                format!("this build of librdkafka does not serve it (features: {features})"),
            ));
        }
        Ok(())
    }

    /// The librdkafka properties these keys stand for (the password as resolved).
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let Some(protocol) = self.protocol else {
            return p;
        };
        p.push(("security.protocol".into(), protocol.librdkafka().into()));
        if protocol.sasl() {
            let m = self.mechanism.unwrap_or(SaslMechanism::Plain);
            p.push(("sasl.mechanism".into(), m.librdkafka().into()));
            p.push((
                "sasl.username".into(),
                self.username.unwrap_or_default().into(),
            ));
            if let Some(pw) = self.password {
                p.push(("sasl.password".into(), pw.0.clone()));
            }
        }
        if let Some(ca) = self.ca_location {
            p.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        p
    }
}

/// librdkafka's `builtin.features` in this build (e.g. `…,ssl,sasl,sasl_plain,sasl_scram,…`).
pub fn kafka_features() -> String {
    use rdkafka::bindings as rd;
    // SAFETY: a fresh configuration object is created, read and destroyed; the
    // buffer is as large as the size passed.
    unsafe {
        let conf = rd::rd_kafka_conf_new();
        let mut buf = [0 as std::ffi::c_char; 1024];
        let mut size = buf.len();
        let ok = rd::rd_kafka_conf_get(
            conf,
            c"builtin.features".as_ptr(),
            buf.as_mut_ptr(),
            &mut size,
        );
        rd::rd_kafka_conf_destroy(conf);
        if ok != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
            return String::new();
        }
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

impl SinkConfig {
    pub fn streams(&self) -> Vec<Stream> {
        self.streams
            .clone()
            .unwrap_or_else(|| vec![Stream::Windows, Stream::Alerts])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    #[default]
    Jsonl,
    Stdout,
    Stderr,
    Kafka,
}

/// `[dead_letter]`: where rejected input goes, with its reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    #[serde(default)]
    pub kind: DeadLetterKind,
    /// jsonl: the file (default `dead-letter.jsonl`).
    pub path: Option<PathBuf>,
    /// jsonl: append instead of replacing (default false).
    pub append: Option<bool>,
    /// kafka: bootstrap servers.
    pub brokers: Option<String>,
    /// kafka: topic of dead-letter records (default `eventide-dead-letter`).
    pub topic: Option<String>,
    /// kafka: extra librdkafka producer properties.
    pub properties: Option<BTreeMap<String, String>>,
    /// kafka: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<SecurityProtocol>,
    /// kafka: `PLAIN` (default with a `sasl_` protocol), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// kafka: the SASL user name (`$ConnectionString` for Event Hubs).
    pub sasl_username: Option<String>,
    /// kafka: the SASL password (prefer `sasl_password_env`); never logged.
    pub sasl_password: Option<Secret>,
    /// kafka: the environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
    /// kafka: a PEM file (or directory) of CA certificates to verify the brokers with
    /// (default: the system's).
    pub ssl_ca_location: Option<PathBuf>,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            kind: DeadLetterKind::Jsonl,
            path: None,
            append: None,
            brokers: None,
            topic: None,
            properties: None,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_env: None,
            ssl_ca_location: None,
        }
    }
}

impl DeadLetterConfig {
    pub fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("dead-letter.jsonl"))
    }
}

/// `[server]`: the query, metrics and ingest endpoints. The section's presence turns
/// them on; each address can be `"off"`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP address (SQL, metrics, health, ingest); default 127.0.0.1:8080.
    pub http: Option<String>,
    /// PostgreSQL wire protocol address; default 127.0.0.1:5433.
    pub postgres: Option<String>,
    /// How long closed windows and alerts stay queryable, in event time (default 1h).
    pub retention: Option<Dur>,
    /// Bearer token the HTTP endpoints require (required off loopback).
    pub token: Option<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// PostgreSQL user name (default `eventide`).
    pub user: Option<String>,
    /// PostgreSQL password (required off loopback).
    pub password: Option<String>,
    /// Environment variable holding the PostgreSQL password.
    pub password_env: Option<String>,
    /// A query running longer is cancelled (default 10s).
    pub query_timeout: Option<Dur>,
    /// A query returning more rows fails (default 100000).
    pub max_rows: Option<u64>,
    /// How often partitions publish their live state for queries (default 100ms).
    pub snapshot_interval: Option<Dur>,
    /// Keep serving after a finite input has ended, until interrupted (default false).
    pub keep_serving: Option<bool>,
}

pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_POSTGRES: &str = "127.0.0.1:5433";

impl ServerConfig {
    fn addr(v: &Option<String>, default: &str) -> Option<SocketAddr> {
        match v.as_deref() {
            Some("off") => None,
            Some(a) => a.parse().ok(),
            None => default.parse().ok(),
        }
    }
    /// The HTTP address, or None when `"off"`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        Self::addr(&self.http, DEFAULT_HTTP)
    }
    /// The PostgreSQL address, or None when `"off"`.
    pub fn postgres_addr(&self) -> Option<SocketAddr> {
        Self::addr(&self.postgres, DEFAULT_POSTGRES)
    }
    pub fn retention(&self) -> Dur {
        self.retention.unwrap_or(Dur(Duration::from_secs(3600)))
    }
    pub fn query_timeout(&self) -> Dur {
        self.query_timeout.unwrap_or(Dur(Duration::from_secs(10)))
    }
    pub fn max_rows(&self) -> u64 {
        self.max_rows.unwrap_or(100_000)
    }
    pub fn snapshot_interval(&self) -> Dur {
        self.snapshot_interval
            .unwrap_or(Dur(Duration::from_millis(100)))
    }
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("eventide")
    }
    /// The bearer token, from `token` or the variable `token_env` names.
    pub fn token(&self) -> Option<String> {
        secret(&self.token, &self.token_env)
    }
    /// The PostgreSQL password, from `password` or the variable `password_env` names.
    pub fn password(&self) -> Option<String> {
        secret(&self.password, &self.password_env)
    }
}

fn secret(value: &Option<String>, env: &Option<String>) -> Option<String> {
    value
        .clone()
        .or_else(|| env.as_ref().and_then(|v| std::env::var(v).ok()))
        .filter(|s| !s.is_empty())
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::invalid("(file)", one_line(&e.to_string())))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let message = one_line(&e.inner().to_string());
            // For a missing field serde names the key only in its message: add it to the path.
            let named = |marker: &str| {
                message
                    .split(marker)
                    .nth(1)
                    .and_then(|r| r.split('`').next())
                    .map(str::to_owned)
            };
            if let Some(field) = named("unknown field `").or_else(|| named("missing field `")) {
                if key == "." {
                    key = field;
                } else if !key.ends_with(&field) {
                    key = format!("{key}.{field}");
                }
            }
            ConfigError::invalid(key, message)
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what the types alone cannot: ranges, references, per-kind keys.
    /// Reads the secrets that the config names by environment variable (SASL
    /// passwords), once at start-up: an unset variable is an error naming its key.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.source.kind == SourceKind::Kafka {
            self.source.resolve_password("source")?;
        }
        for (i, s) in self.sinks.iter_mut().enumerate() {
            if s.kind == SinkKind::Kafka {
                s.resolve_password(&format!("sinks[{i}]"))?;
            }
        }
        if self.dead_letter.kind == DeadLetterKind::Kafka {
            self.dead_letter.resolve_password("dead_letter")?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_source()?;
        let fields = self.source.fields.clone().unwrap_or_default().resolve()?;
        let p = &self.pipeline;
        if let Some(mode) = p.dedupe {
            if mode.by_event_id() && fields.event_id.is_none() {
                return Err(ConfigError::invalid(
                    "pipeline.dedupe",
                    format!(
                        "{mode:?} needs event ids, but source.fields.event_id is \"\" (use device_sequence or none)"
                    ),
                ));
            }
            if mode.by_sequence() && fields.sequence.is_none() {
                return Err(ConfigError::invalid(
                    "pipeline.dedupe",
                    format!(
                        "{mode:?} needs sequence numbers, but source.fields.sequence is \"\" (use event_id or none)"
                    ),
                ));
            }
        }
        if let Some(n) = p.partitions
            && (n == 0 || n > 1024)
        {
            return Err(ConfigError::invalid(
                "pipeline.partitions",
                format!("must be between 1 and 1024, got {n}"),
            ));
        }
        if p.idle_timeout.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(
                "pipeline.idle_timeout",
                "must be greater than 0s",
            ));
        }
        if let Some(types) = &p.types
            && types.is_empty()
        {
            return Err(ConfigError::invalid(
                "pipeline.types",
                "is empty, so every event would be filtered; remove the key to keep all types",
            ));
        }
        if self.windows.is_empty() {
            return Err(ConfigError::invalid(
                "windows",
                "at least one [[windows]] table is required",
            ));
        }
        let mut names = HashSet::new();
        for (i, w) in self.windows.iter().enumerate() {
            let key = |k: &str| format!("windows[{i}].{k}");
            check_name(&w.name, &key("name"))?;
            if !names.insert(w.name.as_str()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("duplicate window name {:?}", w.name),
                ));
            }
            if w.size.0.as_millis() == 0 || w.size.0.subsec_nanos() % 1_000_000 != 0 {
                return Err(ConfigError::invalid(
                    key("size"),
                    format!("must be a whole number of milliseconds > 0, got {}", w.size),
                ));
            }
            match (w.kind, w.slide) {
                (WindowKind::Tumbling, Some(_)) => {
                    return Err(ConfigError::invalid(
                        key("slide"),
                        "only sliding windows have a slide",
                    ));
                }
                (WindowKind::Sliding, None) => {
                    return Err(ConfigError::invalid(
                        key("slide"),
                        "a sliding window needs a slide",
                    ));
                }
                (WindowKind::Sliding, Some(slide)) => {
                    if slide.0.as_millis() == 0 || slide.0.subsec_nanos() % 1_000_000 != 0 {
                        return Err(ConfigError::invalid(
                            key("slide"),
                            format!("must be a whole number of milliseconds > 0, got {slide}"),
                        ));
                    }
                    if slide > w.size {
                        return Err(ConfigError::invalid(
                            key("slide"),
                            format!("must not exceed size ({}), got {slide}", w.size),
                        ));
                    }
                }
                (WindowKind::Tumbling, None) => {}
            }
        }
        let mut rule_names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            check_name(&r.name, &key("name"))?;
            if !rule_names.insert(r.name.as_str()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            if !names.contains(r.window.as_str()) {
                return Err(ConfigError::invalid(
                    key("window"),
                    format!("no [[windows]] is named {:?}", r.window),
                ));
            }
            let exprs = [
                ("filter", r.filter.as_deref()),
                ("when", Some(r.when.as_str())),
                ("clear", r.clear.as_deref()),
            ];
            for (k, text) in exprs {
                if let Some(text) = text {
                    let parsed = expr::parse(text).map_err(|e| {
                        ConfigError::invalid(key(k), format!("rule {:?}: {e}", r.name))
                    })?;
                    if k != "filter" && parsed.first_aggregate().is_none() {
                        return Err(ConfigError::invalid(
                            key(k),
                            format!(
                                "rule {:?}: the condition must test an aggregate (count, sum, avg, min, max)",
                                r.name
                            ),
                        ));
                    }
                }
            }
        }
        for (i, s) in self.sinks.iter().enumerate() {
            self.validate_sink(i, s)?;
        }
        let d = &self.dead_letter;
        if d.kind != DeadLetterKind::Jsonl && (d.path.is_some() || d.append.is_some()) {
            let k = if d.path.is_some() { "path" } else { "append" };
            return Err(ConfigError::invalid(
                format!("dead_letter.{k}"),
                "only the jsonl dead-letter kind writes a file",
            ));
        }
        let kafka_keys = [
            ("brokers", d.brokers.is_some()),
            ("topic", d.topic.is_some()),
            ("properties", d.properties.is_some()),
        ];
        if d.kind == DeadLetterKind::Kafka {
            if d.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    "dead_letter.brokers",
                    "a kafka dead-letter sink needs brokers",
                ));
            }
            if d.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(ConfigError::invalid("dead_letter.topic", "is empty"));
            }
            check_properties("dead_letter.properties", &d.properties, KAFKA_SINK_OWNED)?;
            d.security().validate("dead_letter", &d.properties)?;
        } else if let Some(k) = d.security().first_set() {
            return Err(ConfigError::invalid(
                format!("dead_letter.{k}"),
                "only the kafka dead-letter kind has this key",
            ));
        } else if let Some((k, _)) = kafka_keys.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(
                format!("dead_letter.{k}"),
                "only the kafka dead-letter kind has this key",
            ));
        }
        if let Some(server) = &self.server {
            validate_server(server)?;
        }
        if self.source.kind == SourceKind::Http
            && self.server.as_ref().is_none_or(|s| s.http_addr().is_none())
        {
            return Err(ConfigError::invalid(
                "server.http",
                "an http source receives events on the HTTP server: add [server] with an http address",
            ));
        }
        Ok(())
    }

    fn validate_source(&self) -> Result<(), ConfigError> {
        let s = &self.source;
        let set: Vec<(&str, bool)> = vec![
            ("path", s.path.is_some()),
            ("devices", s.devices.is_some()),
            ("rate", s.rate.is_some()),
            ("count", s.count.is_some()),
            ("duration", s.duration.is_some()),
            ("seed", s.seed.is_some()),
            ("duplicates", s.duplicates.is_some()),
            ("max_disorder", s.max_disorder.is_some()),
            ("malformed", s.malformed.is_some()),
            ("batch_fraction", s.batch_fraction.is_some()),
            ("batch_size", s.batch_size.is_some()),
            ("complex_fields", s.complex_fields.is_some()),
            ("hot_devices", s.hot_devices.is_some()),
            ("threshold", s.threshold.is_some()),
            ("interval", s.interval.is_some()),
            ("start", s.start.is_some()),
            ("brokers", s.brokers.is_some()),
            ("topics", s.topics.is_some()),
            ("group_id", s.group_id.is_some()),
            ("properties", s.properties.is_some()),
            ("stop_at_end", s.stop_at_end.is_some()),
            ("commit_interval", s.commit_interval.is_some()),
            ("checkpoint_topic", s.checkpoint_topic.is_some()),
        ];
        if s.kind != SourceKind::Kafka
            && let Some(k) = s.security().first_set()
        {
            return Err(ConfigError::invalid(
                format!("source.{k}"),
                format!("not a key of a {:?} source", s.kind).to_lowercase(),
            ));
        }
        let allowed: &[&str] = match s.kind {
            SourceKind::File => &["path"],
            SourceKind::Stdin => &[],
            SourceKind::Simulator => &[
                "devices",
                "rate",
                "count",
                "duration",
                "seed",
                "duplicates",
                "max_disorder",
                "malformed",
                "batch_fraction",
                "batch_size",
                "complex_fields",
                "hot_devices",
                "threshold",
                "interval",
                "start",
            ],
            SourceKind::Http => &[],
            SourceKind::Kafka => &[
                "brokers",
                "topics",
                "group_id",
                "properties",
                "stop_at_end",
                "commit_interval",
                "checkpoint_topic",
            ],
        };
        for (k, present) in set {
            if present && !allowed.contains(&k) {
                return Err(ConfigError::invalid(
                    format!("source.{k}"),
                    format!("not a key of a {:?} source", s.kind).to_lowercase(),
                ));
            }
        }
        if s.kind == SourceKind::Kafka {
            if s.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    "source.brokers",
                    "a kafka source needs brokers, e.g. \"127.0.0.1:9092\"",
                ));
            }
            match &s.topics {
                Some(t) if !t.is_empty() && t.iter().all(|t| !t.trim().is_empty()) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "source.topics",
                        "a kafka source needs a non-empty list of topics",
                    ));
                }
            }
            if s.group_id.as_deref() == Some("") {
                return Err(ConfigError::invalid("source.group_id", "is empty"));
            }
            if let Some(t) = &s.checkpoint_topic
                && (t.trim().is_empty() || s.topics.iter().flatten().any(|x| x == t))
            {
                return Err(ConfigError::invalid(
                    "source.checkpoint_topic",
                    "must name a topic of its own, not empty and not one of source.topics",
                ));
            }
            check_properties("source.properties", &s.properties, KAFKA_SOURCE_OWNED)?;
            s.security().validate("source", &s.properties)?;
            if s.commit_interval.is_some_and(|d| d.0.is_zero()) {
                return Err(ConfigError::invalid(
                    "source.commit_interval",
                    "must be more than 0s",
                ));
            }
        }
        if s.kind == SourceKind::File && s.path.is_none() {
            return Err(ConfigError::invalid(
                "source.path",
                "a file source needs a path",
            ));
        }
        for (k, v) in [
            ("duplicates", s.duplicates),
            ("malformed", s.malformed),
            ("batch_fraction", s.batch_fraction),
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
        if s.rate.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
            return Err(ConfigError::invalid("source.rate", "must be a number ≥ 0"));
        }
        if s.devices == Some(0) {
            return Err(ConfigError::invalid("source.devices", "must be at least 1"));
        }
        if let Some(start) = &s.start
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

    fn validate_sink(&self, i: usize, s: &SinkConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sinks[{i}].{k}");
        match s.kind {
            SinkKind::Jsonl => {
                if s.path.is_none() {
                    return Err(ConfigError::invalid(
                        key("path"),
                        "a jsonl sink needs a path",
                    ));
                }
                if s.format.is_some() {
                    return Err(ConfigError::invalid(
                        key("format"),
                        "only the stdout sink has a format",
                    ));
                }
            }
            SinkKind::Stdout => {
                if s.path.is_some() || s.append.is_some() {
                    let k = if s.path.is_some() { "path" } else { "append" };
                    return Err(ConfigError::invalid(
                        key(k),
                        "the stdout sink writes no file",
                    ));
                }
            }
            SinkKind::Kafka => {
                if s.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        key("brokers"),
                        "a kafka sink needs brokers",
                    ));
                }
                for (k, t) in [
                    ("windows_topic", &s.windows_topic),
                    ("alerts_topic", &s.alerts_topic),
                ] {
                    if t.as_deref().is_some_and(|t| t.trim().is_empty()) {
                        return Err(ConfigError::invalid(key(k), "is empty"));
                    }
                }
                check_properties(&key("properties"), &s.properties, KAFKA_SINK_OWNED)?;
                s.security()
                    .validate(&format!("sinks[{i}]"), &s.properties)?;
                let file_keys = [
                    ("path", s.path.is_some()),
                    ("append", s.append.is_some()),
                    ("format", s.format.is_some()),
                ];
                if let Some((k, _)) = file_keys.iter().find(|(_, set)| *set) {
                    return Err(ConfigError::invalid(key(k), "a kafka sink writes no file"));
                }
            }
            SinkKind::Cosmos => validate_cosmos(s, &key)?,
        }
        if s.kind != SinkKind::Kafka
            && let Some(k) = s.security().first_set()
        {
            return Err(ConfigError::invalid(
                key(k),
                "only kafka sinks have this key",
            ));
        }
        if s.kind != SinkKind::Kafka {
            let misplaced = [
                ("brokers", s.brokers.is_some()),
                ("windows_topic", s.windows_topic.is_some()),
                ("alerts_topic", s.alerts_topic.is_some()),
                ("properties", s.properties.is_some()),
            ];
            if let Some((k, _)) = misplaced.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(
                    key(k),
                    "only kafka sinks have this key",
                ));
            }
        }
        if !matches!(s.kind, SinkKind::Kafka | SinkKind::Cosmos) && s.max_retries.is_some() {
            return Err(ConfigError::invalid(
                key("max_retries"),
                "only kafka and cosmos sinks have this key",
            ));
        }
        if s.kind != SinkKind::Cosmos {
            let misplaced = [
                ("endpoint", s.endpoint.is_some()),
                ("key", s.key.is_some()),
                ("key_env", s.key_env.is_some()),
                ("database", s.database.is_some()),
                ("devices_container", s.devices_container.is_some()),
                ("windows_container", s.windows_container.is_some()),
                ("alerts_container", s.alerts_container.is_some()),
                ("create_if_missing", s.create_if_missing.is_some()),
                ("max_concurrency", s.max_concurrency.is_some()),
                ("flush_interval", s.flush_interval.is_some()),
            ];
            if let Some((k, _)) = misplaced.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(
                    key(k),
                    "only cosmos sinks have this key",
                ));
            }
        }
        if let Some(streams) = &s.streams {
            if streams.is_empty() {
                return Err(ConfigError::invalid(
                    key("streams"),
                    "is empty: name windows and/or alerts",
                ));
            }
            if streams.contains(&Stream::Devices) && s.kind != SinkKind::Cosmos {
                return Err(ConfigError::invalid(
                    key("streams"),
                    "the devices stream is written by the cosmos sink only",
                ));
            }
        }
        Ok(())
    }
}

/// The keys of a `cosmos` sink: where the account is, how to authenticate, and
/// that its names and limits are usable.
fn validate_cosmos(s: &SinkConfig, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match s.endpoint.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(ConfigError::invalid(
                key("endpoint"),
                "a cosmos sink needs an endpoint, e.g. https://myaccount.documents.azure.com:443/",
            ));
        }
        Some(e) => match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err(ConfigError::invalid(
                    key("endpoint"),
                    format!("must be an http(s) URL with a host, got {e:?}"),
                ));
            }
            Err(err) => {
                return Err(ConfigError::invalid(
                    key("endpoint"),
                    format!("is not a URL ({err}): {e:?}"),
                ));
            }
        },
    }
    match (&s.key, &s.key_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                key("key_env"),
                "give key or key_env, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                key("key"),
                "a cosmos sink needs key or key_env (the account key)",
            ));
        }
        (Some(k), None) if k.trim().is_empty() => {
            return Err(ConfigError::invalid(key("key"), "is empty"));
        }
        (None, Some(v)) if v.trim().is_empty() => {
            return Err(ConfigError::invalid(key("key_env"), "is empty"));
        }
        _ => {}
    }
    if s.database.as_deref().is_none_or(|d| d.trim().is_empty()) {
        return Err(ConfigError::invalid(
            key("database"),
            "a cosmos sink needs a database",
        ));
    }
    for (k, v) in [
        ("database", &s.database),
        ("devices_container", &s.devices_container),
        ("windows_container", &s.windows_container),
        ("alerts_container", &s.alerts_container),
    ] {
        if let Some(v) = v
            && (v.trim().is_empty() || v.contains(['/', '\\', '?', '#']))
        {
            return Err(ConfigError::invalid(
                key(k),
                format!("must be a non-empty name without / \\ ? #, got {v:?}"),
            ));
        }
    }
    if s.max_concurrency == Some(0) {
        return Err(ConfigError::invalid(
            key("max_concurrency"),
            "must be at least 1",
        ));
    }
    if s.flush_interval.is_some_and(|d| d.0.is_zero()) {
        return Err(ConfigError::invalid(
            key("flush_interval"),
            "must be more than 0s",
        ));
    }
    let file_keys = [
        ("path", s.path.is_some()),
        ("append", s.append.is_some()),
        ("format", s.format.is_some()),
    ];
    if let Some((k, _)) = file_keys.iter().find(|(_, set)| *set) {
        return Err(ConfigError::invalid(key(k), "a cosmos sink writes no file"));
    }
    Ok(())
}

/// librdkafka consumer properties eventide sets itself: offsets are committed by the
/// pipeline (never automatically), and partitions are assigned by the group.
const KAFKA_SOURCE_OWNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];
/// Producer properties eventide sets itself (idempotent, keyed delivery).
const KAFKA_SINK_OWNED: &[&str] = &["bootstrap.servers", "enable.idempotence"];

/// Extra librdkafka properties: names must look like properties and must not
/// override the ones eventide's guarantees rest on.
fn check_properties(
    key: &str,
    props: &Option<BTreeMap<String, String>>,
    owned: &[&str],
) -> Result<(), ConfigError> {
    for name in props.iter().flat_map(|p| p.keys()) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "is not a librdkafka property name",
            ));
        }
        if owned.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "is set by eventide (use the section's own keys)",
            ));
        }
    }
    Ok(())
}

fn check_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('|') || name.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            key,
            format!("must be non-empty without '|' or control characters, got {name:?}"),
        ));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn validate_server(s: &ServerConfig) -> Result<(), ConfigError> {
    let mut exposed = (false, false);
    for (k, v, default) in [
        ("http", &s.http, DEFAULT_HTTP),
        ("postgres", &s.postgres, DEFAULT_POSTGRES),
    ] {
        let text = v.as_deref().unwrap_or(default);
        if text == "off" {
            continue;
        }
        let addr = text.parse::<SocketAddr>().map_err(|e| {
            ConfigError::invalid(
                format!("server.{k}"),
                format!("not a socket address or \"off\" ({text:?}): {e}"),
            )
        })?;
        if !addr.ip().is_loopback() {
            if k == "http" {
                exposed.0 = true;
            } else {
                exposed.1 = true;
            }
        }
    }
    for (k, v) in [
        ("token_env", &s.token_env),
        ("password_env", &s.password_env),
    ] {
        if let Some(var) = v
            && std::env::var(var).map_or(true, |x| x.is_empty())
        {
            return Err(ConfigError::invalid(
                format!("server.{k}"),
                format!("environment variable {var} is not set"),
            ));
        }
    }
    if s.token.is_some() && s.token_env.is_some() {
        return Err(ConfigError::invalid(
            "server.token_env",
            "set token or token_env, not both",
        ));
    }
    if s.password.is_some() && s.password_env.is_some() {
        return Err(ConfigError::invalid(
            "server.password_env",
            "set password or password_env, not both",
        ));
    }
    if exposed.0 && s.token().is_none() {
        return Err(ConfigError::invalid(
            "server.token",
            "the HTTP server listens beyond loopback: set token or token_env (clients send `Authorization: Bearer <token>`)",
        ));
    }
    if exposed.1 && s.password().is_none() {
        return Err(ConfigError::invalid(
            "server.password",
            "the PostgreSQL server listens beyond loopback: set password or password_env",
        ));
    }
    if s.max_rows == Some(0) {
        return Err(ConfigError::invalid(
            "server.max_rows",
            "must be at least 1",
        ));
    }
    for (k, v) in [
        ("query_timeout", s.query_timeout),
        ("snapshot_interval", s.snapshot_interval),
        ("retention", s.retention),
    ] {
        if v.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(
                format!("server.{k}"),
                "must be more than 0",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [source]
        kind = "file"
        path = "events.ndjson"
        [pipeline]
        partitions = 2
        max_out_of_order = "5s"
        dedupe = "both"
        [[windows]]
        name = "tumbling_1m"
        kind = "tumbling"
        size = "1m"
        [[windows]]
        name = "sliding_5m"
        kind = "sliding"
        size = "5m"
        slide = "1m"
        [[rules]]
        name = "co2_high"
        window = "sliding_5m"
        filter = "type = 'CO2'"
        when = "avg > 1000"
        clear = "avg < 950"
        [[sinks]]
        kind = "jsonl"
        path = "out/windows.jsonl"
    "#;

    fn key_of(text: &str) -> String {
        Config::parse(text)
            .unwrap_err()
            .key()
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn a_good_config_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.windows[1].slide().ms(), 60_000);
        assert_eq!(c.pipeline.max_out_of_order().ms(), 5_000);
        assert_eq!(c.sinks[0].streams(), vec![Stream::Windows, Stream::Alerts]);
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(
            key_of(&GOOD.replace("partitions = 2", "partitons = 2")),
            "pipeline.partitons"
        );
        assert_eq!(
            key_of(&GOOD.replace("size = \"1m\"", "sise = \"1m\"")),
            "windows[0].sise"
        );
        assert_eq!(key_of(&format!("{GOOD}\n[bogus]\nx = 1")), "bogus");
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            key_of(&GOOD.replace("size = \"1m\"", "size = \"1 fortnight\"")),
            "windows[0].size"
        );
        assert_eq!(
            key_of(&GOOD.replace("slide = \"1m\"", "slide = \"6m\"")),
            "windows[1].slide"
        );
        assert_eq!(
            key_of(&GOOD.replace("dedupe = \"both\"", "dedupe = \"sometimes\"")),
            "pipeline.dedupe"
        );
        assert_eq!(
            key_of(&GOOD.replace("partitions = 2", "partitions = 0")),
            "pipeline.partitions"
        );
        assert_eq!(
            key_of(&GOOD.replace("window = \"sliding_5m\"", "window = \"nope\"")),
            "rules[0].window"
        );
        assert_eq!(
            key_of(&GOOD.replace("avg > 1000", "avg >> 1000")),
            "rules[0].when"
        );
        assert_eq!(
            key_of(&GOOD.replace("avg < 950", "colour < 950")),
            "rules[0].clear"
        );
        assert_eq!(
            key_of(&GOOD.replace("path = \"events.ndjson\"", "")),
            "source.path"
        );
        assert_eq!(
            key_of(&GOOD.replace("path = \"events.ndjson\"", "path = \"e\"\nrate = 5.0")),
            "source.rate"
        );
        assert_eq!(
            key_of(&GOOD.replace("kind = \"jsonl\"", "kind = \"parquet\"")),
            "sinks[0].kind"
        );
        assert_eq!(
            key_of(&GOOD.replace("name = \"sliding_5m\"", "name = \"tumbling_1m\"")),
            "windows[1].name"
        );
    }

    #[test]
    fn server_keys_are_checked_and_named() {
        let with = |server: &str| format!("{GOOD}\n[server]\n{server}\n");
        let ok = Config::parse(&with("")).unwrap();
        let s = ok.server.as_ref().unwrap();
        assert_eq!(s.http_addr().unwrap().to_string(), DEFAULT_HTTP);
        assert_eq!(s.postgres_addr().unwrap().to_string(), DEFAULT_POSTGRES);
        assert_eq!(s.max_rows(), 100_000);
        assert_eq!(s.retention().0, Duration::from_secs(3600));
        assert!(
            Config::parse(GOOD).unwrap().server.is_none(),
            "no [server], no endpoints"
        );
        let off = Config::parse(&with("http = \"off\"\npostgres = \"off\"")).unwrap();
        assert!(off.server.unwrap().http_addr().is_none());
        assert_eq!(key_of(&with("http = \"localhost\"")), "server.http");
        assert_eq!(
            key_of(&with("postgres = \"1.2.3.4:99999\"")),
            "server.postgres"
        );
        assert_eq!(key_of(&with("http = \"0.0.0.0:8080\"")), "server.token");
        assert_eq!(
            key_of(&with(
                "http = \"0.0.0.0:8080\"\ntoken = \"t\"\npostgres = \"0.0.0.0:5433\""
            )),
            "server.password"
        );
        Config::parse(&with(
            "http = \"0.0.0.0:8080\"\ntoken = \"t\"\npostgres = \"0.0.0.0:5433\"\npassword = \"p\"",
        ))
        .unwrap();
        assert_eq!(
            key_of(&with("token_env = \"EVENTIDE_TEST_SURELY_UNSET_VAR\"")),
            "server.token_env"
        );
        assert_eq!(key_of(&with("max_rows = 0")), "server.max_rows");
        assert_eq!(
            key_of(&with("query_timeout = \"0s\"")),
            "server.query_timeout"
        );
        assert_eq!(key_of(&with("colour = 1")), "server.colour");
        let http_source = GOOD.replace(
            "kind = \"file\"\n        path = \"events.ndjson\"",
            "kind = \"http\"",
        );
        assert_eq!(key_of(&http_source), "server.http");
        Config::parse(&format!("{http_source}\n[server]\n")).unwrap();
    }

    #[test]
    fn the_rule_name_is_in_an_expression_error() {
        let err = Config::parse(&GOOD.replace("avg > 1000", "avg > ")).unwrap_err();
        assert!(err.to_string().contains("co2_high"), "{err}");
    }
}
