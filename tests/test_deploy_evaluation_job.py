"""deploy/kubernetes/evaluation-job.yaml: `optic eval --shard` as an Indexed Job and `optic eval merge` after it,
checked offline (no cluster, no network). Every document validates against the Kubernetes OpenAPI schemas that
kubernetes-validate ships; the shard count is one number everywhere (completions, parallelism, the ConfigMap, the
merge's file list); the commands, with Kubernetes' $(VAR) expansion done as the kubelet does it, parse with the
real `optic` argument parser and name the same files; the pods run deployment.yaml's image with its hardening and
resources; and the merge's wait, run here, waits for exactly the files the shards write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFEST = KUBERNETES / "evaluation-job.yaml"
# As tests/test_deploy_kubernetes.py: the oldest release still commonly run, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def named(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def shard_job() -> dict[str, Any]:
    return named("Job", "optic-evaluation-shards")


def merge_job() -> dict[str, Any]:
    return named("Job", "optic-evaluation-merge")


def settings() -> dict[str, str]:
    return dict(named("ConfigMap")["data"])


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"])


def only_container(job: dict[str, Any]) -> dict[str, Any]:
    containers = pod(job)["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def environment(container: dict[str, Any], **extra: str) -> dict[str, str]:
    """The container's variables as the kubelet builds them: envFrom ConfigMaps, then env (values and
    configMapKeyRefs to this file's ConfigMap), then what the Job controller adds."""
    configmap = named("ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        env.update(configmap["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == configmap["metadata"]["name"]
            env[variable["name"]] = configmap["data"][ref["key"]]
    return {**env, **extra}


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args; a reference to an unset variable would stay as it is
    (the kubelet leaves it), so it fails here."""

    def one(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is set nowhere in the container's environment"
        return env[match.group(1)]

    return [_REFERENCE.sub(one, word) for word in words]


def shard_argv(index: int, **overrides: str) -> list[str]:
    """The shard container's command for index `index`, expanded (`overrides`: variables set otherwise, as a test
    runs it here); without the leading `optic`."""
    container = only_container(shard_job())
    env = environment(container, JOB_COMPLETION_INDEX=str(index), **overrides)
    words = expand([*container["command"], *container["args"]], env)
    assert words[0] == "optic"
    return words[1:]


def merge_argv(**overrides: str) -> list[str]:
    container = only_container(merge_job())
    words = expand([*container["command"], *container["args"]], environment(container, **overrides))
    assert words[0] == "optic"
    return words[1:]


def saved_file(argv: list[str]) -> str:
    return argv[argv.index("--save-predictions") + 1]


def shard_count() -> int:
    return int(settings()["SHARDS"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_document_validates_against_the_schema(doc: dict[str, Any], version: str, offline: None) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_validation_rejects_a_broken_job(offline: None) -> None:
    broken = shard_job()
    broken["spec"]["completions"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    typo = merge_job()
    typo["spec"]["template"]["spec"]["initContainers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_shards_are_an_indexed_job_of_the_configured_count() -> None:
    spec = shard_job()["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == shard_count() >= 2
    assert pod(shard_job())["restartPolicy"] == "Never", "podFailurePolicy and per-index retries need Never"
    rules = spec["podFailurePolicy"]["rules"]
    fail_fast = [r for r in rules if r["action"] == "FailJob"]
    assert fail_fast and fail_fast[0]["onExitCodes"]["values"] == [2], "optic eval's exit status for bad input"
    assert fail_fast[0]["onExitCodes"]["containerName"] == only_container(shard_job())["name"]
    assert spec["backoffLimitPerIndex"] >= 1
    merge = merge_job()["spec"]
    assert merge.get("completionMode", "NonIndexed") == "NonIndexed" and merge["completions"] == 1
    # The merge waits for the shards: it must not give up while they may still finish.
    assert merge["activeDeadlineSeconds"] > spec["activeDeadlineSeconds"]


def test_each_shard_writes_the_file_the_merge_reads() -> None:
    count = shard_count()
    written = []
    for index in range(count):
        argv = shard_argv(index)
        assert argv[argv.index("--shard") + 1] == f"{index}/{count}"
        written.append(saved_file(argv))
    assert len(set(written)) == count, "every shard its own file"
    argv = merge_argv()
    assert argv[:2] == ["eval", "merge"]
    inputs = [word for word in argv[2:] if word.endswith(".json") and word not in (argv[argv.index("--output") + 1],)]
    assert inputs == written, "the merge lists exactly the shards' files, in index order"
    results = settings()["RESULTS"]
    assert all(Path(f).parent == Path(results) for f in written)
    assert Path(argv[argv.index("--output") + 1]).parent == Path(results)


def _cli_has_shards() -> bool:
    from service.cli import build_parser

    argv = ["eval", "--model", "m", "--data", "d", "--shard", "0/2", "--save-predictions", "f"]
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


needs_shards = pytest.mark.skipif(
    not _cli_has_shards(), reason="service.cli has no `optic eval --shard` yet: the Job's commands cannot be parsed"
)


@needs_shards
def test_the_shard_commands_parse_with_the_real_cli() -> None:
    from service.cli import build_parser
    from service.evaluation.runner import Shard

    parser = build_parser()
    count = shard_count()
    for index in range(count):
        args = parser.parse_args(shard_argv(index))
        assert args.func.__name__ == "_eval"
        assert Shard.parse(args.shard) == Shard(index, count)
        assert (args.model, args.data) == (settings()["MODEL"], settings()["DATA"])
        assert args.repository == settings()["OPTIC_MODEL_REPOSITORY"]
        assert args.save_predictions == saved_file(shard_argv(index))


@needs_shards
def test_the_jobs_commands_run_here_give_one_runs_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shard and merge commands as the pods run them (the real `optic` entry point, in this process), with
    the volumes replaced by folders: a tiny data set of the ConfigMap's model's task, the model from models/.
    The merged report's metrics are those of one `optic eval` over the whole set, and --report writes HTML."""
    from service.cli import main

    pytest.importorskip("skimage", reason="the detection demo's photographs (train extra)")
    from training.data.demo_detection import write_shapes

    model = settings()["MODEL"]
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "models" / model, repository / model, ignore=shutil.ignore_patterns(".*"))
    write_shapes(tmp_path / "data", seed=3, images={"test": 7})
    volumes = {"DATA": str(tmp_path / "data" / "test"), "RESULTS": str(tmp_path / "results"),
               "OPTIC_MODEL_REPOSITORY": str(repository)}  # fmt: skip
    for index in range(shard_count()):
        assert main(shard_argv(index, **volumes)) == 0, capsys.readouterr().err
        assert Path(saved_file(shard_argv(index, **volumes))).is_file()
    merge = merge_argv(**volumes)
    assert main(merge) == 0, capsys.readouterr().err
    merged = json.loads(Path(merge[merge.index("--output") + 1]).read_text())
    assert merged["merged_shards"] == shard_count()
    assert (Path(merge[merge.index("--report") + 1]) / "report.html").is_file()
    whole = tmp_path / "whole.json"
    argv = [
        "eval",
        "--model",
        model,
        "--data",
        volumes["DATA"],
        "--repository",
        str(repository),
        "--output",
        str(whole),
    ]
    assert main(argv) == 0
    single = json.loads(whole.read_text())
    assert merged["dataset"]["num_images"] == single["dataset"]["num_images"] == 7
    assert merged["metrics"] == single["metrics"]


