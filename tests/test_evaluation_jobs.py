"""Evaluation jobs over HTTP against the real server: submit (upload or server path), progress, results equal
to POST /evaluate, reports, comparisons, per-class thresholds that serving uses, refusals, the queue limit,
cancelling, live traffic first, and a crash in the middle of a job."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.cli import main
from service.metadata import ModelMetadata, sha256_file, write_model_version
from tests.conftest import TEST_LIMITS
from tests.helpers import files_field, get_metrics, metric_value, zip_members, zip_tree
from tests.load import percentile
from tests.server import ROOT, Server, start_server

BIG_COPIES = 24  # the big digits set: the test split this many times over (~6,500 images)


def _biased_digits(repository: Path) -> None:
    """digits:2, a worse version: the classifier's last bias pushed towards "3"."""
    import onnx
    from onnx import numpy_helper

    source = repository / "digits" / "1"
    graph = onnx.load(source / "model.onnx")
    gemm = [n for n in graph.graph.node if n.op_type == "Gemm"][-1]
    for init in graph.graph.initializer:
        if init.name == gemm.input[2]:
            bias = numpy_helper.to_array(init).copy()
            bias[3] += 4.0
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
    staged = repository.parent / "digits-2.onnx"
    onnx.save(graph, staged)
    meta = ModelMetadata.read(source / "model.json")
    write_model_version(repository, meta.model_copy(update={"version": "2", "sha256": sha256_file(staged)}), staged)


class Jobs:
    """The module's server, restartable on the same data folder."""

    def __init__(self, root: Path, repository: Path, datasets: Path, env: dict[str, str]) -> None:
        self.root, self.repository, self.datasets, self.env = root, repository, datasets, env
        self.server = self.start()

    def start(self) -> Server:
        return start_server(self.repository, self.root / f"serve-{time.monotonic_ns()}.log", env=self.env)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, cls_data: Path, det_data: Path) -> Iterator[Jobs]:
    root = tmp_path_factory.mktemp("jobs")
    repository = root / "models"
    shutil.copytree(ROOT / "models", repository, ignore=shutil.ignore_patterns(".*"))
    _biased_digits(repository)
    # shapes:3: shapes:2 with the per-class thresholds of its evaluation on the demo test split.
    report = root / "shapes-report.json"
    assert main(["eval", "--model", "shapes:2", "--data", str(det_data / "test"), "--repository", str(repository),
                 "--output", str(report)]) == 0  # fmt: skip
    assert main(["export", "--thresholds-from", str(report), "--repository", str(repository)]) == 0
    datasets = root / "datasets"
    shutil.copytree(cls_data / "test", datasets / "digits")
    shutil.copytree(det_data / "test", datasets / "shapes")
    for class_dir in sorted((cls_data / "test").iterdir()):
        target = datasets / "big-digits" / class_dir.name
        target.mkdir(parents=True)
        for copy in range(BIG_COPIES):
            for image in class_dir.iterdir():
                shutil.copyfile(image, target / f"{copy}-{image.name}")
    env = {
        **TEST_LIMITS,
        "OPTIC_DATASETS_ROOT": str(datasets),
        "OPTIC_DATA_DIR": str(root / "state"),
        "OPTIC_EVALUATION_CONCURRENCY": "1",
        "OPTIC_EVALUATION_QUEUE_LENGTH": "1",
        "OPTIC_MAX_ARCHIVE_MEMBERS": "2000",
    }
    handle = Jobs(root, repository, datasets, env)
    yield handle
    handle.server.stop()


def _submit(jobs: Jobs, *, archive: bytes | None = None, **fields: str) -> httpx.Response:
    files = {"dataset": ("data.zip", archive, "application/zip")} if archive is not None else None
    return httpx.post(f"{jobs.url}/evaluations", data=fields, files=files, timeout=120)


def _accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/evaluations/{job['id']}" == job["links"]["self"]
    assert job["state"] in ("queued", "running")
    return job


def _wait(jobs: Jobs, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"), timeout=300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{jobs.url}/evaluations/{job_id}", timeout=30).json()
        if job["state"] in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


