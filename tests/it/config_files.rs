//! Every example in config/ validates, and bad configs name the offending key.

use std::process::Command;

use eventide::config::Config;

use crate::common;

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

#[test]
fn every_example_config_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let out = Command::new(BIN)
                .arg("check-config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 3, "config/ holds the examples ({n} found)");
}

/// A SASL password named by an environment variable that is not set stops the run
/// before it connects, naming the key (exit 2); the secrets are never printed.
#[test]
fn an_unset_sasl_password_variable_is_a_clear_error_naming_its_key() {
    let kafka = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/event-hubs.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eh.toml");
    std::fs::write(&path, &kafka).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("EVENTHUBS_CONNECTION_STRING")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("source.sasl_password_env:")
            && stderr.contains("EVENTHUBS_CONNECTION_STRING"),
        "{stderr}"
    );
    // An inline password is never shown by the config's Debug form either.
    let inline = kafka.replace(
        "sasl_password_env = \"EVENTHUBS_CONNECTION_STRING\"",
        "sasl_password = \"Endpoint=sb://secret-value\"",
    );
    let c = Config::parse(&inline).unwrap();
    assert!(!format!("{c:?}").contains("secret-value"));
    let eventide::config::SourceConfig::Kafka(source) = &c.source else {
        panic!("a kafka source")
    };
    assert!(source.kafka_properties()["sasl.password"].contains("secret-value"));
    assert_eq!(source.kafka_properties()["security.protocol"], "sasl_ssl");
    assert_eq!(
        source.kafka_properties()["sasl.username"],
        "$ConnectionString"
    );
}

#[test]
fn the_embedded_demo_config_is_valid() {
    let c = Config::parse(eventide::DEMO_CONFIG).unwrap();
    assert_eq!(c.rules.len(), 1);
}

#[test]
fn check_config_names_the_bad_key_and_exits_non_zero() {
    let good =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/file.toml")).unwrap();
    let cases = [
        (
            "max_out_of_order = \"5s\"",
            "max_out_of_ordr = \"5s\"",
            "pipeline.max_out_of_ordr",
        ),
        (
            "max_out_of_order = \"5s\"",
            "max_out_of_order = \"five\"",
            "pipeline.max_out_of_order",
        ),
        ("dedupe = \"both\"", "dedupe = \"maybe\"", "pipeline.dedupe"),
        ("slide = \"1m\"", "slide = \"10m\"", "windows[1].slide"),
        ("when = \"avg > 1000\"", "when = \"avg >\"", "rules[0].when"),
        (
            "window = \"sliding_5m\"",
            "window = \"hourly\"",
            "rules[0].window",
        ),
        (
            "kind = \"jsonl\"",
            "kind = \"jsonl\"\nformat = \"pretty\"",
            "sinks[0].format",
        ),
        ("[pipeline]", "[pipeline]\nworkers = 3", "pipeline.workers"),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\nvalue = [\"a\", \"b\"]",
            "source.fields.type",
        ),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\ntime_format = \"epoch_ns\"",
            "source.fields.time_format",
        ),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\ncolour = \"x\"",
            "source.fields.colour",
        ),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\ndevice_id = \"\"",
            "source.fields.device_id",
        ),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\nvalue = \"v\"\ntime = \"v\"",
            "source.fields.value",
        ),
        (
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\n[source.fields]\nevent_id = \"\"",
            "pipeline.dedupe",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    assert_bad_keys(dir.path(), &good, &cases);
    let kafka =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/kafka.toml")).unwrap();
    let kafka_cases = [
        ("topics = [\"telemetry\"]", "topics = []", "source.topics"),
        (
            "brokers = \"127.0.0.1:9092\"\ntopics",
            "brokers = \"\"\ntopics",
            "source.brokers",
        ),
        (
            "\"session.timeout.ms\" = \"10000\"",
            "\"enable.auto.commit\" = \"true\"",
            "source.properties.enable.auto.commit",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"0s\"",
            "source.commit_interval",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"1s\"\ncheckpoint_topic = \"telemetry\"",
            "source.checkpoint_topic",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"1s\"\npartitioning = \"sometimes\"",
            "source.partitioning",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"1s\"\nrepartition_topic = \"rekeyed\"",
            "source.repartition_topic",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"1s\"\npartitioning = \"any\"\nrepartition_topic = \"telemetry\"",
            "source.repartition_topic",
        ),
        (
            "commit_interval = \"1s\"",
            "commit_interval = \"1s\"\npartitioning = \"any\"\ncheckpoint_topic = \"eventide-by-device\"",
            "source.partitioning",
        ),
        (
            "max_retries = 5",
            "max_retries = 5\npath = \"x\"",
            "sinks[0].path",
        ),
        (
            "topic = \"eventide-dead-letter\"",
            "topic = \"\"",
            "dead_letter.topic",
        ),
        (
            "stop_at_end = false",
            "stop_at_end = false\npath = \"x\"",
            "source.path",
        ),
    ];
    assert_bad_keys(dir.path(), &kafka, &kafka_cases);
    let topics = "topics = [\"telemetry\"]";
    let sec = |lines: &str| format!("{topics}\n{lines}");
    let security_cases = [
        (
            sec("security_protocol = \"tls\""),
            "source.security_protocol",
        ),
        (
            sec("security_protocol = \"sasl_ssl\"\nsasl_password = \"x\""),
            "source.sasl_username",
        ),
        (
            sec("security_protocol = \"sasl_ssl\"\nsasl_username = \"u\""),
            "source.sasl_password",
        ),
        (
            sec(
                "security_protocol = \"sasl_ssl\"\nsasl_username = \"u\"\nsasl_password = \"p\"\nsasl_password_env = \"P\"",
            ),
            "source.sasl_password_env",
        ),
        (
            sec("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\""),
            "source.sasl_mechanism",
        ),
        (sec("sasl_username = \"u\""), "source.sasl_username"),
        (
            sec("security_protocol = \"ssl\"\nssl_ca_location = \"/no/such/ca.pem\""),
            "source.ssl_ca_location",
        ),
        (sec("ssl_ca_location = \"/etc\""), "source.ssl_ca_location"),
    ];
    let mut security_cases: Vec<(&str, &str, &str)> = security_cases
        .iter()
        .map(|(to, key)| (topics, to.as_str(), *key))
        .collect();
    security_cases.push((
        "properties = { \"session.timeout.ms\" = \"10000\" }",
        "properties = { \"security.protocol\" = \"ssl\" }\nsecurity_protocol = \"ssl\"",
        "source.properties.security.protocol",
    ));
    assert_bad_keys(dir.path(), &kafka, &security_cases);
    assert_bad_keys(
        dir.path(),
        &good,
        &[(
            "path = \"events.ndjson\"",
            "path = \"events.ndjson\"\nsecurity_protocol = \"ssl\"",
            "source.security_protocol",
        )],
    );
    let cosmos =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cosmos.toml"))
            .unwrap();
    let cosmos_cases = [
        (
            "endpoint = \"https://myaccount.documents.azure.com:443/\"",
            "endpoint = \"myaccount\"",
            "sinks[0].endpoint",
        ),
        (
            "key_env = \"EVENTIDE_COSMOS_KEY\"",
            "key_env = \"EVENTIDE_COSMOS_KEY\"\nkey = \"abc\"",
            "sinks[0].key_env",
        ),
        ("key_env = \"EVENTIDE_COSMOS_KEY\"", "", "sinks[0].key"),
        (
            "database = \"telemetry\"",
            "database = \"\"",
            "sinks[0].database",
        ),
        (
            "windows_container = \"windows\"",
            "windows_container = \"a/b\"",
            "sinks[0].windows_container",
        ),
        (
            "max_concurrency = 32",
            "max_concurrency = 0",
            "sinks[0].max_concurrency",
        ),
        (
            "flush_interval = \"1s\"",
            "flush_interval = \"0s\"",
            "sinks[0].flush_interval",
        ),
        (
            "create_if_missing = true",
            "create_if_missing = true\nbrokers = \"x\"",
            "sinks[0].brokers",
        ),
        (
            "streams = [\"windows\", \"alerts\"]",
            "streams = [\"devices\"]",
            "sinks[1].streams",
        ),
        (
            "path = \"out/records.jsonl\"",
            "path = \"out/records.jsonl\"\nmax_concurrency = 4",
            "sinks[1].max_concurrency",
        ),
    ];
    assert_bad_keys(dir.path(), &cosmos, &cosmos_cases);
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("/no/such.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Each (from, to, key): `good` with `from` replaced by `to` fails `check-config` with
/// exit code 2, naming `key`.
fn assert_bad_keys(dir: &std::path::Path, good: &str, cases: &[(&str, &str, &str)]) {
    for &(from, to, key) in cases {
        assert!(good.contains(from), "{from}");
        let path = dir.join("bad.toml");
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("{key}:")),
            "expected the key {key} in: {stderr}"
        );
    }
}

