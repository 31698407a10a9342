"""Detection data: the shapes demo, COCO and YOLO readers (same targets), crowd handling, letterboxed targets."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataformats.coco import read_coco
from dataformats.detection import find_detection_splits
from dataformats.yolo import label_path, read_names, read_yolo
from service.errors import InvalidDataset
from service.imaging import DecodedImage, to_model_input
from service.metadata import InputSpec, ModelMetadata, Preprocessing
from service.tasks import get_task
from service.tasks.base import EvalDataset
from tests.detection_support import TINY_SPLITS, write_tiny_shapes
from training.data.demo import list_demos, write_demo
from training.data.demo_detection import CLASSES, place_objects
from training.data.detection import DetectionDataset, DetectionTrainPreset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shapes(tmp_path_factory.mktemp("data") / "shapes")


def test_demo_writes_coco_and_yolo_for_every_split(shapes: Path) -> None:
    assert "detection" in list_demos()
    assert read_names(shapes) == list(CLASSES)
    for split, count in TINY_SPLITS.items():
        coco = json.loads((shapes / split / "annotations.json").read_text())
        assert len(coco["images"]) == count
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        per_image = {image["id"]: 0 for image in coco["images"]}
        sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert all(isinstance(v, int) for v in ann["bbox"]) and w > 0 and h > 0
            assert x >= 0 and x + w <= width and y >= 0 and y + h <= height
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
            per_image[ann["image_id"]] += 1
        for image in coco["images"]:
            path = shapes / split / "images" / image["file_name"]
            with Image.open(path) as decoded:
                assert decoded.size == (image["width"], image["height"])
            lines = label_path(path).read_text().splitlines()
            assert len(lines) == per_image[image["id"]] >= 1
        # crops/: every object cut out under its class, plus object-free background patches
        crops = shapes / "crops" / split
        assert sorted(p.name for p in crops.iterdir()) == sorted([*CLASSES, "background"])
        assert sum(len(list((crops / name).iterdir())) for name in CLASSES) == len(coco["annotations"])
        assert 0 < len(list((crops / "background").iterdir())) <= count


def test_demo_boxes_are_tight() -> None:
    """On a flat background the changed pixels of each object span exactly its box (JPEG aside)."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        image = np.full((240, 320, 3), 128, dtype=np.uint8)
        objects = place_objects(image, rng)
        change = np.abs(image.astype(np.int16) - 128).max(axis=2)
        for obj in objects:
            x, y, w, h = obj["bbox"]
            square = change[obj["_y0"] : obj["_y1"], obj["_x0"] : obj["_x1"]]
            rows, cols = np.nonzero(square >= 0.5 * square.max())
            found = [obj["_x0"] + cols.min(), obj["_y0"] + rows.min(), cols.max() - cols.min() + 1,
                     rows.max() - rows.min() + 1]  # fmt: skip
            assert np.abs(np.asarray(found) - [x, y, w, h]).max() <= 1


def test_write_demo_refuses_a_non_empty_folder(shapes: Path) -> None:
    with pytest.raises(FileExistsError):
        write_demo("detection", shapes)


def test_coco_and_yolo_layouts_give_the_same_targets(shapes: Path, tmp_path: Path) -> None:
    coco = find_detection_splits(shapes)
    yolo_yaml = find_detection_splits(shapes / "data.yaml")
    # The plain folder layout: images/ + labels/ + classes.txt, no JSON and no YAML.
    folder = tmp_path / "yolo"
    shutil.copytree(shapes, folder, ignore=shutil.ignore_patterns("*.json", "*.yaml"))
    yolo_folder = find_detection_splits(folder)
    assert (coco.layout, yolo_yaml.layout, yolo_folder.layout) == ("coco", "yolo", "yolo")
    for yolo in (yolo_yaml, yolo_folder):
        assert yolo.labels == coco.labels == list(CLASSES)
        for split in ("train", "val", "test"):
            a, b = getattr(coco, split), getattr(yolo, split)
            assert [s.path.name for s in a.samples] == [s.path.name for s in b.samples]
            for sa, sb in zip(a.samples, b.samples, strict=True):
                assert (sa.width, sa.height) == (sb.width, sb.height)
                np.testing.assert_array_equal(sa.labels, sb.labels)
                np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-3)
            assert len(a.coco["annotations"]) == len(b.coco["annotations"])


