"""Segmentation data: PNG masks, COCO polygon/RLE rasterization, the ignore index, demo exactness, instances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from dataformats.instances import find_instance_splits
from dataformats.masks import IGNORE_INDEX, MaskSample, coco_samples, decode_segmentation, find_mask_splits
from tests.segmentation_support import TINY_SPLITS, write_tiny_demo
from training.config import TrainConfig
from training.data.demo_segmentation import rasterize
from training.data.instances import InstanceTrainPreset, letterbox_instances
from training.data.masks import SegmentationDataset
from training.engine import fit
from training.tasks import get_task


@pytest.fixture(scope="module")
def semantic_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_demo("segmentation", tmp_path_factory.mktemp("data") / "seg")


@pytest.fixture(scope="module")
def instance_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_demo("instance-segmentation", tmp_path_factory.mktemp("data") / "inst")


def _png_dataset(root: Path, count: int = 4) -> Path:
    """Images 40x30 whose right half is class 2, left half class 1, with an ignored 255 stripe."""
    for split in ("train",):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for i in range(count):
            Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(root / split / "images" / f"im{i}.png")
            mask = np.ones((30, 40), dtype=np.uint8)
            mask[:, 20:] = 2
            mask[:, 18:22] = IGNORE_INDEX
            Image.fromarray(mask).save(root / split / "masks" / f"im{i}.png")
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    return root


def test_png_masks_keep_the_ignore_index_through_resizing(tmp_path: Path) -> None:
    root = _png_dataset(tmp_path / "png")
    splits = find_mask_splits(root, val_fraction=0.25, seed=0)
    assert splits.labels == ["background", "cat", "dog"] and splits.layout == "png"
    assert (len(splits.train), len(splits.val), splits.test) == (3, 1, None)  # val held out of train
    dataset = SegmentationDataset(splits.train, (60, 80), splits.labels, full_masks=True)
    image, mask, info = dataset[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.uint8
    assert mask.shape == (60, 80) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {1, 2, IGNORE_INDEX}
    assert (mask[:, :36] == 1).all() and (mask[:, 36:44] == IGNORE_INDEX).all() and (mask[:, 44:] == 2).all()
    assert info["full_mask"].shape == (30, 40) and info["geometry"].scale_x == 2.0


def test_png_masks_need_a_class_list_and_a_mask_per_image(tmp_path: Path) -> None:
    root = _png_dataset(tmp_path / "png")
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match=r"classes\.txt"):
        find_mask_splits(root)
    root = _png_dataset(tmp_path / "png2")
    (root / "train" / "masks" / "im1.png").unlink()
    with pytest.raises(ValueError, match="im1"):
        find_mask_splits(root)


def test_coco_polygons_and_both_rle_forms_rasterize_the_same_square() -> None:
    height, width = 20, 30
    polygon = [[5, 4, 14, 4, 14, 11, 5, 11]]  # pixel centres 5..13 x 4..10 (pycocotools' convention)
    expected = np.zeros((height, width), dtype=bool)
    expected[4:11, 5:14] = True
    assert np.array_equal(decode_segmentation(polygon, height, width), expected)
    compressed = mask_utils.encode(np.asfortranarray(expected.astype(np.uint8)))
    as_json = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(decode_segmentation(as_json, height, width), expected)
    column_major = expected.T.ravel()  # uncompressed RLE counts runs in column-major order, zeros first
    runs, value, length = [], False, 0
    for pixel in column_major:
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    runs.append(length)
    assert np.array_equal(decode_segmentation({"size": [height, width], "counts": runs}, height, width), expected)
    with pytest.raises(ValueError, match="RLE of size"):
        decode_segmentation(as_json, height + 1, width)


def test_coco_masks_paint_categories_and_ignore_crowds() -> None:
    sample = MaskSample(
        image=Path("unused.jpg"),
        annotations=(
            {"category_id": 7, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0},
            {"category_id": 9, "segmentation": [[6, 0, 9, 0, 9, 4, 6, 4]], "iscrowd": 1},
        ),
        classes={7: 1, 9: 2},
        size=(10, 6),
    )
    mask = sample.load_mask()
    assert mask.shape == (6, 10)
    assert (mask[0:4, 0:4] == 1).all() and (mask[0:4, 6:9] == IGNORE_INDEX).all()
    assert mask[5].max() == 0


def test_semantic_demo_masks_equal_their_polygons_and_rle(semantic_demo: Path) -> None:
    splits = find_mask_splits(semantic_demo)
    assert splits.labels == ["background", "circle", "square", "triangle", "star"]
    assert (len(splits.train), len(splits.val), len(splits.test or [])) == tuple(TINY_SPLITS.values())
    kinds = set()
    for split, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        labels, from_coco = coco_samples(semantic_demo / split / "annotations.json", None)
        assert labels == splits.labels
        for png, coco in zip(samples, from_coco, strict=True):
            assert png.image.stem == coco.image.stem
            truth, rasterized = png.load_mask(), coco.load_mask()
            assert np.mean(truth == rasterized) >= 0.999  # exact by construction; a tolerance for the contract
            assert set(np.unique(truth).tolist()) <= set(range(5))
            kinds |= {type(a["segmentation"]).__name__ for a in coco.annotations}
    assert kinds == {"list", "dict"}  # polygons, and RLE for the outlines (a third of the objects)


def _paint(data: dict[str, Any], image: dict[str, Any], labels: list[str]) -> np.ndarray:
    """The image's class-index mask, rasterized here straight from its COCO annotations; crowds are 255."""
    height, width = image["height"], image["width"]
    classes = {c["id"]: labels.index(c["name"]) for c in data["categories"]}
    canvas = np.zeros((height, width), dtype=np.uint8)
    for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        else:  # the demo's compressed RLE, counts as text
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        canvas[mask_utils.decode(rle).astype(bool)] = IGNORE_INDEX if ann["iscrowd"] else classes[ann["category_id"]]
    return canvas


