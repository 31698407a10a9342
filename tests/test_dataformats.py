"""Data as the tools export it: the demo's splits written as Roboflow, CVAT and Label Studio COCO exports and
as Ultralytics and Roboflow YOLO data sets score in `optic eval` exactly as the demo layout does, and read
into the same training samples (dataformats: one reader per format for both)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from dataformats.annotations import DetectionSplits
from dataformats.detection import find_detection_splits
from dataformats.folders import find_splits
from dataformats.instances import find_instance_splits
from dataformats.masks import find_mask_splits
from service.errors import InvalidDataset
from service.evaluation.runner import evaluate_offline
from service.repository import LoadedModel, load_model
from service.settings import Settings
from tests.dataformats_support import (
    cvat_coco,
    label_studio_coco,
    roboflow_coco,
    roboflow_folders,
    roboflow_yolo,
    ultralytics_yolo,
)
from tests.server import ROOT
from training.data import demo_segmentation
from training.data.demo import write_demo
from training.data.demo_detection import write_shapes

IMAGES = {"train": 4, "val": 2, "test": 6}  # the demo's own first images of each split
ALL = ("train", "val", "test")
Build = Callable[[Path, Path], Path]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demos")
    write_shapes(root / "detection", seed=0, images=IMAGES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_segmentation, "SPLIT_IMAGES", IMAGES)
        for task in ("segmentation", "instance-segmentation"):
            write_demo(task, root / task, seed=0)
    yolo = root / "detection-yolo"  # the demo's own YOLO layout: its data.yaml, labels/, no JSON
    shutil.copytree(root / "detection", yolo, ignore=shutil.ignore_patterns("*.json", "crops"))
    return {"detection": root / "detection", "detection-yolo": yolo, **{t: root / t for t in ("segmentation",
            "instance-segmentation")}}  # fmt: skip


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    settings = Settings(model_repository=ROOT / "models", warmup_runs=0)
    found = {}
    for task, name in (("detection", "shapes"), ("instance-segmentation", "shapes-instances"),
                       ("segmentation", "shapes-seg"), ("classification", "digits")):  # fmt: skip
        version = max((p for p in (ROOT / "models" / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        found[task] = load_model(version, settings)
    return found


def summary(model: LoadedModel, root: Path) -> dict[str, float]:
    return dict(evaluate_offline(model, root, max_pixels=10**8).report["metrics"]["summary"])


@pytest.fixture(scope="module")
def baseline(demos: dict[str, Path], models: dict[str, LoadedModel]) -> dict[str, dict[str, float]]:
    """The demo layouts' scores: what every export of the same images must score."""
    return {name: summary(models[name.removesuffix("-yolo")], demos[name]) for name in demos}


def _build(build: Build, src: Path, tmp_path: Path) -> Path:
    return build(src, tmp_path / "export")


def _beside(src: Path, out: Path) -> Path:
    """data.yaml one folder above the data, `path: shapes` relative to it."""
    ultralytics_yolo(src, out / "shapes", "shapes")
    (out / "shapes" / "data.yaml").rename(out / "data.yaml")
    return out


COCO_EXPORTS: dict[str, Build] = {
    "roboflow-test-only": lambda src, out: roboflow_coco(src, out, ("test",)),
    "roboflow": roboflow_coco,
    "cvat": cvat_coco,
    "cvat-subsets": lambda src, out: cvat_coco(src, out, ALL),
    "label-studio": label_studio_coco,
}
YOLO_EXPORTS: dict[str, Build] = {
    "ultralytics-stale-absolute-path": lambda src, out: ultralytics_yolo(src, out, "/home/maker/datasets/shapes"),
    "ultralytics-relative-path": lambda src, out: ultralytics_yolo(src, out, "../datasets/shapes"),
    "ultralytics-path-beside": _beside,
    "roboflow-yolo-test-only": roboflow_yolo,
    "roboflow-yolo": lambda src, out: roboflow_yolo(src, out, splits=ALL),
}
AREA_FREE = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")  # YOLO boxes have no mask area: size bins differ


@pytest.mark.parametrize("layout", sorted(COCO_EXPORTS))
def test_detection_coco_exports_score_as_the_demo(layout: str, demos, models, baseline, tmp_path: Path) -> None:
    export = _build(COCO_EXPORTS[layout], demos["detection"], tmp_path)
    assert summary(models["detection"], export) == baseline["detection"]


@pytest.mark.parametrize("layout", sorted(YOLO_EXPORTS))
def test_detection_yolo_exports_score_as_the_demo(layout: str, demos, models, baseline, tmp_path: Path) -> None:
    export = _build(YOLO_EXPORTS[layout], demos["detection"], tmp_path)
    scores = summary(models["detection"], export)
    assert scores == baseline["detection-yolo"]
    assert {k: scores[k] for k in AREA_FREE} == {k: baseline["detection"][k] for k in AREA_FREE}