/// A Python venv under target/ with kubernetes-validate (from PyPI), made once.
fn deploy_python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("deploy-venv");
    let python = venv.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import kubernetes_validate, yaml"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "python3 -m venv");
        let ok = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "kubernetes-validate"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install kubernetes-validate");
    }
    python
}

/// deploy/: the Kubernetes manifests validate against the Kubernetes schemas, the KEDA
/// ScaledObject and TriggerAuthentication hold only fields KEDA documents and point at
/// the Deployment and eventide's consumer group, and the ConfigMap's config passes
/// check-config. (The Dockerfile is not built: no container engine here.)
#[test]
fn the_kubernetes_manifests_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("eventide.toml");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(deploy_python())
        .arg(format!("{root}/tests/deploy/check.py"))
        .arg(format!("{root}/deploy"))
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .env("EVENTIDE_TOKEN", "a-token")
        .env("EVENTIDE_PG_PASSWORD", "a-password")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric the Grafana dashboard in deploy/ queries is in a real `/metrics`
/// scrape of a running eventide.
#[test]
fn every_metric_the_dashboard_queries_is_scraped() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("eventide_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics.toml");
    let text = std::fs::read_to_string(format!("{root}/config/simulator.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:5433", "127.0.0.1:0");
    std::fs::write(&config, format!("{text}\ntoken = \"t0ken\"\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut scrape = String::new();
    while std::time::Instant::now() < deadline {
        if let Some(body) = common::http_get(port, "/metrics", "t0ken")
            && body.contains("eventide_windows_closed_total")
            && body.contains("eventide_window_close_latency_seconds_bucket")
        {
            scrape = body;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!scrape.is_empty(), "no /metrics scrape");
    let scraped: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !scraped.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the scrape: {missing:?}\n{scrape}"
    );
}
