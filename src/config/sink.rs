//! `[[sinks]]` and `[dead_letter]`: one table per kind, chosen by `kind`. Each kind's
//! struct takes only its own keys (any other is rejected when the table is read,
//! naming it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::kafka::{
    KAFKA_SINK_OWNED, SaslMechanism, Secret, SecurityProtocol, check_properties, kafka_security,
};
use super::{ConfigError, Dur, Stream};

/// Which kind of sink a `[[sinks]]` table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Jsonl,
    Stdout,
    Cosmos,
    Kafka,
    Webhook,
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

/// `[[sinks]]`, by kind.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Jsonl(Jsonl),
    Stdout(Stdout),
    Kafka(Kafka),
    Cosmos(Cosmos),
    Webhook(Webhook),
}

/// How the `webhook` sink writes an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The contract's alert record.
    #[default]
    Json,
    /// A CloudEvents 1.0 event, structured mode, the alert record as its `data`.
    Cloudevents,
}

/// `kind = "webhook"`: each alert POSTed to an HTTP(S) endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Only `alerts` (the default).
    pub streams: Option<Vec<Stream>>,
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// `json` (default) or `cloudevents`.
    pub format: Option<WebhookFormat>,
    /// Headers sent with every request (e.g. `{ "aeg-sas-key" = "…" }` for Event Grid,
    /// `{ Authorization = "Bearer …" }`).
    pub headers: Option<BTreeMap<String, String>>,
    /// How often a failed request is sent again before the alert is dead-lettered
    /// with reason `sink` (default 5).
    pub max_retries: Option<u32>,
    /// How long one request may take (default 10s).
    pub timeout: Option<Dur>,
    /// How many devices' alerts are sent at once (default 8; one device's in order).
    pub max_concurrency: Option<u32>,
}

impl Webhook {
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(std::time::Duration::from_secs(10), |d| d.0)
    }

    fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        match url::Url::parse(self.url.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err(ConfigError::invalid(
                    key("url"),
                    format!("must be an http(s) URL with a host, got {:?}", self.url),
                ));
            }
            Err(e) => {
                return Err(ConfigError::invalid(
                    key("url"),
                    format!("is not a URL ({e}): {:?}", self.url),
                ));
            }
        }
        for (name, value) in self.headers.iter().flatten() {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
                && value
                    .bytes()
                    .all(|c| c == b'\t' || (0x20..0x7f).contains(&c));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("{}.{name}", key("headers")),
                    "is not a valid HTTP header (name a token, value visible ASCII)",
                ));
            }
        }
        if self.timeout.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(key("timeout"), "must be more than 0s"));
        }
        if self.max_concurrency == Some(0) {
            return Err(ConfigError::invalid(
                key("max_concurrency"),
                "must be at least 1",
            ));
        }
        if self.streams.iter().flatten().any(|s| *s != Stream::Alerts) {
            return Err(ConfigError::invalid(
                key("streams"),
                "a webhook sink sends alerts only: streams = [\"alerts\"]",
            ));
        }
        Ok(())
    }
}

/// `kind = "jsonl"`: records as JSON lines to a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jsonl {
    /// Which records this sink receives (default: windows and alerts).
    pub streams: Option<Vec<Stream>>,
    /// The file to write.
    pub path: PathBuf,
    /// Append to an existing file instead of replacing it (default false).
    pub append: Option<bool>,
}

/// `kind = "stdout"`: records to standard output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdout {
    pub streams: Option<Vec<Stream>>,
    /// `json` (default) or `pretty`.
    pub format: Option<StdoutFormat>,
}

/// `kind = "kafka"`: records to topics, keyed by deviceId.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    pub streams: Option<Vec<Stream>>,
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic of window records (default `eventide-windows`).
    pub windows_topic: Option<String>,
    /// Topic of alert records (default `eventide-alerts`).
    pub alerts_topic: Option<String>,
    /// Extra librdkafka producer properties.
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
    /// A PEM file (or directory) of CA certificates to verify the brokers with.
    pub ssl_ca_location: Option<PathBuf>,
    /// How often a record whose delivery failed is sent again before it is
    /// dead-lettered with reason `sink` (default 5).
    pub max_retries: Option<u32>,
}

kafka_security!(Kafka);