def _targets(splits: DetectionSplits) -> dict[str, list[tuple]]:
    """Per split, every target box (2 decimals) with its label, as a sorted list."""
    found = {}
    for name in ALL:
        split = getattr(splits, name)
        found[name] = sorted(
            (*np.round(box, 2).tolist(), int(label))
            for sample in (split.samples if split is not None else [])
            for box, label in zip(sample.boxes, sample.labels, strict=True)
        )
    return found


@pytest.mark.parametrize(
    ("layout", "build", "read"),
    [
        ("roboflow", roboflow_coco, find_detection_splits),
        ("cvat-subsets", lambda src, out: cvat_coco(src, out, ALL), find_detection_splits),
        ("ultralytics", lambda src, out: ultralytics_yolo(src, out, "/elsewhere", splits=ALL), find_detection_splits),
        ("roboflow-yolo", lambda src, out: roboflow_yolo(src, out, splits=ALL), find_detection_splits),
        ("roboflow-yolo-yaml", lambda src, out: roboflow_yolo(src, out, splits=ALL) / "data.yaml",
         find_detection_splits),
        ("roboflow-instances", roboflow_coco, find_instance_splits),
        ("cvat-instances", lambda src, out: cvat_coco(src, out, ALL), find_instance_splits),
        ("yolo-seg", lambda src, out: ultralytics_yolo(src, out, ".", seg=True, splits=ALL), find_instance_splits),
    ],
)  # fmt: skip
def test_training_reads_the_same_samples_and_boxes(layout: str, build: Build, read, demos, tmp_path: Path) -> None:
    src = demos["instance-segmentation" if read is find_instance_splits else "detection"]
    original, exported = read(src), read(_build(build, src, tmp_path))
    assert exported.labels == original.labels
    for name in ALL:
        a, b = getattr(original, name), getattr(exported, name)
        assert len(b.samples) == len(a.samples) == IMAGES[name]
        assert len(b.coco["annotations"]) == len(a.coco["annotations"])
        assert all(s.path.is_file() and (s.width, s.height) == (t.width, t.height)
                   for s, t in zip(b.samples, a.samples, strict=True))  # fmt: skip
    ours, theirs = _targets(exported), _targets(original)
    if layout == "yolo-seg":  # boxes of the outlines: within a pixel of the demo's coverage boxes
        for name in ALL:
            assert len(ours[name]) == len(theirs[name])
        return
    assert ours == theirs
    if read is find_instance_splits:
        assert all(len(s.segmentations) == len(s.boxes) for s in exported.train.samples)


def test_single_file_exports_train_with_val_held_out(demos, tmp_path: Path) -> None:
    """CVAT's instances_default.json and Label Studio's result.json name no split: they are train."""
    src = demos["detection"]
    wanted = _targets(find_detection_splits(src))["test"]
    for build in (cvat_coco, label_studio_coco):
        splits = find_detection_splits(build(src, tmp_path / build.__name__))
        assert (len(splits.train) + len(splits.val), splits.test) == (IMAGES["test"], None)
        assert sorted(_targets(splits)["train"] + _targets(splits)["val"]) == wanted
    test_only = roboflow_coco(src, tmp_path / "rf", ("test",))
    with pytest.raises(ValueError, match="train"):
        find_detection_splits(test_only)
    with pytest.raises(ValueError, match=r"data.yaml: its `train:` folder \.\./train/images is not there"):
        find_detection_splits(roboflow_yolo(src, tmp_path / "rfy"))


@pytest.mark.parametrize("layout", ["roboflow", "cvat", "label-studio", "ultralytics-yolo-seg", "roboflow-yolo-seg"])
def test_instance_exports_score_as_the_demo(layout: str, demos, models, baseline, tmp_path: Path) -> None:
    builds: dict[str, Build] = {
        "roboflow": lambda src, out: roboflow_coco(src, out, ("test",)),
        "cvat": cvat_coco,
        "label-studio": label_studio_coco,
        "ultralytics-yolo-seg": lambda src, out: ultralytics_yolo(src, out, "/gone", seg=True),
        "roboflow-yolo-seg": lambda src, out: roboflow_yolo(src, out, seg=True),
    }
    scores = summary(models["instance-segmentation"], _build(builds[layout], demos["instance-segmentation"], tmp_path))
    expected = baseline["instance-segmentation"]
    if "yolo" in layout:
        # Outlines that decode to the very masks: the same mask AP; boxes are the outlines' (within a pixel).
        assert (scores["mask_AP"], scores["mask_AP50"]) == (expected["mask_AP"], expected["mask_AP50"])
        assert scores["box_AP"] == pytest.approx(expected["box_AP"], abs=0.05)
    else:
        assert scores == expected