def _write_coco(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name, size in (("a.png", (64, 48)), ("b.png", (40, 40))):
        Image.new("RGB", size, (90, 90, 90)).save(root / "images" / name)
    data = {
        "images": [{"id": 10, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 11, "file_name": "b.png", "width": 40, "height": 40}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 6, 30, 40], "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [1, 2, 0, 5]},  # no area: not a target
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [2, 3, 10, 12], "iscrowd": 0},
        ],
    }  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


def test_crowd_regions_are_ground_truth_but_not_targets(tmp_path: Path) -> None:
    labels, split = read_coco(_write_coco(tmp_path))
    assert labels == ["dog", "cat"]  # category-id order: 3 before 7
    assert split.label_to_category == {0: 3, 1: 7}
    first, second = split.samples
    np.testing.assert_array_equal(first.boxes, [[4, 5, 24, 15]])
    np.testing.assert_array_equal(first.labels, [1])
    np.testing.assert_array_equal(second.boxes, [[2, 3, 12, 15]])
    np.testing.assert_array_equal(second.labels, [0])
    crowd = [a for a in split.coco["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["area"] == 1200  # kept, with pycocotools' defaults filled in
    held_in, held_out = split.split(0.5, seed=0)
    assert len(held_in) == len(held_out) == 1
    for part in (held_in, held_out):
        assert {im["id"] for im in part.coco["images"]} == {s.image_id for s in part.samples}
        assert {a["image_id"] for a in part.coco["annotations"]} <= {s.image_id for s in part.samples}


def test_val_categories_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the train split's labels: cat"):
        read_coco(_write_coco(tmp_path), labels=["dog"])


def test_yolo_label_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "train" / "images" / "x.jpg")
    (tmp_path / "classes.txt").write_text("one\n")
    (tmp_path / "train" / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"x.txt:2: class 3"):
        find_detection_splits(tmp_path)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt"):
        find_detection_splits(tmp_path)


BAD_YOLO_LINES = {
    "0 0.5 0.5 0.2": "expected `class cx cy w h` (5 columns) or a polygon, got 4 columns",
    "0 0.5 0.5 0.2 0.2 0.3": "expected `class cx cy w h` (5 columns) or a polygon, got 6 columns",
    "2 0.5 0.5 0.2 0.2": "class 2 is not among the 2 names",
    "-1 0.5 0.5 0.2 0.2": "class -1 is not among the 2 names",
    "0.5 0.5 0.5 0.2 0.2": "class id '0.5' is not an integer",
    "cat 0.5 0.5 0.2 0.2": "class id 'cat' is not a number",
    "0 0.5 1.5 0.2 0.2": "coordinate 1.5 is outside [0, 1] (normalized)",
    "0 -0.1 0.5 0.2 0.2": "coordinate -0.1 is outside [0, 1] (normalized)",
    "0 0.5 0.5 abc 0.2": "coordinate 'abc' is not a number",
    "0 0.5 nan 0.2 0.2": "coordinate 'nan' is not a finite number",
}


@pytest.mark.parametrize("line", sorted(BAD_YOLO_LINES))
def test_bad_yolo_lines_fail_training_and_evaluation_alike(tmp_path: Path, line: str) -> None:
    """One parser (dataformats.yolo): training raises ValueError, evaluation a 422 naming file and line."""
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "labels").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "test" / "images" / "x.jpg")
    (tmp_path / "classes.txt").write_text("circle\nsquare\n")
    (tmp_path / "test" / "labels" / "x.txt").write_text(f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
    problem = BAD_YOLO_LINES[line]
    with pytest.raises(ValueError, match=re.escape(f"x.txt:3: {problem}")):
        read_yolo(tmp_path / "test" / "images", ["circle", "square"])
    with pytest.raises(InvalidDataset) as caught:
        _load_eval(tmp_path)
    assert caught.value.message == f"malformed YOLO file test/labels/x.txt:3: {problem}"
    assert caught.value.status_code == 422 and caught.value.reason == "invalid_dataset"


def _load_eval(root: Path, labels: tuple[str, ...] = CLASSES) -> EvalDataset:
    metadata = ModelMetadata(
        name="m", version="1", task="detection", labels=list(labels), input=InputSpec(height=64, width=64),
        outputs=["boxes", "scores", "labels", "num_detections"], opset=17, sha256="0" * 64,
    )  # fmt: skip
    return get_task("detection").load_eval_dataset(root.resolve(), metadata)


def _boxes(coco: dict) -> list[tuple]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return sorted((a["image_id"], names[a["category_id"]], a["bbox"]) for a in coco["annotations"])


def test_yolo_evaluation_ground_truth_is_the_coco_files(shapes: Path, tmp_path: Path) -> None:
    """Every YOLO layout training reads gives evaluation the COCO file's boxes (pixel xywh), class by name."""
    coco = _load_eval(shapes)  # COCO wins when both are there; the test split is preferred
    assert coco.info["format"] == "coco"
    layouts = {"yaml": tmp_path / "yaml", "classes": tmp_path / "classes", "flat": tmp_path / "flat"}
    shutil.copytree(shapes, layouts["yaml"], ignore=shutil.ignore_patterns("*.json", "crops", "classes.txt"))
    shutil.copytree(shapes, layouts["classes"], ignore=shutil.ignore_patterns("*.json", "crops", "*.yaml"))
    for folder in ("images", "labels"):  # one split, no split folders: images/ + labels/ + classes.txt
        shutil.copytree(shapes / "test" / folder, layouts["flat"] / "set" / folder)
    shutil.copy(shapes / "classes.txt", layouts["flat"] / "set")
    expected_images = {"yaml": "test/images", "classes": "test/images", "flat": "set/images"}
    for name, root in layouts.items():
        yolo = _load_eval(root)
        assert (yolo.info["format"], yolo.info["images"]) == ("yolo", expected_images[name])
        assert [i.path.name for i in yolo.items] == [i.path.name for i in coco.items]
        truth, ours = coco.info["coco"], yolo.info["coco"]
        assert [(im["width"], im["height"]) for im in ours["images"]] == [
            (im["width"], im["height"]) for im in truth["images"]
        ]
        assert _boxes(ours) == _boxes(truth)  # exactly: 6-decimal labels give back whole-pixel boxes
        our_names = {c["id"]: c["name"] for c in ours["categories"]}
        assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in ours["annotations"])
        assert {CLASSES[i]: our_names[c] for i, c in yolo.info["label_to_category"].items()} == {c: c for c in CLASSES}
    # Class names map to the model's labels by name, in any order; unknown names are refused.
    shuffled = _load_eval(layouts["flat"], labels=tuple(reversed(CLASSES)))
    assert shuffled.info["label_to_category"] == {3 - i: i + 1 for i in range(len(CLASSES))}
    with pytest.raises(InvalidDataset, match="not among the model's labels: star"):
        _load_eval(layouts["flat"], labels=CLASSES[:3])


