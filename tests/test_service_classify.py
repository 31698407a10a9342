"""Classification over HTTP against the real `bentoml serve` and the committed demo classifier."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from service.metadata import ModelMetadata, sha256_file
from tests.helpers import files_field, get_metrics, metric_samples, metric_value, targz_tree, zip_tree
from tests.server import Server

MODEL = "digits"


def first_images(cls_data: Path, n: int) -> list[Path]:
    return sorted((cls_data / "test").rglob("*.png"))[:n]


def test_single_image(server: Server, cls_data: Path) -> None:
    image = next((cls_data / "test" / "3").glob("*.png"))
    response = httpx.post(f"{server.url}/classify", files=files_field([image]), data={"top_k": "3"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": MODEL, "version": "1"}
    assert len(body["results"]) == 1
    predictions = body["results"][0]["predictions"]
    assert len(predictions) == 3
    assert predictions[0]["label"] == "3" and predictions[0]["class_id"] == 3
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_several_images_keep_their_order(server: Server, cls_data: Path) -> None:
    images = [next((cls_data / "test" / str(d)).glob("*.png")) for d in (7, 1, 4, 0, 9)]
    response = httpx.post(f"{server.url}/classify", files=files_field(images), data={"model": MODEL}, timeout=30)
    assert response.status_code == 200, response.text
    labels = [r["predictions"][0]["label"] for r in response.json()["results"]]
    assert labels == ["7", "1", "4", "0", "9"]


def test_jpeg_and_large_photo_are_accepted(server: Server) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
    response = httpx.post(f"{server.url}/classify", files=[("images", ("p.jpg", buffer.getvalue(), "image/jpeg"))])
    assert response.status_code == 200
    assert len(response.json()["results"][0]["predictions"]) == 5  # the default top_k


def test_concurrent_clients_form_batches(server: Server, cls_data: Path) -> None:
    images = sorted((cls_data / "test").rglob("*.png"))[:64]
    before = metric_samples(get_metrics(server.url), "optic_batch_size_count")

    def call(path: Path) -> int:
        with httpx.Client(timeout=60) as client:
            return client.post(f"{server.url}/classify", files=files_field([path]), data={"model": MODEL}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(call, images * 2))
    assert statuses == [200] * len(statuses)
    text = get_metrics(server.url)
    batches = metric_value(text, "optic_batch_size_count", model=MODEL) - sum(
        v for lab, v in before if lab.get("model") == MODEL
    )
    single = metric_value(text, "optic_batch_size_bucket", model=MODEL, le="1.0")
    total = metric_value(text, "optic_batch_size_count", model=MODEL)
    assert batches < len(statuses), "every image ran alone: no cross-request batching happened"
    assert total - single > 0, "no batch larger than one formed"


def test_models_lists_metadata_provider_and_sha(server: Server, repository: Path) -> None:
    body = httpx.get(f"{server.url}/models", timeout=10).json()
    by_name = {(m["name"], m["version"]): m for m in body["models"]}
    model = by_name[(MODEL, "1")]
    assert model["provider"] == "cpu"
    assert model["task"] == "classification"
    assert model["sha256"] == sha256_file(repository / MODEL / "1" / "model.onnx")
    assert model["labels"] == [str(i) for i in range(10)]
    assert model["provenance"]["arch"]


def test_metrics_expose_optic_series(server: Server, cls_data: Path) -> None:
    httpx.post(f"{server.url}/classify", files=files_field(first_images(cls_data, 2)), timeout=30)
    text = get_metrics(server.url)
    assert metric_value(text, "optic_images_total", model=MODEL, version="1") >= 2
    for stage in ("preprocess", "inference", "postprocess"):
        assert metric_value(text, "optic_stage_seconds_count", model=MODEL, stage=stage) >= 1
    assert metric_value(text, "optic_model_info", model=MODEL, provider="cpu") == 1
    assert "bentoml_service_request_total" in text


def _sklearn_reference(server: Server, root: Path) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted(root.rglob("*.png"))
    y_true = np.array([int(p.parent.name) for p in paths])
    scores = np.zeros((len(paths), 10))
    for start in range(0, len(paths), 32):
        chunk = paths[start : start + 32]
        response = httpx.post(
            f"{server.url}/classify", files=files_field(chunk), data={"model": MODEL, "top_k": "10"}, timeout=60
        )
        for row, result in enumerate(response.json()["results"]):
            for p in result["predictions"]:
                scores[start + row, p["class_id"]] = p["score"]
    return y_true, scores


def test_evaluate_matches_scikit_learn(server: Server, cls_data: Path) -> None:
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": MODEL},
        files={"dataset": ("test.zip", zip_tree(cls_data / "test"), "application/zip")},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    metrics = report["metrics"]
    y_true, scores = _sklearn_reference(server, cls_data / "test")
    y_pred = scores.argmax(1)
    assert report["dataset"]["num_images"] == len(y_true)
    assert metrics["top1"] == np.mean(y_pred == y_true)
    assert metrics["top1"] >= 0.95
    assert metrics["top5"] == top_k_accuracy_score(y_true, scores, k=5, labels=list(range(10)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(10)), zero_division=0)
    for i, row in enumerate(metrics["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (p[i], r[i], f[i], s[i])
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert metrics[f"{average}_avg"] == {"precision": ap, "recall": ar, "f1": af}
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=list(range(10))).tolist()
    text = get_metrics(server.url)
    assert metric_value(text, "optic_evaluation_score", model=MODEL, metric="top1") == metrics["top1"]


def test_evaluate_accepts_tar_gz_with_splits(server: Server, cls_data: Path) -> None:
    response = httpx.post(
        f"{server.url}/evaluate",
        data={"model": f"{MODEL}:1"},
        files={"dataset": ("all.tar.gz", targz_tree(cls_data), "application/gzip")},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["dataset"]["split"] == "test"


def test_offline_eval_is_the_same_runner(server: Server, cls_data: Path, repository: Path) -> None:
    from service.evaluation.runner import evaluate_offline
    from service.repository import load_model
    from service.settings import Settings

    model = load_model(repository / MODEL / "1", Settings(model_repository=repository, warmup_runs=0))
    offline = evaluate_offline(model, cls_data / "test", max_pixels=10**7).report
    online = httpx.post(
        f"{server.url}/evaluate",
        data={"model": MODEL},
        files={"dataset": ("t.zip", zip_tree(cls_data / "test"), "application/zip")},
        timeout=120,
    ).json()
    assert offline["metrics"]["confusion_matrix"] == online["metrics"]["confusion_matrix"]
    assert ModelMetadata.read(repository / MODEL / "1" / "model.json").task == "classification"
