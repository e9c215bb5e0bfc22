//! The Kafka client keys every Kafka table shares (the source, the `kafka` sink, the
//! Kafka dead-letter sink): TLS and SASL, checked together and against what this
//! build of librdkafka serves, and the librdkafka properties passed through.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// The security keys of a Kafka client's table, seen together.
macro_rules! kafka_security {
    ($t:ty) => {
        impl $t {
            /// This table's Kafka security keys.
            pub fn security(&self) -> $crate::config::kafka::KafkaSecurity<'_> {
                $crate::config::kafka::KafkaSecurity {
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
            pub fn kafka_properties(&self) -> std::collections::BTreeMap<String, String> {
                let mut p: std::collections::BTreeMap<String, String> =
                    self.security().properties().into_iter().collect();
                p.extend(self.properties.clone().into_iter().flatten());
                p
            }

            /// Reads the SASL password from `sasl_password_env` (at start-up, not
            /// at check-config, as the Cosmos key); `key` is the table's path.
            pub(crate) fn resolve_password(
                &mut self,
                key: &str,
            ) -> Result<(), $crate::config::ConfigError> {
                if let Some(var) = &self.sasl_password_env {
                    let value = std::env::var(var).map_err(|_| {
                        $crate::config::ConfigError::invalid(
                            format!("{key}.sasl_password_env"),
                            format!("the environment variable {var} is not set"),
                        )
                    })?;
                    self.sasl_password = Some($crate::config::kafka::Secret(value));
                }
                Ok(())
            }
        }
    };
}
pub(crate) use kafka_security;

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
    pub(crate) fn first_set(&self) -> Option<&'static str> {
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
    pub(crate) fn validate(
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

/// librdkafka consumer properties eventide sets itself: offsets are committed by the
/// pipeline (never automatically), and partitions are assigned by the group.
pub(crate) const KAFKA_SOURCE_OWNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];
/// Producer properties eventide sets itself (idempotent, keyed delivery).
pub(crate) const KAFKA_SINK_OWNED: &[&str] = &["bootstrap.servers", "enable.idempotence"];

/// Extra librdkafka properties: names must look like properties and must not
/// override the ones eventide's guarantees rest on.
pub(crate) fn check_properties(
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