def test_pods_run_the_deployments_image_hardened_as_it_is() -> None:
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    serving_pod = deployment["spec"]["template"]["spec"]
    serving = serving_pod["containers"][0]
    tag = next(i["newTag"] for i in kustomization["images"] if i["name"] == serving["image"])
    for job in (shard_job(), merge_job()):
        spec = pod(job)
        assert spec["securityContext"] == serving_pod["securityContext"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["image"] == f"{serving['image']}:{tag}", "deployment.yaml's image at kustomization's tag"
            assert container["securityContext"] == serving["securityContext"]
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            if container["name"] != "wait-for-shards":
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "a read-only root needs /tmp"
    shard = only_container(shard_job())
    assert shard["resources"] == serving["resources"], "a shard is one server's worth: the same GPU, CPU, memory"
    assert pod(shard_job())["tolerations"] == serving_pod["tolerations"]
    assert "nvidia.com/gpu" not in only_container(merge_job())["resources"]["limits"], "scoring needs no GPU"


def test_the_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import settings as settings_module

    data = settings()
    optic = {k: v for k, v in data.items() if k.startswith("OPTIC_")}
    known = {f"OPTIC_{name.upper()}" for name in settings_module.Settings.model_fields}
    assert set(optic) <= known, f"unknown settings: {set(optic) - known}"
    cpu_limit = int(str(only_container(shard_job())["resources"]["limits"]["cpu"]))
    monkeypatch.setattr(settings_module, "_cpu_count", lambda: cpu_limit)
    for key, value in optic.items():
        monkeypatch.setenv(key, value)
    parsed = settings_module.Settings()
    assert parsed.provider == "cuda"
    assert parsed.workers * parsed.ort_intra_op_threads <= cpu_limit
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"OPTIC_MODEL_REPOSITORY={data['OPTIC_MODEL_REPOSITORY']}" in dockerfile, "the image's models"


def test_volumes_data_read_only_results_shared() -> None:
    claim = named("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "every shard pod writes to it at once"
    data = settings()
    for job in (shard_job(), merge_job()):
        spec = pod(job)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            results = next(m for path, m in mounts.items() if Path(data["RESULTS"]).is_relative_to(path))
            assert volumes[results["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            # The shards and the merge write there; the wait only looks.
            assert results.get("readOnly", False) is (container["name"] == "wait-for-shards")
    shard_mounts = {m["mountPath"]: m for m in only_container(shard_job())["volumeMounts"]}
    data_mount = next(m for path, m in shard_mounts.items() if Path(data["DATA"]).is_relative_to(path))
    assert data_mount["readOnly"] is True
    volume = next(v for v in pod(shard_job())["volumes"] if v["name"] == data_mount["name"])
    assert volume["persistentVolumeClaim"]["readOnly"] is True


def _wait_script(results: Path, shards: int) -> subprocess.Popen[str]:
    init = pod(merge_job())["initContainers"][0]
    assert init["command"][:2] == ["python3", "-c"]
    env = {**os.environ, **environment(init), "RESULTS": str(results), "SHARDS": str(shards)}
    return subprocess.Popen([sys.executable, "-c", init["command"][2]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_the_merge_waits_for_every_whole_shard_file(tmp_path: Path) -> None:
    """The init container's script, run here: a missing shard, or one still being written (FILE.partial, what
    the shard renames into place), keeps it waiting; once all are there it ends at once."""
    count = shard_count()
    names = [Path(saved_file(shard_argv(i))).name for i in range(count)]
    for name in names[:-1]:
        (tmp_path / name).write_text("{}")
    (tmp_path / f"{names[-1]}.partial").write_text("{")
    waiting = _wait_script(tmp_path, count)
    try:
        time.sleep(1.5)
        assert waiting.poll() is None, "it must wait while a shard file is missing"
    finally:
        waiting.kill()
        output = waiting.communicate()[0]
    assert f"waiting for 1 of {count} shard files" in output and names[-1] in output, output
    (tmp_path / f"{names[-1]}.partial").rename(tmp_path / names[-1])
    done = _wait_script(tmp_path, count)
    output = done.communicate(timeout=30)[0]
    assert done.returncode == 0 and f"all {count} shard files are there" in output, output
