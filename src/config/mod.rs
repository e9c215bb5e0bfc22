//! Configuration: TOML, strict (unknown keys are errors), then [`Config::validate`].
//!
//! Every error names the offending key path (`windows[1].slide`, `sinks[0].path`), so
//! that `eventide check-config` can tell a user exactly what to fix. Sources, sinks
//! and the dead-letter sink are one struct per kind ([`source`], [`sink`]): `kind`
//! chooses the struct, which takes only that kind's keys.

pub mod kafka;
pub mod sink;
pub mod source;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub use kafka::{KafkaSecurity, SaslMechanism, Secret, SecurityProtocol, kafka_features};
pub use sink::{DeadLetterConfig, DeadLetterKind, SinkConfig, SinkKind, StdoutFormat};
pub use source::{SourceConfig, SourceKind};

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

/// `[[rules]] after`: a duration, or a reference column (`limits.silence_s`) giving
/// each device's in seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    Fixed(Dur),
    Column { table: String, column: String },
}

impl<'de> Deserialize<'de> for After {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = After;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#"a duration such as "45s", or a reference column such as "limits.silence_s""#,
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<After, E> {
                if let Ok(d) = humantime::parse_duration(s) {
                    return Ok(After::Fixed(Dur(d)));
                }
                let ident = |x: &str| {
                    x.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && x.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                match s.split_once('.') {
                    Some((t, c)) if ident(t) && ident(c) => Ok(After::Column {
                        table: t.into(),
                        column: c.into(),
                    }),
                    _ => Err(E::custom(format!(
                        "{s:?} is neither a duration (\"45s\") nor a reference column (\"limits.silence_s\")"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    pub windows: Vec<WindowConfig>,
    pub rules: Vec<RuleConfig>,
    pub sinks: Vec<SinkConfig>,
    pub dead_letter: DeadLetterConfig,
    /// `[server]`: present → the SQL/HTTP/PostgreSQL endpoints run.
    pub server: Option<ServerConfig>,
    /// `[[reference]]`: per-device tables rule expressions read.
    pub reference: Vec<ReferenceConfig>,
}

/// `[[reference]]`: a per-device table (CSV, JSON or NDJSON) that rule expressions
/// read as `name.column`, checked for changes every `reload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    pub name: String,
    pub path: PathBuf,
    pub reload: Option<Dur>,
}

impl ReferenceConfig {
    pub fn reload(&self) -> Dur {
        self.reload.unwrap_or(Dur(Duration::from_secs(10)))
    }
}

/// The file as read: the tables whose struct depends on their `kind` still tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    source: toml::Table,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    windows: Vec<WindowConfig>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    sinks: Vec<toml::Table>,
    dead_letter: Option<toml::Table>,
    server: Option<ServerConfig>,
    #[serde(default)]
    reference: Vec<ReferenceConfig>,
}

/// A serde error as a [`ConfigError`] naming its key: `at` (the table's path, or
/// empty) and the path within. For a missing or unknown field serde names the key only
/// in its message: it is added to the path.
fn path_error<E: serde::de::Error + fmt::Display>(
    at: &str,
    e: serde_path_to_error::Error<E>,
) -> ConfigError {
    let mut key = e.path().to_string();
    let message = one_line(&e.inner().to_string());
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
    let key = match (at, key.as_str()) {
        ("", _) => key,
        (_, ".") => at.to_owned(),
        _ => format!("{at}.{key}"),
    };
    ConfigError::invalid(key, message)
}

/// Reads the table at key path `at` into `T`.
fn typed<T: DeserializeOwned>(table: toml::Table, at: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| path_error(at, e))
}

/// Takes `kind` out of the table at `at` (`default` when absent, if it may be).
fn kind<K: DeserializeOwned>(
    table: &mut toml::Table,
    at: &str,
    default: Option<K>,
) -> Result<K, ConfigError> {
    let key = format!("{at}.kind");
    match (table.remove("kind"), default) {
        (Some(v), _) => {
            K::deserialize(v).map_err(|e| ConfigError::invalid(key, one_line(&e.to_string())))
        }
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ConfigError::invalid(key, "missing field `kind`")),
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
    /// An event more than this ahead of its partition's event-time clock (the median
    /// event time of recent events, not the maximum) moves no watermark and is
    /// dead-lettered with reason `skew` (default 1h).
    pub max_clock_skew: Option<Dur>,
    /// Whose clock closes windows: each device's own (the default) or the
    /// partition's.
    pub event_time: Option<EventTime>,
}

/// `pipeline.event_time`: which event-time clock a window waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventTime {
    /// Each device has its own watermark (its newest event time − `max_out_of_order`):
    /// one device's clock or backlog never makes another's events late.
    #[default]
    Device,
    /// One watermark per partition (its newest event time − `max_out_of_order`).
    Partition,
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
    pub fn max_clock_skew(&self) -> Dur {
        self.max_clock_skew
            .unwrap_or(Dur(Duration::from_secs(3600)))
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
    /// `threshold` (the default) or `absence`.
    #[serde(default)]
    pub kind: RuleKind,
    /// Threshold: the `[[windows]]` name whose closed windows the rule tests.
    #[serde(default)]
    pub window: String,
    /// Which windows (threshold) or series (absence) the rule looks at, e.g.
    /// `type = 'CO2'`.
    pub filter: Option<String>,
    /// Threshold: raise when this holds, e.g. `avg > 1000`.
    #[serde(default)]
    pub when: String,
    /// Threshold: clear when this holds, e.g. `avg < 950` (default: when `when` no
    /// longer holds).
    pub clear: Option<String>,
    /// Absence: how long a device (per type) may stay silent, in event time: a
    /// duration, or a reference column of seconds per device.
    pub after: Option<After>,
    /// Absence: a `[[reference]]` name whose devices must report: one it lists that
    /// is never seen raises `after` past when the run started watching.
    pub expect: Option<String>,
}

/// `[[rules]] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A condition over a window's aggregates, with hysteresis.
    #[default]
    Threshold,
    /// A device (per type) that sends nothing for `after`.
    Absence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Windows,
    Alerts,
    Devices,
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
        let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| path_error("", e))?;
        let sinks = raw
            .sinks
            .into_iter()
            .enumerate()
            .map(|(i, t)| SinkConfig::from_table(t, &format!("sinks[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = Config {
            source: SourceConfig::from_table(raw.source)?,
            pipeline: raw.pipeline,
            windows: raw.windows,
            rules: raw.rules,
            sinks,
            dead_letter: match raw.dead_letter {
                Some(t) => DeadLetterConfig::from_table(t)?,
                None => DeadLetterConfig::default(),
            },
            server: raw.server,
            reference: raw.reference,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what the types alone cannot: ranges, references, per-kind keys.
    /// Reads the secrets that the config names by environment variable (SASL
    /// passwords), once at start-up: an unset variable is an error naming its key.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if let SourceConfig::Kafka(k) = &mut self.source {
            k.resolve_password("source")?;
        }
        for (i, s) in self.sinks.iter_mut().enumerate() {
            if let SinkConfig::Kafka(k) = s {
                k.resolve_password(&format!("sinks[{i}]"))?;
            }
        }
        if let DeadLetterConfig::Kafka(k) = &mut self.dead_letter {
            k.resolve_password("dead_letter")?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.source.validate()?;
        let fields = self
            .source
            .fields_config()
            .cloned()
            .unwrap_or_default()
            .resolve()?;
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
        if let SourceConfig::Kafka(k) = &self.source
            && k.partitioning() == source::Partitioning::Any
            && p.dedupe(&fields) == DedupeMode::None
        {
            return Err(ConfigError::invalid(
                if p.dedupe.is_some() {
                    "pipeline.dedupe"
                } else {
                    "source.partitioning"
                },
                "partitioning = \"any\" needs dedupe (event_id, device_sequence or both): after a crash the repartition stage forwards some events again, and dedupe removes them",
            ));
        }
        if let Some(n) = p.partitions
            && (n == 0 || n > 1024)
        {
            return Err(ConfigError::invalid(
                "pipeline.partitions",
                format!("must be between 1 and 1024, got {n}"),
            ));
        }
        if p.max_clock_skew.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(
                "pipeline.max_clock_skew",
                "must be greater than 0s",
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
        let mut tables = std::collections::HashMap::new();
        for (i, r) in self.reference.iter().enumerate() {
            let key = |k: &str| format!("reference[{i}].{k}");
            check_name(&r.name, &key("name"))?;
            if r.reload.is_some_and(|d| d.0.is_zero()) {
                return Err(ConfigError::invalid(
                    key("reload"),
                    "must be greater than 0s",
                ));
            }
            let table = crate::reference::Table::load(&r.name, &r.path)
                .map_err(|e| ConfigError::invalid(key("path"), e))?;
            if tables.insert(r.name.as_str(), table).is_some() {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("duplicate reference name {:?}", r.name),
                ));
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
            if r.kind == RuleKind::Absence {
                validate_absence(r, &key, &tables)?;
                if r.expect.is_some()
                    && let SourceConfig::Kafka(k) = &self.source
                    && k.partitioning() != source::Partitioning::Any
                {
                    return Err(ConfigError::invalid(
                        key("expect"),
                        format!(
                            "rule {:?}: with a kafka source, expect needs source.partitioning = \"any\" (a device never seen is watched by the partition its id hashes to, which only the repartition topic guarantees is its partition)",
                            r.name
                        ),
                    ));
                }
                continue;
            }
            if r.expect.is_some() {
                return Err(ConfigError::invalid(
                    key("expect"),
                    format!(
                        "rule {:?}: only an absence rule (kind = \"absence\") takes expect",
                        r.name
                    ),
                ));
            }
            if r.after.is_some() {
                return Err(ConfigError::invalid(
                    key("after"),
                    format!(
                        "rule {:?}: only an absence rule (kind = \"absence\") takes after",
                        r.name
                    ),
                ));
            }
            if r.window.is_empty() {
                return Err(ConfigError::invalid(
                    key("window"),
                    format!("rule {:?}: a threshold rule names its window", r.name),
                ));
            }
            if r.when.is_empty() {
                return Err(ConfigError::invalid(
                    key("when"),
                    format!(
                        "rule {:?}: a threshold rule has a condition, e.g. when = \"avg > 1000\"",
                        r.name
                    ),
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
                    for (table, column) in parsed.references() {
                        let Some(t) = tables.get(table) else {
                            return Err(ConfigError::invalid(
                                key(k),
                                format!("rule {:?}: no [[reference]] is named {table:?}", r.name),
                            ));
                        };
                        if !t.columns.iter().any(|c| **c == *column) {
                            return Err(ConfigError::invalid(
                                key(k),
                                format!(
                                    "rule {:?}: reference {table:?} has no column {column:?} (it has: {})",
                                    r.name,
                                    t.columns.join(", ")
                                ),
                            ));
                        }
                    }
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
            s.validate(&format!("sinks[{i}]"))?;
        }
        self.dead_letter.validate()?;
        if let Some(server) = &self.server {
            validate_server(server)?;
        }
        if self.source.kind() == SourceKind::Http
            && self.server.as_ref().is_none_or(|s| s.http_addr().is_none())
        {
            return Err(ConfigError::invalid(
                "server.http",
                "an http source receives events on the HTTP server: add [server] with an http address",
            ));
        }
        Ok(())
    }
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

/// An absence rule: `after` (more than zero), a filter over `type` and `deviceId`
/// only, and none of a threshold rule's keys.
fn validate_absence(
    r: &RuleConfig,
    key: &dyn Fn(&str) -> String,
    tables: &std::collections::HashMap<&str, crate::reference::Table>,
) -> Result<(), ConfigError> {
    match &r.after {
        None => {
            return Err(ConfigError::invalid(
                key("after"),
                format!(
                    "rule {:?}: an absence rule says how long a device may stay silent, e.g. after = \"45s\"",
                    r.name
                ),
            ));
        }
        Some(After::Fixed(d)) if d.0.is_zero() => {
            return Err(ConfigError::invalid(
                key("after"),
                "must be greater than 0s",
            ));
        }
        Some(After::Fixed(_)) => {}
        Some(After::Column { table, column }) => match tables.get(table.as_str()) {
            None => {
                return Err(ConfigError::invalid(
                    key("after"),
                    format!("rule {:?}: no [[reference]] is named {table:?}", r.name),
                ));
            }
            Some(t) if !t.columns.iter().any(|c| **c == **column) => {
                return Err(ConfigError::invalid(
                    key("after"),
                    format!(
                        "rule {:?}: reference {table:?} has no column {column:?}",
                        r.name
                    ),
                ));
            }
            Some(_) => {}
        },
    }
    for (k, set) in [
        ("window", !r.window.is_empty()),
        ("when", !r.when.is_empty()),
        ("clear", r.clear.is_some()),
    ] {
        if set {
            return Err(ConfigError::invalid(
                key(k),
                format!(
                    "rule {:?}: an absence rule has no {k} (it raises when a device goes silent and clears when it reports again)",
                    r.name
                ),
            ));
        }
    }
    if let Some(table) = &r.expect
        && !tables.contains_key(table.as_str())
    {
        return Err(ConfigError::invalid(
            key("expect"),
            format!("rule {:?}: no [[reference]] is named {table:?}", r.name),
        ));
    }
    if let Some(text) = &r.filter {
        let parsed = expr::parse(text)
            .map_err(|e| ConfigError::invalid(key("filter"), format!("rule {:?}: {e}", r.name)))?;
        if parsed.first_aggregate().is_some() {
            return Err(ConfigError::invalid(
                key("filter"),
                format!(
                    "rule {:?}: an absence rule's filter tests type and deviceId only",
                    r.name
                ),
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
    fn webhook_keys_are_checked_and_named() {
        let webhook = |keys: &str| {
            GOOD.replace(
                "kind = \"jsonl\"\n        path = \"out/windows.jsonl\"",
                &format!("kind = \"webhook\"\n{keys}"),
            )
        };
        let ok = Config::parse(&webhook("url = \"https://h.example/x\"")).unwrap();
        assert_eq!(ok.sinks[0].streams(), vec![Stream::Alerts]);
        for (keys, key) in [
            ("", "sinks[0].url"),
            ("url = \"h.example\"", "sinks[0].url"),
            (
                "url = \"https://h\"\nstreams = [\"windows\"]",
                "sinks[0].streams",
            ),
            (
                "url = \"https://h\"\nheaders = { \"a b\" = \"x\" }",
                "sinks[0].headers.a b",
            ),
            ("url = \"https://h\"\ntimeout = \"0s\"", "sinks[0].timeout"),
            (
                "url = \"https://h\"\nmax_concurrency = 0",
                "sinks[0].max_concurrency",
            ),
            ("url = \"https://h\"\npath = \"x\"", "sinks[0].path"),
        ] {
            assert_eq!(key_of(&webhook(keys)), key, "{keys}");
        }
    }

    /// Each kind's table takes only its own keys: another kind's key is named, with
    /// the keys this kind has.
    #[test]
    fn a_key_of_another_kind_is_named() {
        let file = GOOD.replace("path = \"events.ndjson\"", "path = \"e\"\nrate = 10");
        let e = Config::parse(&file).unwrap_err();
        assert_eq!(e.key(), Some("source.rate"));
        assert!(e.to_string().contains("`path`"), "{e}");
        let stdout = GOOD.replace(
            "kind = \"jsonl\"\n        path = \"out/windows.jsonl\"",
            "kind = \"stdout\"\n        path = \"out/windows.jsonl\"",
        );
        assert_eq!(key_of(&stdout), "sinks[0].path");
        assert_eq!(
            key_of(&format!(
                "{GOOD}\n[dead_letter]\nkind = \"stderr\"\npath = \"x\""
            )),
            "dead_letter.path"
        );
        assert_eq!(
            key_of(&format!("{GOOD}\n[dead_letter]\nkind = \"kafka\"")),
            "dead_letter.brokers"
        );
        assert_eq!(
            key_of(&GOOD.replace("kind = \"file\"", "kind = \"files\"")),
            "source.kind"
        );
        assert_eq!(
            key_of(&GOOD.replace("kind = \"file\"\n", "")),
            "source.kind"
        );
        assert_eq!(
            key_of(&GOOD.replace("path = \"events.ndjson\"", "")),
            "source.path"
        );
        // A value of the right kind's key is still named at its own path.
        let kafka = GOOD.replace(
            "kind = \"file\"\n        path = \"events.ndjson\"",
            "kind = \"kafka\"\n        brokers = \"b:9092\"\n        topics = [\"t\"]\n        commit_interval = \"soon\"",
        );
        assert_eq!(key_of(&kafka), "source.commit_interval");
        let c = Config::parse(&GOOD.replace(
            "kind = \"jsonl\"",
            "kind = \"jsonl\"\n        append = true",
        ))
        .unwrap();
        assert!(matches!(&c.sinks[0], SinkConfig::Jsonl(j) if j.append == Some(true)));
        assert_eq!(c.dead_letter.kind(), DeadLetterKind::Jsonl);
    }

    #[test]
    fn reference_tables_are_checked_with_the_rules_that_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("limits.csv");
        std::fs::write(&csv, "deviceId,co2_max\nd1,900\n").unwrap();
        let with = |path: &str, when: &str| {
            GOOD.replace("when = \"avg > 1000\"", &format!("when = \"{when}\""))
                + &format!("\n[[reference]]\nname = \"limits\"\npath = \"{path}\"\n")
        };
        let good = with(&csv.display().to_string(), "avg > limits.co2_max * 1.1");
        let c = Config::parse(&good).unwrap();
        assert_eq!(c.reference[0].reload().ms(), 10_000);
        assert_eq!(
            key_of(&with("/no/such.csv", "avg > 1")),
            "reference[0].path"
        );
        let csv_text = csv.display().to_string();
        assert_eq!(
            key_of(&with(&csv_text, "avg > limits.co2_mx")),
            "rules[0].when"
        );
        assert_eq!(
            key_of(&with(&csv_text, "avg > caps.co2_max")),
            "rules[0].when"
        );
        std::fs::write(&csv, "deviceId,co2_max\nd1,lots\n").unwrap();
        assert_eq!(key_of(&good), "reference[0].path");
    }

    #[test]
    fn repartitioning_needs_dedupe() {
        let kafka = |pipeline: &str| {
            format!(
                "[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"t\"]\npartitioning = \"any\"\n[pipeline]\n{pipeline}\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\"\n"
            )
        };
        assert!(
            Config::parse(&kafka("")).is_ok(),
            "dedupe by event id by default"
        );
        assert!(Config::parse(&kafka("dedupe = \"device_sequence\"")).is_ok());
        assert_eq!(key_of(&kafka("dedupe = \"none\"")), "pipeline.dedupe");
        // A rule watching listed devices: fine when re-keyed, refused otherwise.
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("fleet.csv");
        std::fs::write(&table, "deviceId\nd1\n").unwrap();
        let expecting = |text: String| {
            format!(
                "{text}[[rules]]\nname = \"roll_call\"\nkind = \"absence\"\nafter = \"1m\"\nexpect = \"fleet\"\n[[reference]]\nname = \"fleet\"\npath = \"{}\"\n",
                table.display()
            )
        };
        assert!(Config::parse(&expecting(kafka(""))).is_ok());
        assert_eq!(
            key_of(&expecting(
                kafka("").replace("partitioning = \"any\"\n", "")
            )),
            "rules[0].expect"
        );
    }

    #[test]
    fn absence_rules_are_checked() {
        let absence = |body: &str| {
            format!("{GOOD}\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\n{body}\n")
        };
        let c = Config::parse(&absence("after = \"45s\"\nfilter = \"type = 'CO2'\"")).unwrap();
        assert_eq!(c.rules[1].kind, RuleKind::Absence);
        assert_eq!(
            c.rules[1].after,
            Some(After::Fixed(Dur(Duration::from_secs(45))))
        );
        assert_eq!(
            key_of(&absence("after = \"limits.silence_s\"")),
            "rules[1].after"
        );
        assert_eq!(
            key_of(&absence("after = \"forty seconds\"")),
            "rules[1].after"
        );
        assert_eq!(key_of(&absence("")), "rules[1].after");
        assert_eq!(key_of(&absence("after = \"0s\"")), "rules[1].after");
        assert_eq!(
            key_of(&absence("after = \"45s\"\nwhen = \"avg > 1\"")),
            "rules[1].when"
        );
        assert_eq!(
            key_of(&absence("after = \"45s\"\nwindow = \"sliding_5m\"")),
            "rules[1].window"
        );
        assert_eq!(
            key_of(&absence("after = \"45s\"\nfilter = \"avg > 3\"")),
            "rules[1].filter"
        );
        assert_eq!(
            key_of(&absence("after = \"45s\"").replace("\"absence\"", "\"sometimes\"")),
            "rules[1].kind"
        );
        assert_eq!(
            key_of(&GOOD.replace(
                "when = \"avg > 1000\"",
                "when = \"avg > 1000\"\nafter = \"1m\""
            )),
            "rules[0].after"
        );
        assert_eq!(
            key_of(&absence("after = \"45s\"\nexpect = \"fleet\"")),
            "rules[1].expect"
        );
        assert_eq!(
            key_of(&GOOD.replace(
                "when = \"avg > 1000\"",
                "when = \"avg > 1000\"\nexpect = \"fleet\""
            )),
            "rules[0].expect"
        );
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