/// `kind = "cosmos"`: windows, alerts and device documents to Azure Cosmos DB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosmos {
    pub streams: Option<Vec<Stream>>,
    /// The account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    pub endpoint: String,
    /// The account key (prefer `key_env`).
    pub key: Option<String>,
    /// The environment variable holding the account key.
    pub key_env: Option<String>,
    /// The database.
    pub database: String,
    /// Container of device state documents (default `devices`).
    pub devices_container: Option<String>,
    /// Container of window records (default `windows`).
    pub windows_container: Option<String>,
    /// Container of alert records (default `alerts`).
    pub alerts_container: Option<String>,
    /// Create the database and containers (partition key `/deviceId`) when they are
    /// missing (default false).
    pub create_if_missing: Option<bool>,
    /// How many writes are in flight at once (default 32).
    pub max_concurrency: Option<u32>,
    /// How often device documents are written; updates of one device in between are
    /// coalesced into one write (default 1s).
    pub flush_interval: Option<Dur>,
    /// How often a failed write is retried before it is dead-lettered with reason
    /// `sink` (default 10).
    pub max_retries: Option<u32>,
}

impl SinkConfig {
    /// Reads a `[[sinks]]` table; `at` is its key path (`sinks[1]`).
    pub(super) fn from_table(mut table: toml::Table, at: &str) -> Result<Self, ConfigError> {
        let kind = super::kind::<SinkKind>(&mut table, at, None)?;
        Ok(match kind {
            SinkKind::Jsonl => SinkConfig::Jsonl(super::typed(table, at)?),
            SinkKind::Stdout => SinkConfig::Stdout(super::typed(table, at)?),
            SinkKind::Kafka => SinkConfig::Kafka(super::typed(table, at)?),
            SinkKind::Cosmos => SinkConfig::Cosmos(super::typed(table, at)?),
            SinkKind::Webhook => SinkConfig::Webhook(super::typed(table, at)?),
        })
    }

    pub fn kind(&self) -> SinkKind {
        match self {
            SinkConfig::Jsonl(_) => SinkKind::Jsonl,
            SinkConfig::Stdout(_) => SinkKind::Stdout,
            SinkConfig::Kafka(_) => SinkKind::Kafka,
            SinkConfig::Cosmos(_) => SinkKind::Cosmos,
            SinkConfig::Webhook(_) => SinkKind::Webhook,
        }
    }

    /// Which records this sink receives (default: windows and alerts).
    pub fn streams(&self) -> Vec<Stream> {
        let s = match self {
            SinkConfig::Jsonl(s) => &s.streams,
            SinkConfig::Stdout(s) => &s.streams,
            SinkConfig::Kafka(s) => &s.streams,
            SinkConfig::Cosmos(s) => &s.streams,
            SinkConfig::Webhook(s) => {
                return s.streams.clone().unwrap_or_else(|| vec![Stream::Alerts]);
            }
        };
        s.clone()
            .unwrap_or_else(|| vec![Stream::Windows, Stream::Alerts])
    }

    /// What the types alone cannot check; `at` is the table's key path.
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        match self {
            SinkConfig::Jsonl(_) | SinkConfig::Stdout(_) => {}
            SinkConfig::Kafka(s) => {
                if s.brokers.trim().is_empty() {
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
                s.security().validate(at, &s.properties)?;
            }
            SinkConfig::Cosmos(s) => s.validate(&key)?,
            SinkConfig::Webhook(s) => s.validate(&key)?,
        }
        let streams = self.streams();
        if streams.is_empty() {
            return Err(ConfigError::invalid(
                key("streams"),
                "is empty: name windows and/or alerts",
            ));
        }
        if streams.contains(&Stream::Devices) && self.kind() != SinkKind::Cosmos {
            return Err(ConfigError::invalid(
                key("streams"),
                "the devices stream is written by the cosmos sink only",
            ));
        }
        Ok(())
    }
}