@pytest.mark.parametrize("layout", ["roboflow", "cvat", "label-studio"])
def test_semantic_coco_exports_score_as_the_png_masks(layout: str, demos, models, baseline, tmp_path: Path) -> None:
    builds: dict[str, Build] = {"roboflow": roboflow_coco, "cvat": cvat_coco, "label-studio": label_studio_coco}
    export = _build(builds[layout], demos["segmentation"], tmp_path)
    assert summary(models["segmentation"], export) == baseline["segmentation"]


def test_semantic_training_reads_a_roboflow_export(demos, tmp_path: Path) -> None:
    original = find_mask_splits(demos["segmentation"])
    exported = find_mask_splits(roboflow_coco(demos["segmentation"], tmp_path / "rf"))
    assert (original.layout, exported.layout) == ("png", "coco")
    assert exported.labels == original.labels  # "background", then the classes: not Roboflow's project
    for name in ALL:
        a, b = getattr(original, name), getattr(exported, name)
        assert len(a) == len(b) == IMAGES[name]
        for sa, sb in zip(a, b, strict=True):
            assert np.array_equal(sa.load_mask(), sb.load_mask())


def test_classification_folder_export_scores_and_trains_alike(cls_data: Path, models, tmp_path: Path) -> None:
    export = roboflow_folders(cls_data, tmp_path / "rf")
    assert summary(models["classification"], export) == summary(models["classification"], cls_data)
    original, exported = find_splits(cls_data), find_splits(export)
    for name in ALL:
        a, b = getattr(original, name), getattr(exported, name)
        assert [(p.name, label) for p, label in a] == [(p.name, label) for p, label in b]


def test_optic_eval_takes_a_roboflow_zip_as_downloaded(demos, baseline, tmp_path: Path) -> None:
    """`optic eval --model shapes --data export.zip`: the archive Roboflow hands over, files at its top."""
    export = roboflow_coco(demos["detection"], tmp_path / "export", ("test",))
    archive = tmp_path / "shapes.v1i.coco.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(export.rglob("*")):
            zf.write(path, path.relative_to(export).as_posix())
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "shapes", repository / "shapes", ignore=shutil.ignore_patterns(".*"))
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "eval", "--model", "shapes", "--data", str(archive),
         "--repository", str(repository)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"] == baseline["detection"]


def _eval_error(task: str, root: Path, models: dict[str, LoadedModel]) -> str:
    model = models[task]
    with pytest.raises(InvalidDataset) as caught:
        model.task.load_eval_dataset(root.resolve(), model.metadata)
    return caught.value.message


def test_unreadable_exports_are_refused_naming_file_and_problem(demos, models, tmp_path: Path) -> None:
    src = demos["detection"]
    used = roboflow_coco(src, tmp_path / "used", ("test",))
    path = used / "test" / "_annotations.coco.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 0  # the project category, used: a class the model lacks
    path.write_text(json.dumps(data))
    assert _eval_error("detection", used, models) == (
        "_annotations.coco.json: categories not among the model's labels: shapes-x7k2p"
    )
    missing = label_studio_coco(src, tmp_path / "ls")
    first = sorted((missing / "images").iterdir())[0]
    first.unlink()
    assert _eval_error("detection", missing, models) == (
        f"image 'images/{first.name}' listed in result.json is not in the data set"
    )
    counted = roboflow_yolo(src, tmp_path / "nc")
    (counted / "data.yaml").write_text((counted / "data.yaml").read_text().replace("nc: 4", "nc: 5"))
    assert _eval_error("detection", counted, models) == (
        "malformed YOLO file data.yaml: `nc: 5` but `names:` lists 4 classes"
    )
    boxes = roboflow_yolo(src, tmp_path / "boxes")  # box labels handed to instance segmentation
    label = sorted((boxes / "test" / "labels").iterdir())[0]
    assert _eval_error("instance-segmentation", boxes, models) == (
        f"malformed YOLO file test/labels/{label.name}:1: a box, not a polygon: instance segmentation needs outlines"
    )


def test_the_serving_image_and_the_bento_carry_dataformats() -> None:
    assert "dataformats/**/*.py" in yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    assert "COPY dataformats/ dataformats/" in (ROOT / "Dockerfile").read_text()
    assert "!dataformats/" in (ROOT / ".dockerignore").read_text().splitlines()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"dataformats*"' in pyproject
    code = (
        "import sys; sys.modules['torch'] = sys.modules['torchvision'] = None; "
        "import dataformats.detection, dataformats.instances, dataformats.masks, dataformats.folders"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
