"""Segmentation training and export: tiny runs, model.json, dynamic batch under ONNX Runtime, parity guards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.metadata import ModelMetadata
from service.tasks.instance_segmentation import paste_mask
from tests.helpers import assert_plot
from tests.segmentation_support import untrained_run, write_tiny_demo
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.engine import fit
from training.export import export_onnx
from training.tasks.base import ParityError
from training.tasks.instance_segmentation import InstanceSegmentationTask
from training.tasks.segmentation import SegmentationTask

SHAPES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {task: write_tiny_demo(task, root / task) for task in ("segmentation", "instance-segmentation")}


def semantic_cfg(data: Path, out: Path, name: str, epochs: int = 1) -> TrainConfig:
    return TrainConfig(task="segmentation", data=data, arch="lraspp_mobilenet_v3_large", epochs=epochs,
                       batch_size=2, image_size=(48, 64), max_samples=4, out=out, name=name, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def semantic_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(semantic_cfg(data["segmentation"], tmp_path_factory.mktemp("runs"), "seg"))


@pytest.fixture(scope="module")
def instance_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained slim Mask R-CNN: it finds ~100 boxes an image, every mask a different blob."""
    cfg = TrainConfig(task="instance-segmentation", data=data["instance-segmentation"],
                      arch="maskrcnn_mobilenet_v3_large_fpn", image_size=(64, 80), device="cpu")  # fmt: skip
    return untrained_run(tmp_path_factory.mktemp("runs") / "inst", cfg, SHAPES)