def test_evaluation_without_annotations_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "x.jpg")
    with pytest.raises(InvalidDataset, match="neither a COCO annotation file"):
        _load_eval(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [circle]\nval: images/val\n")
    with pytest.raises(InvalidDataset, match=r"malformed YOLO file data.yaml: its image folders \(images/val\)"):
        _load_eval(tmp_path)


def test_targets_are_letterboxed_like_the_service(shapes: Path) -> None:
    split = find_detection_splits(shapes).train
    dataset = DetectionDataset(split, (128, 128))
    for index, sample in enumerate(split.samples):
        image, target = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
        with Image.open(sample.path) as decoded:
            expected, geometry = to_model_input(
                DecodedImage(decoded.convert("RGB"), sample.width, sample.height, sample.path.name),
                InputSpec(height=128, width=128),
                Preprocessing(resize="letterbox"),
            )
        np.testing.assert_array_equal(image.numpy(), expected)
        scale = np.asarray([geometry.scale_x, geometry.scale_y] * 2)
        boxes = sample.boxes * scale + np.asarray([geometry.pad_x, geometry.pad_y] * 2)
        np.testing.assert_allclose(target["boxes"].numpy(), boxes, atol=1e-4)
        np.testing.assert_array_equal(target["labels"].numpy(), sample.labels)
        if sample.width != sample.height:  # the padding is the service's grey
            assert (image[:, 0, 0] == 114).all() or (image[:, -1, -1] == 114).all()


def test_horizontal_flip_moves_the_boxes() -> None:
    image = torch.zeros((3, 8, 10), dtype=torch.uint8)
    image[:, 2:4, 1:3] = 255
    target = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([0])}
    torch.manual_seed(0)
    flipped = [DetectionTrainPreset("light")(image, target) for _ in range(8)]
    moved = [(im, t) for im, t in flipped if not torch.equal(im, image)]
    assert moved, "eight coin flips never flipped"
    im, t = moved[0]
    assert t["boxes"].tolist() == [[7.0, 2.0, 9.0, 4.0]]
    assert im[:, 2:4, 7:9].eq(255).all() and im.sum() == image.sum()
    with pytest.raises(ValueError, match="unknown augment"):
        DetectionTrainPreset("heavy")