def _running_with_progress(jobs: Jobs, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = httpx.get(f"{jobs.url}/evaluations/{job_id}", timeout=30).json()
        if job["state"] == "running" and job["progress"]["done"] > 0:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never made progress: {job}")


def _error(response: httpx.Response, status: int, reason: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason, body
    assert response.headers["x-optic-error-reason"] == reason
    for word in words:
        assert word in body["error"], body


def test_upload_job_equals_the_synchronous_evaluate(jobs: Jobs, cls_data: Path) -> None:
    archive = zip_tree(cls_data / "test")
    before = metric_value(get_metrics(jobs.url), "optic_evaluation_jobs_total", outcome="succeeded")
    job = _accepted(_submit(jobs, archive=archive, model="digits:1"))
    assert job["source"] == {"kind": "upload"}  # no server paths shown
    done = _wait(jobs, job["id"])
    assert done["state"] == "succeeded", done
    synchronous = httpx.post(f"{jobs.url}/evaluate", files={"dataset": ("d.zip", archive)},
                             data={"model": "digits:1"}, timeout=120).json()  # fmt: skip
    (report,) = done["result"]["evaluations"]
    assert report["metrics"] == synchronous["metrics"]
    assert done["result"]["comparison"] is None
    total = synchronous["dataset"]["num_images"]
    assert done["progress"]["done"] == done["progress"]["total"] == total
    assert done["progress"]["images_per_second"] > 0 and done["progress"]["eta_s"] is None
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    after = metric_value(get_metrics(jobs.url), "optic_evaluation_jobs_total", outcome="succeeded")
    assert after == before + 1

    page = httpx.get(f"{jobs.url}/evaluations/{job['id']}/report", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "digits:1" in page.text and "src=\"http" not in page.text
    rows = httpx.get(f"{jobs.url}{done['links']['images_csv']}").text
    assert len(rows.strip().splitlines()) == total + 1
    wrong = [i for i in httpx.get(f"{jobs.url}{done['links']['images_json']}").json()[0]["images"] if not i["correct"]]
    assert len(wrong) == round(total * (1 - report["metrics"]["top1"]))
    assert done["links"]["plots"], done["links"]
    for plot in done["links"]["plots"]:
        png = httpx.get(f"{jobs.url}{plot}")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    listed = httpx.get(f"{jobs.url}/evaluations?state=succeeded").json()["evaluations"]
    assert job["id"] in [j["id"] for j in listed] and all("result" not in j for j in listed)


def test_compare_two_versions_side_by_side(jobs: Jobs) -> None:
    job = _accepted(_submit(jobs, path="digits", models="digits:1,digits:2"))
    done = _wait(jobs, job["id"])
    assert done["state"] == "succeeded", done
    first, second = done["result"]["evaluations"]
    assert (first["model"]["version"], second["model"]["version"]) == ("1", "2")
    comparison = done["result"]["comparison"]
    assert comparison["models"] == ["digits:1", "digits:2"] and comparison["baseline"] == "digits:1"
    top1 = next(row for row in comparison["summary"] if row["metric"] == "top1")
    assert top1["values"] == [first["metrics"]["top1"], second["metrics"]["top1"]]
    assert top1["delta"] == [0.0, second["metrics"]["top1"] - first["metrics"]["top1"]] and top1["delta"][1] < 0
    by_label = {(r["label"], r["metric"]): r for r in comparison["per_class"]}
    recall_3 = by_label["3", "recall"]
    assert recall_3["delta"][1] >= 0  # the biased version says "3" more often
    precision_3 = by_label["3", "precision"]
    assert precision_3["delta"][1] < 0
    assert done["progress"]["total"] == 2 * first["dataset"]["num_images"]
    page = httpx.get(f"{jobs.url}/evaluations/{job['id']}/report").text
    assert "digits:2" in page


def _filtered(detections: list[dict], thresholds: dict[str, float], fallback: float) -> list[dict]:
    return [d for d in detections if d["score"] >= thresholds.get(d["label"], fallback)]


def test_thresholds_from_the_report_are_served(jobs: Jobs, det_data: Path) -> None:
    report = json.loads((jobs.root / "shapes-report.json").read_text())
    thresholds = report["thresholds"]
    assert set(thresholds) == set(report["metrics"]["thresholds"]) and thresholds
    for row in report["metrics"]["per_class"]:
        assert row["f1_threshold"]["score"] == thresholds[row["label"]]
        assert 0 < row["f1_threshold"]["f1"] <= 1
    published = ModelMetadata.read(jobs.repository / "shapes" / "3" / "model.json")
    assert published.params["class_thresholds"] == thresholds
    assert published.sha256 == ModelMetadata.read(jobs.repository / "shapes" / "2" / "model.json").sha256
    images = sorted((det_data / "test" / "images").glob("*.jpg"))[:6]
    default = httpx.post(f"{jobs.url}/detect", files=files_field(images), data={"model": "shapes:3"}, timeout=60)
    everything = httpx.post(f"{jobs.url}/detect", files=files_field(images),
                            data={"model": "shapes:3", "score_threshold": "0"}, timeout=60)  # fmt: skip
    assert default.status_code == everything.status_code == 200
    fallback = 0.25
    for served, full in zip(default.json()["results"], everything.json()["results"], strict=True):
        assert served["detections"] == _filtered(full["detections"], thresholds, fallback)
    named = httpx.post(f"{jobs.url}/detect", files=files_field(images),
                       data={"model": "shapes:3", "score_threshold": "0.6"}, timeout=60).json()  # fmt: skip
    for served, full in zip(named["results"], everything.json()["results"], strict=True):
        assert served["detections"] == [d for d in full["detections"] if d["score"] >= 0.6]
    assert any(len(s["detections"]) != len(f["detections"]) for s, f in
               zip(default.json()["results"], everything.json()["results"], strict=True))  # fmt: skip


def test_refusals_name_the_problem(jobs: Jobs, cls_data: Path) -> None:
    url = jobs.url
    unknown = "/evaluations/0123456789abcdef"
    for method, path in (("GET", unknown), ("DELETE", unknown), ("GET", f"{unknown}/report"),
                         ("GET", "/evaluations/not-an-id")):  # fmt: skip
        _error(httpx.request(method, f"{url}{path}"), 404, "unknown_job", "no evaluation job")
    _error(_submit(jobs, path="../", model="digits"), 403, "path_not_allowed", "outside the datasets root")
    _error(_submit(jobs, path="/etc", model="digits"), 403, "path_not_allowed", "outside the datasets root")
    _error(_submit(jobs, path="nowhere", model="digits"), 422, "invalid_path", "not a folder")
    _error(_submit(jobs, model="digits"), 422, "invalid_parameter", "`dataset`", "`path`")
    _error(_submit(jobs, archive=b"PK", path="digits", model="digits"), 422, "invalid_parameter", "`path`")
    _error(_submit(jobs, path="digits"), 422, "invalid_parameter", "name the model")
    _error(_submit(jobs, path="digits", model="nope"), 404, "unknown_model", "nope")
    _error(_submit(jobs, path="digits", models="digits,shapes"), 422, "invalid_parameter", "share a task")
    _error(_submit(jobs, path="shapes", model="digits"), 422, "invalid_dataset", "class folders")
    escaping = zip_members({"../escape.png": b"x", "0/a.png": b"x"})
    _error(_submit(jobs, archive=escaping, model="digits"), 422, "invalid_archive", "escapes")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0/zeros.png", bytes(8 * 1024 * 1024))  # 8 MB of zeros: ~8 KB compressed, over the 6 MB limit
    _error(_submit(jobs, archive=bomb.getvalue(), model="digits"), 413, "archive_too_large", "OPTIC_MAX_ARCHIVE_BYTES")
    _error(httpx.get(f"{url}/evaluations?state=done"), 422, "invalid_parameter", "state")
    assert not list((jobs.root / "state" / "jobs").glob("*/data")), "refused uploads leave nothing behind"

    # A job that fails says why: an image that cannot be read, found while it runs.
    broken = {f"0/{p.name}": p.read_bytes() for p in sorted((cls_data / "test" / "0").iterdir())[:3]}
    broken["1/broken.png"] = b"\x89PNG not really"
    failed = _wait(jobs, _accepted(_submit(jobs, archive=zip_members(broken), model="digits"))["id"])
    assert failed["state"] == "failed" and failed["result"] is None
    assert failed["error"]["reason"] == "invalid_dataset" and "broken.png" in failed["error"]["error"], failed
    _error(httpx.get(f"{url}/evaluations/{failed['id']}/report"), 409, "not_finished", "failed")
    still = httpx.post(f"{url}/classify", files=files_field([next((cls_data / "test" / "0").iterdir())]))
    assert still.status_code == 200


def test_queue_limit_and_cancel(jobs: Jobs) -> None:
    big = _accepted(_submit(jobs, path="big-digits", model="digits"))
    _running_with_progress(jobs, big["id"])
    waiting = _accepted(_submit(jobs, path="digits", model="digits"))
    assert waiting["state"] == "queued"
    full = _submit(jobs, path="digits", model="digits")
    _error(full, 503, "evaluation_queue_full", "OPTIC_EVALUATION_QUEUE_LENGTH")
    assert full.headers["retry-after"]
    cancelled = httpx.delete(f"{jobs.url}/evaluations/{waiting['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    stopping = httpx.delete(f"{jobs.url}/evaluations/{big['id']}")
    assert stopping.status_code == 202 and stopping.json()["cancel_requested"] is True
    stopped = _wait(jobs, big["id"], timeout=60)
    assert stopped["state"] == "cancelled" and stopped["error"]["reason"] == "cancelled"
    assert stopped["progress"]["done"] < stopped["progress"]["total"]
    _error(httpx.delete(f"{jobs.url}/evaluations/{big['id']}"), 409, "job_finished", "cancelled")


def _classify_latencies(url: str, image: Path, count: int) -> list[float]:
    files = files_field([image])
    latencies = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(f"{url}/classify", files=files, data={"model": "digits:1"})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
    return latencies


def test_live_traffic_first(jobs: Jobs, cls_data: Path) -> None:
    image = next((cls_data / "test" / "4").iterdir())
    _classify_latencies(jobs.url, image, 50)  # warm
    idle = percentile(_classify_latencies(jobs.url, image, 400), 99)
    job = _accepted(_submit(jobs, path="big-digits", model="digits:1"))
    _running_with_progress(jobs, job["id"])
    busy = _classify_latencies(jobs.url, image, 400)
    during = httpx.get(f"{jobs.url}/evaluations/{job['id']}").json()
    assert during["state"] == "running", "the job ended before the measurement did: make the data set bigger"
    assert percentile(busy, 99) <= 2 * idle, (
        f"/classify p99 {percentile(busy, 99) * 1000:.2f} ms during the job, {idle * 1000:.2f} ms idle"
    )
    done = _wait(jobs, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"] > 6000


def test_a_crash_interrupts_the_running_job_and_keeps_the_rest(jobs: Jobs) -> None:
    finished = httpx.get(f"{jobs.url}/evaluations?state=succeeded").json()["evaluations"]
    assert finished
    running = _accepted(_submit(jobs, path="big-digits", model="digits"))
    _running_with_progress(jobs, running["id"])
    queued = _accepted(_submit(jobs, path="digits", model="digits"))
    assert queued["state"] == "queued"
    # A crash: the workers (each in a session of its own) and the supervisor, killed with no clean-up.
    for worker in psutil.Process(jobs.server.process.pid).children(recursive=True):
        worker.kill()
    os.killpg(jobs.server.process.pid, signal.SIGKILL)
    jobs.server.process.wait()
    jobs.server = jobs.start()
    lost = _wait(jobs, running["id"], timeout=30)
    assert lost["state"] == "failed" and lost["error"]["reason"] == "interrupted", lost
    assert "submit it again" in lost["error"]["error"]
    survived = _wait(jobs, queued["id"])
    assert survived["state"] == "succeeded", survived
    for job in finished:
        again = httpx.get(f"{jobs.url}/evaluations/{job['id']}").json()
        assert again["state"] == "succeeded" and again["result"]["evaluations"], again
        assert httpx.get(f"{jobs.url}/evaluations/{job['id']}/report").status_code == 200
    assert 0 < lost["progress"]["done"] < lost["progress"]["total"]