def test_semantic_training_from_coco_polygons_alone(semantic_demo: Path, tmp_path: Path) -> None:
    """Images and a COCO file per split, no masks/ and no classes.txt: the masks come from the polygons/RLE."""
    root = tmp_path / "coco-only"
    files = {}
    for split in TINY_SPLITS:
        shutil.copytree(semantic_demo / split / "images", root / split / "images")
        data = json.loads((semantic_demo / split / "annotations.json").read_text())
        if split == "train":
            data["annotations"][0]["iscrowd"] = 1  # a crowd region: ignored, not learned
        (root / split / "annotations.json").write_text(json.dumps(data))
        files[split] = data
    splits = find_mask_splits(root)
    assert splits.layout == "coco" and splits.labels == ["background", "circle", "square", "triangle", "star"]
    assert (len(splits.train), len(splits.val), len(splits.test or [])) == tuple(TINY_SPLITS.values())

    cfg = TrainConfig(task="segmentation", data=root, image_size=(48, 64), augment="none")
    train, val, labels = get_task("segmentation").build_datasets(cfg)
    assert labels == splits.labels
    crowd = files["train"]["annotations"][0]
    for dataset, data in ((train, files["train"]), (val, files["val"])):
        assert isinstance(dataset, SegmentationDataset)
        full = SegmentationDataset(dataset.samples, (48, 64), labels, full_masks=True)
        for index, image in enumerate(data["images"]):
            assert full.samples[index].image.name == Path(image["file_name"]).name
            expected = _paint(data, image, labels)
            assert set(np.unique(expected).tolist()) <= {*range(len(labels)), IGNORE_INDEX}
            _, small, info = full[index]
            assert np.array_equal(info["full_mask"], expected)  # exact, at the image's own size
            _, trained_on, _ = dataset[index]
            assert torch.equal(trained_on, small) and small.shape == (48, 64)  # what the loss sees
            if image["id"] == crowd["image_id"] and data is files["train"]:
                region = decode_segmentation(crowd["segmentation"], image["height"], image["width"])
                assert (expected == IGNORE_INDEX).sum() == region.sum() > 0  # objects never overlap
                assert (small == IGNORE_INDEX).any()
            else:
                assert not (expected == IGNORE_INDEX).any()

    tiny = {"epochs": 1, "batch_size": 2, "image_size": (32, 32), "max_samples": 2, "device": "cpu"}
    run = fit(TrainConfig(task="segmentation", data=root, arch="lraspp_mobilenet_v3_large", out=tmp_path, **tiny))
    summary = json.loads((run / "summary.json").read_text())
    assert {"val_miou", "test_miou"} <= set(summary["metrics"])
    assert json.loads((run / "config.json").read_text())["labels"] == labels


def test_instance_demo_annotations_are_exact(instance_demo: Path) -> None:
    kinds = []
    for split in TINY_SPLITS:
        data = json.loads((instance_demo / split / "annotations.json").read_text())
        images = {image["id"]: image for image in data["images"]}
        assert len(images) == TINY_SPLITS[split] and (instance_demo / split / "images").is_dir()
        for ann in data["annotations"]:
            image = images[ann["image_id"]]
            mask = decode_segmentation(ann["segmentation"], image["height"], image["width"])
            rows, cols = np.nonzero(mask)
            assert ann["area"] == mask.sum() > 0
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            if isinstance(ann["segmentation"], list):  # a filled shape: the polygon itself is the truth
                assert np.array_equal(mask, rasterize(ann["segmentation"], image["height"], image["width"]))
            kinds.append(type(ann["segmentation"]).__name__)
    assert "list" in kinds and "dict" in kinds  # polygons and RLE (outlined shapes have holes)


def test_instances_letterbox_masks_with_their_boxes(instance_demo: Path) -> None:
    splits = find_instance_splits(instance_demo)
    assert splits.labels == ["circle", "square", "triangle", "star"]
    sample = next(s for s in splits.train.samples if len(s.boxes) >= 2)
    image, target = letterbox_instances(sample, (96, 128))
    assert image.shape == (3, 96, 128) and target["masks"].shape == (len(target["boxes"]), 96, 128)

    def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
        boxes = []
        for mask in masks:
            rows, cols = torch.nonzero(mask, as_tuple=True)
            boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        return torch.tensor(boxes, dtype=torch.float32)

    assert torch.allclose(mask_boxes(target["masks"]), target["boxes"], atol=1.5)
    torch.manual_seed(0)
    preset = InstanceTrainPreset("light")
    for _ in range(4):  # flips, zooms and shifts move masks and boxes together
        moved_image, moved = preset(image, target)
        assert moved_image.shape == image.shape and len(moved["masks"]) == len(moved["boxes"]) == len(moved["labels"])
        assert torch.allclose(mask_boxes(moved["masks"]), moved["boxes"], atol=2.0)