impl Cosmos {
    /// Where the account is, how to authenticate, and that its names and limits are
    /// usable.
    fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        match Some(self.endpoint.trim()) {
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
        match (&self.key, &self.key_env) {
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
        if self.database.trim().is_empty() {
            return Err(ConfigError::invalid(
                key("database"),
                "a cosmos sink needs a database",
            ));
        }
        for (k, v) in [
            ("database", &Some(self.database.clone())),
            ("devices_container", &self.devices_container),
            ("windows_container", &self.windows_container),
            ("alerts_container", &self.alerts_container),
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
        if self.max_concurrency == Some(0) {
            return Err(ConfigError::invalid(
                key("max_concurrency"),
                "must be at least 1",
            ));
        }
        if self.flush_interval.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::invalid(
                key("flush_interval"),
                "must be more than 0s",
            ));
        }
        Ok(())
    }
}

/// Which kind of dead-letter sink `[dead_letter]` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    #[default]
    Jsonl,
    Stdout,
    Stderr,
    Kafka,
}

/// `[dead_letter]`: where rejected input goes, with its reason. By kind; a JSONL file
/// `dead-letter.jsonl` when the section is absent.
#[derive(Debug, Clone)]
pub enum DeadLetterConfig {
    Jsonl(DeadLetterFile),
    Stdout,
    Stderr,
    Kafka(DeadLetterKafka),
}

/// `[dead_letter] kind = "jsonl"` (the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFile {
    /// The file (default `dead-letter.jsonl`).
    pub path: Option<PathBuf>,
    /// Append instead of replacing (default false).
    pub append: Option<bool>,
}

/// `kind = "stdout"` and `"stderr"` take no other key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

/// `[dead_letter] kind = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterKafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic of dead-letter records (default `eventide-dead-letter`).
    pub topic: Option<String>,
    /// Extra librdkafka producer properties.
    pub properties: Option<BTreeMap<String, String>>,
    pub security_protocol: Option<SecurityProtocol>,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub sasl_password_env: Option<String>,
    pub ssl_ca_location: Option<PathBuf>,
}

kafka_security!(DeadLetterKafka);

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig::Jsonl(DeadLetterFile::default())
    }
}

impl DeadLetterConfig {
    /// A JSONL dead-letter file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        DeadLetterConfig::Jsonl(DeadLetterFile {
            path: Some(path.into()),
            append: None,
        })
    }

    /// Reads the `[dead_letter]` table.
    pub(super) fn from_table(mut table: toml::Table) -> Result<Self, ConfigError> {
        let at = "dead_letter";
        let kind = super::kind(&mut table, at, Some(DeadLetterKind::Jsonl))?;
        Ok(match kind {
            DeadLetterKind::Jsonl => DeadLetterConfig::Jsonl(super::typed(table, at)?),
            DeadLetterKind::Stdout => {
                super::typed::<NoKeys>(table, at)?;
                DeadLetterConfig::Stdout
            }
            DeadLetterKind::Stderr => {
                super::typed::<NoKeys>(table, at)?;
                DeadLetterConfig::Stderr
            }
            DeadLetterKind::Kafka => DeadLetterConfig::Kafka(super::typed(table, at)?),
        })
    }

    pub fn kind(&self) -> DeadLetterKind {
        match self {
            DeadLetterConfig::Jsonl(_) => DeadLetterKind::Jsonl,
            DeadLetterConfig::Stdout => DeadLetterKind::Stdout,
            DeadLetterConfig::Stderr => DeadLetterKind::Stderr,
            DeadLetterConfig::Kafka(_) => DeadLetterKind::Kafka,
        }
    }

    /// Where dead letters go, for messages to the user: the file, or the kind.
    pub fn describe(&self) -> String {
        match self {
            DeadLetterConfig::Jsonl(f) => f.path().display().to_string(),
            DeadLetterConfig::Stdout => "stdout".into(),
            DeadLetterConfig::Stderr => "stderr".into(),
            DeadLetterConfig::Kafka(k) => format!("kafka topic {}", k.topic()),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let DeadLetterConfig::Kafka(d) = self else {
            return Ok(());
        };
        if d.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "dead_letter.brokers",
                "a kafka dead-letter sink needs brokers",
            ));
        }
        if d.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid("dead_letter.topic", "is empty"));
        }
        check_properties("dead_letter.properties", &d.properties, KAFKA_SINK_OWNED)?;
        d.security().validate("dead_letter", &d.properties)
    }
}

impl DeadLetterFile {
    pub fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("dead-letter.jsonl"))
    }
}

impl DeadLetterKafka {
    pub fn topic(&self) -> &str {
        self.topic.as_deref().unwrap_or("eventide-dead-letter")
    }
}
