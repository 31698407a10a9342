"""deploy/kubernetes: every manifest validates offline against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (the ServiceMonitor, a CRD, against a minimal schema written here), and the
pieces fit together: selectors, ports, probes, the ConfigMap's settings, the image's user and port.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.server import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

KUBERNETES = ROOT / "deploy" / "kubernetes"
# Not the serving stack: the evaluation Jobs run once, apart (tests/test_deploy_evaluation_job.py).
NOT_SERVING = {"kustomization.yaml", "evaluation-job.yaml"}
# The oldest release still commonly run, and the newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name not in NOT_SERVING:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    return dict(by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - NOT_SERVING
    assert set(kustomization["resources"]) == on_disk
    kinds = {d["kind"] for d in manifests()}
    assert kinds == {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"
    }  # fmt: skip


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", manifests(), ids=lambda d: d["kind"])
def test_manifest_validates_against_the_schema(doc: dict[str, Any], version: str, offline: None) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_rejects_a_broken_manifest(offline: None) -> None:
    broken = by_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = ["http"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    typo = by_kind("ServiceMonitor")
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, SERVICE_MONITOR_SCHEMA)


def test_selectors_and_ports_line_up() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    monitor = by_kind("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert all(e["port"] in service_ports for e in monitor["endpoints"])
    assert all(p["targetPort"] in container_ports for p in service_ports.values())
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert int(env["PORT"]) in container_ports.values()
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_probes_gpu_and_security() -> None:
    spec = container()
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading needs minutes of grace"
    assert str(spec["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert {"cpu", "memory"} <= spec["resources"]["limits"].keys()
    pod_security = by_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)", dockerfile, re.MULTILINE)
    assert user and int(user.group(1)) == pod_security["runAsUser"]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert "/tmp" in {m["mountPath"] for m in spec["volumeMounts"]}, "a read-only root needs a writable /tmp"


def test_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import settings as settings_module

    configmap = by_kind("ConfigMap")
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container()["envFrom"]
    known = {f"OPTIC_{name.upper()}" for name in settings_module.Settings.model_fields}
    assert set(configmap["data"]) <= known, f"unknown settings: {set(configmap['data']) - known}"
    # The pod's CPU limit is what ONNX Runtime's threads must fit in (Settings refuses oversubscription).
    cpu_limit = int(str(container()["resources"]["limits"]["cpu"]))
    monkeypatch.setattr(settings_module, "_cpu_count", lambda: cpu_limit)
    for key, value in configmap["data"].items():
        monkeypatch.setenv(key, value)
    parsed = settings_module.Settings()
    assert parsed.provider == "cuda"
    assert parsed.workers * parsed.ort_intra_op_threads <= cpu_limit


def test_termination_grace_covers_the_drain() -> None:
    """The kubelet waits terminationGracePeriodSeconds in all, preStop included, before SIGKILL."""
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = float(by_kind("ConfigMap")["data"]["OPTIC_SHUTDOWN_GRACE_S"])
    assert pre_stop >= 5, "a pause for endpoints to drop the pod before SIGTERM"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
