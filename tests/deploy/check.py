"""Checks deploy/: the core kinds against the Kubernetes schemas (kubernetes-validate),
the KEDA objects against KEDA's documented spec (keda.sh/v1alpha1, ScaledObject and
TriggerAuthentication, the Kafka scaler's metadata), and writes the ConfigMap's
eventide.toml to the path given, for `eventide check-config`.

    python check.py DEPLOY_DIR CONFIG_OUT
"""

import subprocess
import sys
from pathlib import Path

import yaml

deploy, config_out = Path(sys.argv[1]), Path(sys.argv[2])
k8s = deploy / "kubernetes"
files = sorted(k8s.glob("*.yaml"))
docs = [(f.name, d) for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def fail(msg):
    sys.exit(f"deploy check: {msg}")


# 1. Core kinds against the Kubernetes schemas (unknown fields rejected).
out = subprocess.run(
    [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, files)],
    capture_output=True, text=True,
)
if out.returncode != 0 or "ERROR" in out.stdout + out.stderr:
    fail(f"kubernetes-validate:\n{out.stdout}{out.stderr}")
core = {("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "Secret")}
for name, d in docs:
    kind = (d.get("apiVersion"), d.get("kind"))
    if kind not in core and kind[0] != "keda.sh/v1alpha1":
        fail(f"{name}: unexpected kind {kind}")
    if kind in core and f"passed for resource {d['kind'].lower()}/{d['metadata']['name']}" not in out.stdout:
        fail(f"{name}: {kind} not validated:\n{out.stdout}")

by_kind = {}
for name, d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

# 2. KEDA: the fields KEDA documents (https://keda.sh/docs/2.16/reference/scaledobject-spec/,
# .../scalers/apache-kafka/, .../concepts/authentication/).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}
SCALE_TARGET = {"name", "apiVersion", "kind", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
    "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "excludePersistentLag", "scaleToZeroOnInvalidOffset", "version",
    "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "sasl", "tls",
    "unsafeSsl",
}
KAFKA_AUTH_PARAMS = {"sasl", "username", "password", "tls", "ca", "cert", "key",
                     "keyPassword", "oauthTokenEndpointUri", "scopes", "oauthExtensions"}
deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
auths = {d["metadata"]["name"]: d for d in by_kind.get("TriggerAuthentication", [])}
secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
scaled = by_kind.get("ScaledObject", [])
if len(scaled) != 1:
    fail(f"one ScaledObject expected, found {len(scaled)}")
so = scaled[0]
spec = so["spec"]
if set(spec) - SCALED_OBJECT_SPEC:
    fail(f"ScaledObject: unknown spec fields {set(spec) - SCALED_OBJECT_SPEC}")
if set(spec["scaleTargetRef"]) - SCALE_TARGET or spec["scaleTargetRef"]["name"] not in deployments:
    fail(f"ScaledObject: scaleTargetRef {spec['scaleTargetRef']} is not the Deployment")
for k in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
    if not isinstance(spec.get(k), int) or spec[k] < 0:
        fail(f"ScaledObject: {k} must be a non-negative integer")
if not spec["minReplicaCount"] <= spec["maxReplicaCount"]:
    fail("ScaledObject: minReplicaCount > maxReplicaCount")
config = yaml.safe_load((k8s / "configmap.yaml").read_text())["data"]["eventide.toml"]
for t in spec["triggers"]:
    if set(t) - TRIGGER or t["type"] != "kafka":
        fail(f"trigger {t}: not a kafka trigger as KEDA documents it")
    md = t["metadata"]
    if set(md) - KAFKA_METADATA:
        fail(f"kafka trigger: unknown metadata {set(md) - KAFKA_METADATA}")
    for k in ("bootstrapServers", "consumerGroup", "topic"):
        if not isinstance(md.get(k), str):
            fail(f"kafka trigger: {k} must be a string")
    for k in ("lagThreshold", "activationLagThreshold", "allowIdleConsumers"):
        if k in md and not isinstance(md[k], str):
            fail(f"kafka trigger: {k} must be a string (KEDA metadata values are strings)")
    if md["offsetResetPolicy"] not in ("earliest", "latest"):
        fail("kafka trigger: offsetResetPolicy")
    # The scaler watches the group and topic eventide consumes.
    if f'group_id = "{md["consumerGroup"]}"' not in config or f'"{md["topic"]}"' not in config:
        fail("kafka trigger: consumerGroup/topic are not the ones in eventide.toml")
    if f'brokers = "{md["bootstrapServers"]}"' not in config:
        fail("kafka trigger: bootstrapServers differ from eventide.toml's brokers")
    ref = t.get("authenticationRef", {}).get("name")
    if ref not in auths:
        fail(f"kafka trigger: authenticationRef {ref} is not a TriggerAuthentication here")
    for p in auths[ref]["spec"]["secretTargetRef"]:
        if set(p) != {"parameter", "name", "key"} or p["parameter"] not in KAFKA_AUTH_PARAMS:
            fail(f"TriggerAuthentication {ref}: {p}")
        if p["name"] in secrets and p["key"] not in secrets[p["name"]].get("stringData", {}):
            fail(f"TriggerAuthentication {ref}: secret {p['name']} has no key {p['key']}")
# A partition is the unit of scale: at most one replica per partition.
note = (k8s / "keda-scaledobject.yaml").read_text()
if "partition" not in note.split("maxReplicaCount: ")[0].split("\n")[-2]:
    fail("maxReplicaCount must say which partition count it is bound by")

# 3. The ConfigMap's config, for `eventide check-config`.
config_out.write_text(config)
print("deploy check: ok")
