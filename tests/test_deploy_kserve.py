"""deploy/kubernetes/kserve: optic as a KServe ServingRuntime and an InferenceService on it, checked offline
(no cluster, no network). Both validate against schemas written here for the fields KServe reads (its CRDs
are not installed here), the runtime's container validates as a core/v1 Container (wrapped in a Pod) against
the schemas kubernetes-validate ships, and the pieces fit together: the InferenceService picks this runtime,
the image is deployment.yaml's, the ports are the settings', the probes are the v2 health routes, the
models are where KServe puts them. Each check is also shown to fail on a manifest broken for it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.server import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = KUBERNETES / "kserve"
# As tests/test_deploy_kubernetes.py: the oldest release still commonly run, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

# Where KServe's storage initializer (or the pvc:// mount) puts the storageUri's files in kserve-container.
KSERVE_MODEL_DIR = "/mnt/models"
# Kubernetes' default terminationGracePeriodSeconds, what a predictor gets unless it sets its own.
DEFAULT_GRACE_S = 30
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_ENV = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "string"}},
    },
}
_PORTS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["containerPort"],
        "properties": {
            # Knative's protocol names: http1 (HTTP/1.1), h2c (HTTP/2 cleartext, what gRPC needs).
            "name": {"enum": ["http1", "h2c"]},
            "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
            "protocol": {"const": "TCP"},
        },
    },
}

# The fields of KServe's ServingRuntimeSpec (pkg/apis/serving/v1alpha1/servingruntime_types.go); the
# containers themselves are checked as core/v1 Containers by kubernetes-validate.
SERVING_RUNTIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"enum": ["ServingRuntime", "ClusterServingRuntime"]},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["supportedModelFormats", "protocolVersions", "containers"],
            "additionalProperties": False,
            "properties": {
                "supportedModelFormats": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "version": {"type": "string"},
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer", "minimum": 1},
                        },
                    },
                },
                "protocolVersions": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": PROTOCOLS}},
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image", "ports", "env"],
                        "properties": {
                            "name": _NAME,
                            "image": {"type": "string", "minLength": 1},
                            "ports": _PORTS,
                            "env": _ENV,
                        },
                    },
                },
                "volumes": {"type": "array"},
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "affinity": {"type": "object"},
                "tolerations": {"type": "array"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "imagePullSecrets": {"type": "array"},
                "hostIPC": {"type": "boolean"},
                "workerSpec": {"type": "object"},
                "replicas": {"type": "integer", "minimum": 0},
                "storageHelper": {"type": "object", "properties": {"disabled": {"type": "boolean"}}},
                "grpcEndpoint": {"type": "string"},
                "grpcDataEndpoint": {"type": "string"},
                "httpDataEndpoint": {"type": "string"},
                "builtInAdapter": {"type": "object"},
            },
        },
    },
}

# predictor.model: KServe's ModelSpec, the fields optic's InferenceService may use (the rest of a Container's too).
MODEL_FIELDS = [
    "modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "env", "ports", "resources", "args",
    "command", "volumeMounts", "securityContext", "readinessProbe", "livenessProbe", "startupProbe", "image",
    "imagePullPolicy",
]  # fmt: skip

# What KServe reads from the InferenceService's predictor (pkg/apis/serving/v1beta1): the model's format,
# runtime, protocol and storage. The predictor also inlines a PodSpec and the component extension fields.
INFERENCE_SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            **_METADATA,
            "properties": {
                **_METADATA["properties"],
                "annotations": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "properties": {
                        "serving.kserve.io/deploymentMode": {
                            "enum": ["RawDeployment", "Standard", "Serverless", "Knative", "ModelMesh"]
                        },
                    },
                },
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
                        "model": {
                            "type": "object",
                            "required": ["modelFormat", "runtime", "protocolVersion", "storageUri"],
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string", "minLength": 1},
                                        "version": {"type": "string"},
                                    },
                                },
                                "runtime": _NAME,
                                "protocolVersion": {"enum": PROTOCOLS},
                                "storageUri": {
                                    "type": "string",
                                    "pattern": r"^(pvc|s3|gs|https?|hdfs|webhdfs|hf|oci)://[^/]+",
                                },
                                "env": _ENV,
                                "ports": _PORTS,
                                "resources": {"type": "object"},
                            },
                            # A typo (storageURI, protocolversion) would be dropped by the API server unnoticed.
                            "propertyNames": {"enum": MODEL_FIELDS},
                        },
                    },
                },
                "transformer": {"type": "object"},
                "explainer": {"type": "object"},
            },
        },
    },
}


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.relative_to(ROOT)}: expected one document, found {len(docs)}"
    return dict(docs[0])


def serving_runtime() -> dict[str, Any]:
    return load(KSERVE / "servingruntime.yaml")


def inference_service() -> dict[str, Any]:
    return load(KSERVE / "inferenceservice.yaml")


def deployment() -> dict[str, Any]:
    return load(KUBERNETES / "deployment.yaml")


def kustomization() -> dict[str, Any]:
    return load(KUBERNETES / "kustomization.yaml")


def runtime_container(runtime: dict[str, Any]) -> dict[str, Any]:
    containers = runtime["spec"]["containers"]
    return dict(next((c for c in containers if c["name"] == "kserve-container"), containers[0]))


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def as_pod(runtime: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe would make of the runtime, as far as the runtime decides it."""
    spec = runtime["spec"]
    pod_spec: dict[str, Any] = {"containers": copy.deepcopy(spec["containers"])}
    for key in ("volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "hostIPC"):
        if key in spec:
            pod_spec[key] = copy.deepcopy(spec[key])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": runtime["metadata"]["name"]}, "spec": pod_spec}


def _expected_image(deployment: dict[str, Any], kustomization: dict[str, Any]) -> str:
    """deployment.yaml's image as `kubectl apply -k deploy/kubernetes` sets it (kustomization's images)."""
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    name, _, tag = image.partition(":")
    for entry in kustomization.get("images", []):
        if entry["name"] == name:
            name = entry.get("newName", name)
            tag = str(entry.get("newTag", tag))
    return f"{name}:{tag}" if tag else name


def _probe_port_ok(probe: dict[str, Any], port: dict[str, Any]) -> bool:
    target = probe["httpGet"].get("port")
    return target in (port.get("name"), port["containerPort"])


def problems(
    runtime: dict[str, Any], isvc: dict[str, Any], deployment: dict[str, Any], kustomization: dict[str, Any]
) -> list[str]:
    """Everything that does not fit together; empty when the manifests are right."""
    found: list[str] = []
    container = runtime_container(runtime)
    env = env_of(container)
    model = isvc["spec"]["predictor"]["model"]
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}

    # The InferenceService lands on this runtime.
    if model["runtime"] != runtime["metadata"]["name"]:
        found.append(f"runtime: the InferenceService asks for {model['runtime']!r}")
    if model["modelFormat"]["name"] not in formats:
        found.append(f"modelFormat: {model['modelFormat']['name']!r} is not among the runtime's {sorted(formats)}")
    if "optic" not in formats or formats["optic"].get("autoSelect") is not True:
        found.append("supportedModelFormats: format optic with autoSelect true")
    if model["protocolVersion"] not in runtime["spec"]["protocolVersions"]:
        found.append(f"protocolVersion: {model['protocolVersion']!r} is not among the runtime's")
    if not {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"]):
        found.append("protocolVersions: optic speaks v2 and grpc-v2")
    if container["name"] != "kserve-container":
        found.append(f"container name {container['name']!r}: KServe merges the predictor into kserve-container")

    # The image deployment.yaml runs.
    expected = _expected_image(deployment, kustomization)
    if container["image"] != expected:
        found.append(f"image: {container['image']!r}, deployment.yaml (with kustomization.yaml) runs {expected!r}")

    # Ports: HTTP first (the one KServe routes to), gRPC as optic's settings say.
    ports = container["ports"]
    by_name = {p.get("name"): p for p in ports}
    http, grpc = by_name.get("http1"), by_name.get("h2c")
    deployment_ports = {p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    if http is None or ports[0] is not http:
        found.append("ports: the first port is HTTP, named http1")
    elif str(http["containerPort"]) != env.get("PORT") or http["containerPort"] not in deployment_ports:
        found.append(f"ports: http1 is {http['containerPort']}, PORT {env.get('PORT')}, deployment {deployment_ports}")
    if grpc is None:
        found.append("ports: no gRPC port named h2c")
    elif str(grpc["containerPort"]) != env.get("OPTIC_GRPC_PORT"):
        found.append(f"ports: h2c is {grpc['containerPort']}, OPTIC_GRPC_PORT is {env.get('OPTIC_GRPC_PORT')}")
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if len(ports) > 1 and mode not in ("RawDeployment", "Standard"):
        found.append(f"deploymentMode {mode!r}: Knative allows one container port, the runtime has {len(ports)}")

    # Probes: the v2 health routes, on the HTTP port.
    for probe_name, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("startupProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        probe = container.get(probe_name)
        if probe is None or probe.get("httpGet", {}).get("path") != path:
            found.append(f"{probe_name}: GET {path}")
        elif http is not None and not _probe_port_ok(probe, http):
            found.append(f"{probe_name}: on the http1 port")
    startup = container.get("startupProbe", {})
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 300:
        found.append("startupProbe: model loading needs minutes of grace")

    # The models: where KServe puts the storageUri's files.
    if env.get("OPTIC_MODEL_REPOSITORY") != KSERVE_MODEL_DIR:
        found.append(f"OPTIC_MODEL_REPOSITORY is {env.get('OPTIC_MODEL_REPOSITORY')!r}, not {KSERVE_MODEL_DIR}")

    # deployment.yaml's hardening, the pod-level parts of it on the container (a runtime has no pod context).
    pod = deployment["spec"]["template"]["spec"]
    wanted = dict(pod["securityContext"])
    wanted.pop("fsGroup", None)  # pod-level only
    wanted.update(pod["containers"][0]["securityContext"])
    security = container.get("securityContext", {})
    for key, value in wanted.items():
        if security.get(key) != value:
            found.append(f"securityContext.{key}: {security.get(key)!r}, deployment.yaml has {value!r}")
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)", dockerfile, re.MULTILINE)
    if not user or security.get("runAsUser") != int(user.group(1)):
        found.append("securityContext.runAsUser: the image's USER")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"] for v in runtime["spec"].get("volumes", [])}
    if mounts.get("/tmp") not in volumes:
        found.append("volumeMounts: a read-only root needs a writable /tmp from the runtime's volumes")

    # Resources: deployment.yaml's GPU.
    limits = container.get("resources", {}).get("limits", {})
    gpu = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    if str(limits.get("nvidia.com/gpu")) != str(gpu) or not {"cpu", "memory"} <= limits.keys():
        found.append(f"resources.limits: cpu, memory and nvidia.com/gpu {gpu}")

    # Draining fits the grace period the kubelet gives.
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    grace = isvc["spec"]["predictor"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    if command[:1] != ["sleep"]:
        found.append("lifecycle.preStop: a pause for endpoints to drop the pod before SIGTERM")
    elif float(command[1]) + float(env.get("OPTIC_SHUTDOWN_GRACE_S", "30")) + 5 > grace:
        found.append(f"preStop + OPTIC_SHUTDOWN_GRACE_S + 5 s exceed the {grace} s grace period")
    return found


def test_manifests_validate_against_the_kserve_schemas() -> None:
    jsonschema.validate(serving_runtime(), SERVING_RUNTIME_SCHEMA)
    jsonschema.validate(inference_service(), INFERENCE_SERVICE_SCHEMA)
    assert serving_runtime()["metadata"]["name"] == "optic"
    assert inference_service()["metadata"]["name"] == "optic-digits"


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str | tuple[str, ...], value: Any) -> Mutation:
    """Set (or, with KeyError, delete) the field at a dotted path (a tuple where a key holds dots)."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _env(name: str, value: str) -> Mutation:
    """Set the runtime container's env variable `name` (which must be there)."""

    def mutate(doc: dict[str, Any]) -> None:
        entries = [e for e in runtime_container(doc)["env"] if e["name"] == name]
        assert entries, f"no {name} in the runtime's env"
        for entry in entries:
            entry["value"] = value

    return mutate


@pytest.mark.parametrize(
    ("document", "mutate"),
    [
        ("runtime", _set("apiVersion", "serving.kserve.io/v1beta1")),
        ("runtime", _set("metadata.name", "Optic")),
        ("runtime", _set("spec.supportedModelFormats", KeyError)),
        ("runtime", _set("spec.supportedModelFormats.0.name", KeyError)),
        ("runtime", _set("spec.supportedModelFormats.0.autoselect", True)),
        ("runtime", _set("spec.protocolVersions", ["v3"])),
        ("runtime", _set("spec.container", [])),
        ("runtime", _set("spec.containers.0.image", KeyError)),
        ("runtime", _set("spec.containers.0.ports", KeyError)),
        ("runtime", _set("spec.containers.0.ports.0.name", "http")),
        ("runtime", _set("spec.containers.0.env", KeyError)),
        ("isvc", _set("kind", "ServingRuntime")),
        ("isvc", _set("metadata.annotations", {"serving.kserve.io/deploymentMode": "Raw"})),
        ("isvc", _set("spec.predictor.model.modelFormat.name", KeyError)),
        ("isvc", _set("spec.predictor.model.runtime", KeyError)),
        ("isvc", _set("spec.predictor.model.protocolVersion", "v3")),
        ("isvc", _set("spec.predictor.model.storageUri", "/mnt/models")),
        ("isvc", _set("spec.predictor.model.storageURI", "pvc://optic-models/")),
    ],
)
def test_schemas_reject_a_broken_manifest(document: str, mutate: Mutation) -> None:
    if document == "runtime":
        doc, schema = serving_runtime(), SERVING_RUNTIME_SCHEMA
    else:
        doc, schema = inference_service(), INFERENCE_SERVICE_SCHEMA
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_runtime_container_validates_as_a_core_v1_container(version: str, offline: None) -> None:
    kubernetes_validate.validate(as_pod(serving_runtime()), version, strict=True)


def test_container_validation_rejects_a_broken_container(offline: None) -> None:
    for mutate in (
        _set("spec.containers.0.readinessProbe.httpGet.port", ["http1"]),
        _set("spec.containers.0.securityContext.readOnlyRootFilesystem", "yes"),
        _set("spec.containers.0.envv", []),
    ):
        broken = serving_runtime()
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(as_pod(broken), KUBERNETES_VERSIONS[-1], strict=True)


def test_manifests_fit_together() -> None:
    assert problems(serving_runtime(), inference_service(), deployment(), kustomization()) == []


@pytest.mark.parametrize(
    ("document", "mutate", "complaint"),
    [
        ("isvc", _set("spec.predictor.model.runtime", "kserve-tritonserver"), "runtime:"),
        ("isvc", _set("spec.predictor.model.modelFormat.name", "onnx"), "modelFormat:"),
        ("runtime", _set("spec.supportedModelFormats.0.autoSelect", False), "autoSelect"),
        ("isvc", _set("spec.predictor.model.protocolVersion", "v1"), "protocolVersion:"),
        ("runtime", _set("spec.protocolVersions", ["v2"]), "protocolVersions:"),
        ("runtime", _set("spec.containers.0.name", "optic"), "kserve-container"),
        ("runtime", _set("spec.containers.0.image", "optic:latest"), "image:"),
        ("deployment", _set("spec.template.spec.containers.0.image", "registry.example/optic"), "image:"),
        ("runtime", _set("spec.containers.0.ports.0.containerPort", 8080), "http1 is 8080"),
        ("runtime", _set("spec.containers.0.ports.1.containerPort", 9000), "h2c is 9000"),
        ("runtime", _set("spec.containers.0.ports.1.name", "grpc"), "no gRPC port"),
        ("runtime", _env("OPTIC_GRPC_PORT", "0"), "OPTIC_GRPC_PORT is 0"),
        ("isvc", _set("metadata.annotations", {}), "deploymentMode"),
        ("runtime", _set("spec.containers.0.readinessProbe.httpGet.path", "/readyz"), "readinessProbe"),
        ("runtime", _set("spec.containers.0.startupProbe.httpGet.path", "/v2/health/live"), "startupProbe"),
        ("runtime", _set("spec.containers.0.livenessProbe.httpGet.path", "/v2/health/ready"), "livenessProbe"),
        ("runtime", _set("spec.containers.0.readinessProbe.httpGet.port", "h2c"), "on the http1 port"),
        ("runtime", _set("spec.containers.0.startupProbe.failureThreshold", 10), "minutes of grace"),
        ("runtime", _env("OPTIC_MODEL_REPOSITORY", "/models"), "OPTIC_MODEL_REPOSITORY"),
        ("runtime", _set("spec.containers.0.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
        ("runtime", _set("spec.containers.0.securityContext.runAsNonRoot", KeyError), "runAsNonRoot"),
        ("runtime", _set("spec.containers.0.securityContext.runAsUser", 0), "runAsUser"),
        ("runtime", _set("spec.containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}), "capabilities"),
        ("runtime", _set("spec.containers.0.securityContext.seccompProfile", KeyError), "seccompProfile"),
        ("runtime", _set("spec.volumes", []), "/tmp"),
        ("runtime", _set(("spec", "containers", "0", "resources", "limits", "nvidia.com/gpu"), KeyError), "gpu"),
        ("runtime", _set("spec.containers.0.lifecycle", {}), "preStop"),
        ("runtime", _env("OPTIC_SHUTDOWN_GRACE_S", "30"), "grace period"),
    ],
)
def test_consistency_checks_catch_a_broken_manifest(document: str, mutate: Mutation, complaint: str) -> None:
    docs = {"runtime": serving_runtime(), "isvc": inference_service(), "deployment": deployment()}
    mutate(docs[document])
    found = problems(docs["runtime"], docs["isvc"], docs["deployment"], kustomization())
    assert any(complaint in problem for problem in found), found


def test_runtime_env_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import settings as settings_module

    container = runtime_container(serving_runtime())
    env = env_of(container)
    known = {f"OPTIC_{name.upper()}" for name in settings_module.Settings.model_fields}
    known.add("OPTIC_GRPC_PORT")  # Settings.grpc_port, in a release that has the gRPC server
    unknown = {k for k in env if k.startswith("OPTIC_")} - known
    assert not unknown, f"unknown settings: {unknown}"
    # The container's CPU limit is what ONNX Runtime's threads must fit in (Settings refuses oversubscription).
    cpu_limit = int(str(container["resources"]["limits"]["cpu"]))
    monkeypatch.setattr(settings_module, "_cpu_count", lambda: cpu_limit)
    for key, value in env.items():
        if key.startswith("OPTIC_"):
            monkeypatch.setenv(key, value)
    parsed = settings_module.Settings()
    assert str(parsed.model_repository) == KSERVE_MODEL_DIR
    assert parsed.provider == "cuda"
    assert parsed.workers * parsed.ort_intra_op_threads <= cpu_limit
    assert 0 < int(env["OPTIC_GRPC_PORT"]) < 65536, "0 would disable the gRPC port the runtime declares"
    if "grpc_port" in settings_module.Settings.model_fields:
        assert parsed.grpc_port == int(env["OPTIC_GRPC_PORT"])


def test_kserve_manifests_stay_out_of_the_kustomization() -> None:
    """`kubectl apply -k deploy/kubernetes` must work on a cluster without KServe's CRDs."""
    resources = kustomization()["resources"]
    assert not [r for r in resources if "kserve" in r]