@pytest.fixture
def few_detections(monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrained Mask R-CNN fills every one of its K rows; K = 10 and batches up to 3 keep parity cheap."""
    monkeypatch.setattr(InstanceSegmentationTask, "max_detections", 10)
    monkeypatch.setattr(InstanceSegmentationTask, "parity_batch_sizes", (1, 3))


def _session(target: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])


def test_semantic_run_reports_miou_and_exports_a_class_map(semantic_run: Path, tmp_path: Path) -> None:
    assert {"best.pt", "summary.json", "metrics.csv"} <= {p.name for p in semantic_run.iterdir()}
    for split in ("val", "test"):  # the best model on both held-out splits
        assert_plot(semantic_run / f"class_iou_{split}.png")
        assert_plot(semantic_run / f"confusion_{split}.png")
    assert_plot(semantic_run / "loss.png")
    assert_plot(semantic_run / "miou.png")
    target = export_onnx(semantic_run, "seg", repository=tmp_path / "models")
    meta = ModelMetadata.read(target / "model.json")
    assert meta.task == "segmentation" and meta.labels == ["background", *SHAPES]
    assert meta.outputs == ["class_map"] and meta.params == {"background_class": 0, "ignore_index": 255}
    assert (meta.input.height, meta.input.width, meta.input.dynamic_batch) == (48, 64, True)
    assert meta.preprocessing.resize == "stretch" and meta.preprocessing.in_graph
    assert {"val_miou", "test_miou", "test_pixel_accuracy", "test_mean_dice"} <= set(meta.metrics)
    assert meta.metrics == json.loads((semantic_run / "summary.json").read_text())["metrics"]  # test split too
    assert set(meta.parity) == {"class_map_mismatch_batch1", "class_map_mismatch_batch7"}
    assert max(meta.parity.values()) <= 1e-3
    session = _session(target)
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 48, 64), dtype=np.uint8)
        (class_map,) = session.run(["class_map"], {"images": images})
        assert class_map.shape == (batch, 48, 64) and class_map.dtype == np.int64
        assert class_map.min() >= 0 and class_map.max() < 5


def test_semantic_parity_guard_writes_nothing(
    semantic_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SegmentationTask, "parity_max_mismatch", -1.0)
    with pytest.raises(ParityError, match="pixels differ"):
        export_onnx(semantic_run, "seg", repository=tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.usefixtures("few_detections")
def test_instance_export_is_batch_dynamic_and_matches_torch(instance_run: Path, tmp_path: Path) -> None:
    target = export_onnx(instance_run, "inst", repository=tmp_path / "models")
    meta = ModelMetadata.read(target / "model.json")
    assert meta.task == "instance-segmentation" and meta.labels == SHAPES
    assert meta.outputs == ["boxes", "scores", "labels", "num_detections", "masks"]
    assert meta.input.dynamic_batch and meta.preprocessing.resize == "letterbox"
    assert {"score_threshold", "max_detections", "mask_size"} <= set(meta.params)
    assert meta.parity["mask_min_iou_batch3_vs_single"] >= 0.99 and meta.parity["boxes_max_abs_diff_batch3"] <= 0.5
    session = _session(target)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 80), dtype=np.uint8)
    names = meta.outputs
    batched = dict(zip(names, session.run(names, {"images": images}), strict=True))
    assert batched["masks"].shape == (3, 10, 28, 28) and batched["boxes"].shape == (3, 10, 4)
    assert batched["labels"].dtype == np.int64 and batched["num_detections"].shape == (3,)
    for i in range(3):  # the Loop gives every image exactly what it gets alone
        alone = dict(zip(names, session.run(names, {"images": images[i : i + 1]}), strict=True))
        for name in names:
            np.testing.assert_array_equal(alone[name][0], batched[name][i])


def test_instance_parity_guard_compares_pasted_masks(instance_run: Path, tmp_path: Path) -> None:
    task = InstanceSegmentationTask()
    rng = np.random.default_rng(0)
    probs = rng.random((1, 2, 28, 28)).astype(np.float32)
    outputs = {
        "boxes": np.asarray([[[4, 4, 40, 30], [50, 10, 70, 60]]], dtype=np.float32),
        "scores": np.asarray([[0.9, 0.8]], dtype=np.float32),
        "labels": np.asarray([[1, 3]]),
        "num_detections": np.asarray([2]),
        "masks": probs,
    }
    assert task.check_parity(outputs, outputs)["mask_min_iou"] == 1.0
    flipped = {**outputs, "masks": probs[:, :, ::-1].copy()}  # same boxes, another mask
    with pytest.raises(ParityError, match="IoU"):
        task.check_parity(outputs, flipped)
    box = outputs["boxes"][0, 0].astype(np.float64)
    assert paste_mask(probs[0, 0], box, 48, 40).shape == (40, 48)


@pytest.mark.usefixtures("few_detections")
def test_instance_export_refuses_a_failed_parity(
    instance_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(InstanceSegmentationTask, "mask_min_iou", 1.01)
    with pytest.raises(ParityError, match="IoU"):
        export_onnx(instance_run, "inst", repository=tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.usefixtures("few_detections")
def test_instance_training_scores_mask_ap(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(task="instance-segmentation", data=data["instance-segmentation"],
                      arch="maskrcnn_mobilenet_v3_large_fpn", epochs=1, batch_size=2, image_size=(64, 80),
                      max_samples=2, out=tmp_path, name="inst", device="cpu")  # fmt: skip
    run_dir = fit(cfg)
    summary = (run_dir / "summary.json").read_text()
    for key in ("val_mask_map", "val_mask_map50", "test_mask_map50", "test_map"):
        assert f'"{key}"' in summary
    for name in ("loss", "mask_map", "class_mask_ap_val", "class_mask_ap_test", "mask_pr_curves_val",
                 "mask_pr_curves_test"):  # fmt: skip
        assert_plot(run_dir / f"{name}.png")


class Interrupt(Exception):
    pass


def test_semantic_resume_is_exact_and_best_pt_holds_the_best_epoch(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = semantic_cfg(data["segmentation"], tmp_path, "interrupted", epochs=2)

    def stop_after_first(epoch: int, row: dict[str, object]) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, on_epoch_end=stop_after_first)
    after_one = load_checkpoint(tmp_path / "interrupted" / "last.pt")
    assert after_one["epoch"] == 1 and not (tmp_path / "interrupted" / "summary.json").exists()
    resumed = fit(TrainConfig(resume=tmp_path / "interrupted", device="cpu"))
    straight = fit(replace(cfg, name="straight"))

    rows = {run: json.loads((run / "metrics.json").read_text()) for run in (resumed, straight)}
    assert [row["epoch"] for row in rows[resumed]] == [1, 2]
    for ours, theirs in zip(rows[resumed], rows[straight], strict=True):
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}
    last = {run: load_checkpoint(run / "last.pt") for run in (resumed, straight)}
    for key, value in last[straight]["model"].items():
        assert torch.equal(last[resumed]["model"][key], value), key

    # best.pt: the epoch with the highest val mIoU (the first one on a tie), with that epoch's weights.
    for run, history in rows.items():
        best_epoch = max(history, key=lambda row: (row["val_miou"], -row["epoch"]))["epoch"]
        best = load_checkpoint(run / "best.pt")
        summary = json.loads((run / "summary.json").read_text())
        assert best["epoch"] == summary["best_epoch"] == last[run]["best_epoch"] == best_epoch
        assert best["metrics"]["val_miou"] == max(row["val_miou"] for row in history)
        weights = after_one["model"] if best_epoch == 1 else last[run]["model"]
        assert all(torch.equal(best["model"][key], value) for key, value in weights.items())
        if best_epoch == 1:  # (this tiny run ties: epoch 2 trained on, yet best.pt kept epoch 1)
            assert not all(torch.equal(best["model"][k], v) for k, v in last[run]["model"].items())
