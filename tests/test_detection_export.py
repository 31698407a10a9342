"""Detection export: a truly dynamic batch (ONNX Loop), batch invariance, parity with torch, the parity guard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dataformats.detection import find_detection_splits
from service.metadata import ModelMetadata
from tests.detection_support import calibrate_batchnorm, write_tiny_shapes
from tests.helpers import assert_plot
from training.config import TrainConfig
from training.data.detection import letterbox_sample
from training.engine import fit
from training.export import export_onnx, measure_parity
from training.tasks import get_task
from training.tasks.base import ParityError
from training.tasks.detection import MAX_DETECTIONS, DetectionTask

SIZE = (96, 96)  # small and still above SSDlite's stride-32 feature maps
OUTPUTS = ["boxes", "scores", "labels", "num_detections"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shapes(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def images(shapes: Path) -> torch.Tensor:
    """Eight real letterboxed images (the val and test splits, cycled)."""
    splits = find_detection_splits(shapes)
    samples = splits.val.samples + (splits.test.samples if splits.test else [])
    return torch.stack([letterbox_sample(samples[i % len(samples)], SIZE)[0] for i in range(8)])


@pytest.fixture(scope="module")
def exported(
    images: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DetectionTask, torch.nn.Module, Path]:
    task = get_task("detection")
    assert isinstance(task, DetectionTask)
    torch.manual_seed(0)
    model = calibrate_batchnorm(task.build_model("ssdlite320_mobilenet_v3_large", 4, None, False), images)
    module = task.export_module(model, None).eval()  # type: ignore[arg-type]  # the run is not needed
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    task.export_graph(module, images, path, opset=17)
    return task, module, path


def test_graph_loops_over_a_dynamic_batch(exported: tuple[DetectionTask, torch.nn.Module, Path]) -> None:
    _, _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node].count("Loop") == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert (image_input.name, image_input.type, image_input.shape) == ("images", "tensor(uint8)", ["N", 3, *SIZE])
    shapes = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert list(shapes) == OUTPUTS
    assert shapes["boxes"] == ("tensor(float)", ["N", MAX_DETECTIONS, 4])
    assert shapes["scores"] == ("tensor(float)", ["N", MAX_DETECTIONS])
    assert shapes["labels"] == ("tensor(int64)", ["N", MAX_DETECTIONS])
    assert shapes["num_detections"] == ("tensor(int64)", ["N"])


def test_each_image_gets_the_same_detections_alone_and_in_batches(
    exported: tuple[DetectionTask, torch.nn.Module, Path], images: torch.Tensor
) -> None:
    task, module, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    alone = [session.run(OUTPUTS, {"images": images[i : i + 1].numpy()}) for i in range(8)]
    together = session.run(OUTPUTS, {"images": images.numpy()})
    for i in range(8):
        for name, a, b in zip(OUTPUTS, alone[i], together, strict=True):
            np.testing.assert_array_equal(a[0], b[i], err_msg=f"{name} of image {i} in a batch of 8")
    counts = np.concatenate([a[3] for a in alone])
    assert counts.min() > 0  # a parity test on empty outputs would prove nothing
    for out in alone:  # rows past the count are zero padding; labels are 0-based label indices
        n = int(out[3][0])
        assert not out[0][0, n:].any() and not out[1][0, n:].any() and not out[2][0, n:].any()
        assert out[2][0, :n].min() >= 0 and out[2][0, :n].max() < 4
        assert (np.diff(out[1][0, :n]) <= 0).all()  # best first
    with torch.no_grad():
        expected = {name: t.numpy() for name, t in zip(OUTPUTS, module(images), strict=True)}
    diffs = task.check_parity(expected, dict(zip(OUTPUTS, together, strict=True)))
    assert diffs["boxes"] <= task.box_atol and diffs["scores"] <= task.score_atol


def test_a_different_model_fails_parity(
    exported: tuple[DetectionTask, torch.nn.Module, Path], images: torch.Tensor
) -> None:
    task, module, path = exported
    shifted = copy.deepcopy(module)
    with torch.no_grad():  # move every predicted box: the graph on disk no longer matches
        for conv in shifted.model.head.regression_head.module_list:  # type: ignore[union-attr]
            conv[-1].bias.add_(0.5)
    with pytest.raises(ParityError, match="batch of 1: image 0: detection"):
        measure_parity(task, shifted, path, images)


def _outputs(boxes: list[list[float]], scores: list[float], labels: list[int], k: int = 5) -> dict[str, np.ndarray]:
    n = len(scores)
    padded_boxes = np.zeros((1, k, 4), dtype=np.float32)
    padded_boxes[0, :n] = boxes
    return {
        "boxes": padded_boxes,
        "scores": np.pad(np.asarray([scores], dtype=np.float32), ((0, 0), (0, k - n))),
        "labels": np.pad(np.asarray([labels], dtype=np.int64), ((0, 0), (0, k - n))),
        "num_detections": np.asarray([n], dtype=np.int64),
    }


def test_check_parity_pairs_rows_and_tolerates_only_the_cut_off() -> None:
    task = DetectionTask()
    box_a, box_b = [1.0, 2.0, 30.0, 40.0], [50.0, 50.0, 90.0, 80.0]
    reference = _outputs([box_a, box_b], [0.9, 0.9], [1, 2])
    assert task.check_parity(reference, _outputs([box_b, box_a], [0.9, 0.9], [2, 1]))["boxes"] == 0.0  # a tie swapped
    near = _outputs([[1.2, 2.0, 30.0, 40.3], box_b], [0.9004, 0.9], [1, 2])
    assert task.check_parity(reference, near)["boxes"] == pytest.approx(0.3, abs=1e-5)
    at_threshold = _outputs([box_a, box_b, [5.0, 5.0, 9.0, 9.0]], [0.9, 0.9, 0.0505], [1, 2, 0])
    task.check_parity(reference, at_threshold)  # a hair above the 0.05 threshold on one side only: fine
    for wrong in (
        _outputs([[1.0, 2.0, 31.0, 40.0], box_b], [0.9, 0.9], [1, 2]),  # a box 1 px off
        _outputs([box_a, box_b], [0.9, 0.9], [0, 2]),  # another label
        _outputs([box_a, box_b], [0.9, 0.8], [1, 2]),  # another score
        _outputs([box_a], [0.9], [1]),  # a confident detection missing
        _outputs([box_a, box_b, [5.0, 5.0, 9.0, 9.0]], [0.9, 0.9, 0.5], [1, 2, 0]),  # an extra one
    ):
        with pytest.raises(ParityError):
            task.check_parity(reference, wrong)


@pytest.fixture(scope="module")
def run_dir(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(task="detection", data=shapes, arch="ssdlite320_mobilenet_v3_large", weights=None, epochs=1,
                      batch_size=3, image_size=SIZE, out=out, name="tiny", device="cpu")  # fmt: skip
    return fit(cfg)


def test_train_and_export_end_to_end(run_dir: Path, tmp_path: Path) -> None:
    for name in ("summary.json", "metrics.csv", "best.pt"):
        assert (run_dir / name).is_file(), name
    # Loss and mAP curves, per-class AP bars and PR curves of the best model on val and on the test split.
    for name in ("loss", "map", "class_ap_val", "class_ap_test", "pr_curves_val", "pr_curves_test"):
        assert_plot(run_dir / f"{name}.png")
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_classification", "train_bbox_regression", "val_map", "val_map50"} <= set(header)
    target = export_onnx(run_dir, "shapes", repository=tmp_path / "models")
    meta = ModelMetadata.read(target / "model.json")
    assert meta.task == "detection" and meta.outputs == OUTPUTS
    assert meta.labels == ["circle", "square", "triangle", "star"]
    assert (meta.input.height, meta.input.width, meta.input.dynamic_batch) == (*SIZE, True)
    assert meta.preprocessing.resize == "letterbox" and meta.preprocessing.in_graph
    assert meta.preprocessing.mean == (0.5, 0.5, 0.5)  # SSDlite's own normalization, inside the graph
    assert meta.params["score_threshold"] == 0.05 and meta.params["max_detections"] == MAX_DETECTIONS
    assert meta.params["nms_iou_threshold"] == 0.55
    # Lineage: every number of the run's summary, the held-out test split's included, as trained.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"val_map", "val_map50", "test_map", "test_map50", "test_mar100"} <= set(meta.metrics)
    assert meta.metrics == summary["metrics"]
    assert meta.provenance.best_epoch == summary["best_epoch"] and meta.provenance.run_dir == str(run_dir)
    assert "boxes_max_abs_diff_batch8_vs_single" in meta.parity
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(OUTPUTS, {"images": np.zeros((2, 3, *SIZE), dtype=np.uint8)})
    assert [o.shape for o in outputs] == [(2, MAX_DETECTIONS, 4), (2, MAX_DETECTIONS), (2, MAX_DETECTIONS), (2,)]
