"""The demo data sets re-written as the annotation tools and trainers export them, file for file.

Each writer takes a demo folder (`SPLIT/images/` + `SPLIT/annotations.json`, YOLO `SPLIT/labels/` for
detection, class folders for classification) and writes the same images and annotations in one tool's layout,
with that tool's habits: Roboflow's renamed files, project category and ids from 0; CVAT's `attributes`,
empty box segmentations and uncompressed RLE; Label Studio's `images/<hash>-name` file names and ids from 0.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dataformats.masks import decode_segmentation
from service.tasks.masks import encode_polygons

ROBOFLOW_SPLIT = {"train": "train", "val": "valid", "test": "test"}
CVAT_SUBSET = {"train": "Train", "val": "Validation", "test": "Test"}
PROJECT = "shapes-x7k2p"


def _digest(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _coco(src: Path, split: str) -> dict[str, Any]:
    return dict(json.loads((src / split / "annotations.json").read_text()))


def _renumbered(data: dict[str, Any], start: int) -> tuple[dict[Any, int], list[dict[str, Any]]]:
    images = {image["id"]: start + k for k, image in enumerate(data["images"])}
    anns = [{**ann, "id": start + k, "image_id": images[ann["image_id"]]} for k, ann in enumerate(data["annotations"])]
    return images, anns


def _box_segmentation(ann: dict[str, Any]) -> dict[str, Any]:
    return ann if "segmentation" in ann else {**ann, "segmentation": []}  # what box-only projects export


def roboflow_coco(src: Path, out: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """Roboflow's "COCO JSON" export: `{train,valid,test}/_annotations.coco.json`, the images beside it under
    `NAME_jpg.rf.HASH.jpg`, a project category 0 no annotation uses, image and annotation ids from 0."""
    for split in splits:
        data = _coco(src, split)
        folder = out / ROBOFLOW_SPLIT[split]
        folder.mkdir(parents=True)
        names = {c["id"]: c["name"] for c in data["categories"]}
        categories = [{"id": 0, "name": PROJECT, "supercategory": "none"}]
        categories += [{"id": k + 1, "name": names[i], "supercategory": PROJECT} for k, i in enumerate(sorted(names))]
        new_category = {i: k + 1 for k, i in enumerate(sorted(names))}
        image_ids, anns = _renumbered(data, 0)
        images = []
        for image in data["images"]:
            stem, suffix = Path(image["file_name"]).stem, Path(image["file_name"]).suffix
            name = f"{stem}_{suffix[1:]}.rf.{_digest(stem)}{suffix}"
            shutil.copy(src / split / "images" / image["file_name"], folder / name)
            images.append(
                {
                    "id": image_ids[image["id"]],
                    "license": 1,
                    "file_name": name,
                    "height": image["height"],
                    "width": image["width"],
                    "date_captured": "2024-05-01T10:00:00+00:00",
                }
            )
        anns = [_box_segmentation({**a, "category_id": new_category[a["category_id"]]}) for a in anns]
        document = {
            "info": {"year": "2024", "version": "1", "description": "Exported from roboflow.com"},
            "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
            "categories": categories,
            "images": images,
            "annotations": anns,
        }
        (folder / "_annotations.coco.json").write_text(json.dumps(document))
    (out / "README.roboflow.txt").write_text("shapes - v1\nThis dataset was exported via roboflow.com\n")
    return out


def _uncompressed(segmentation: Any, height: int, width: int) -> Any:
    """CVAT writes masks as uncompressed RLE: run lengths in column-major order, zeros first."""
    if not isinstance(segmentation, dict):
        return segmentation
    flat = decode_segmentation(segmentation, height, width).T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, changes, flat.size]).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"counts": runs, "size": [height, width]}


def cvat_coco(src: Path, out: Path, splits: tuple[str, ...] = ("test",)) -> Path:
    """CVAT's "COCO 1.0" export: `annotations/instances_<subset>.json` and `images/<subset>/...` for a project
    with subsets, or one task's `instances_default.json` with `images/` (file names with a sub-folder)."""
    (out / "annotations").mkdir(parents=True)
    subsets = len(splits) > 1
    for split in splits:
        data = _coco(src, split)
        subset = CVAT_SUBSET[split] if subsets else "default"
        image_ids, anns = _renumbered(data, 1)
        sizes = {image_ids[im["id"]]: (im["height"], im["width"]) for im in data["images"]}
        images = []
        for image in data["images"]:
            name = image["file_name"] if subsets else f"batch_1/{image['file_name']}"
            target = out / "images" / (subset if subsets else "") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / split / "images" / image["file_name"], target)
            images.append(
                {
                    "id": image_ids[image["id"]],
                    "width": image["width"],
                    "height": image["height"],
                    "file_name": name,
                    "license": 0,
                    "flickr_url": "",
                    "coco_url": "",
                    "date_captured": 0,
                }
            )
        converted = []
        for ann in anns:
            ann = _box_segmentation(ann)
            segmentation = _uncompressed(ann["segmentation"], *sizes[ann["image_id"]])
            converted.append(
                {
                    **ann,
                    "segmentation": segmentation,
                    "bbox": [float(v) for v in ann["bbox"]],
                    "area": float(ann["area"]),
                    "attributes": {"occluded": False, "rotation": 0.0},
                }
            )
        document = {
            "licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in data["categories"]],
            "images": images,
            "annotations": converted,
        }
        (out / "annotations" / f"instances_{subset}.json").write_text(json.dumps(document))
    return out


def label_studio_coco(src: Path, out: Path, split: str = "test") -> Path:
    """Label Studio's "COCO" export: `result.json` beside `images/`, file names `images/<hash>-<name>`,
    image, category and annotation ids from 0."""
    data = _coco(src, split)
    (out / "images").mkdir(parents=True)
    image_ids, anns = _renumbered(data, 0)
    categories = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    images = []
    for image in data["images"]:
        name = f"images/{_digest(image['file_name'])[:8]}-{image['file_name']}"
        shutil.copy(src / split / "images" / image["file_name"], out / name)
        images.append(
            {"width": image["width"], "height": image["height"], "id": image_ids[image["id"]], "file_name": name}
        )
    document = {
        "images": images,
        "categories": [{"id": categories[c["id"]], "name": c["name"]} for c in data["categories"]],
        "annotations": [
            {**_box_segmentation(a), "category_id": categories[a["category_id"]], "ignore": 0} for a in anns
        ],
        "info": {"year": 2024, "version": "1.0", "description": "", "contributor": "Label Studio", "url": ""},
    }
    (out / "result.json").write_text(json.dumps(document))
    return out


def one_outline(polygons: list[list[int]]) -> list[int]:
    """A YOLO-seg line holds one polygon: the pieces of a mask joined by cuts walked both ways (pycocotools
    fills by the even-odd rule, so a cut adds nothing), as Ultralytics' COCO converter joins them."""
    path = np.asarray(polygons[0], dtype=np.int64).reshape(-1, 2)
    for other in polygons[1:]:
        piece = np.asarray(other, dtype=np.int64).reshape(-1, 2)
        k = int(np.argmin(((path - piece[0]) ** 2).sum(axis=1)))
        path = np.concatenate([path[: k + 1], piece, piece[:1], path[k:]])
    return [int(v) for v in path.ravel()]


def yolo_seg_labels(src: Path, split: str) -> dict[str, str]:
    """YOLO-seg label text per image stem: each instance's mask as the polygon pycocotools decodes back to it."""
    data = _coco(src, split)
    names = sorted(c["id"] for c in data["categories"])
    lines: dict[Any, list[str]] = {image["id"]: [] for image in data["images"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    for ann in data["annotations"]:
        height, width = sizes[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], height, width)
        polygon = one_outline(encode_polygons(mask))
        assert np.array_equal(decode_segmentation([polygon], height, width), mask)
        coords = [v / (width if i % 2 == 0 else height) for i, v in enumerate(polygon)]
        lines[ann["image_id"]].append(" ".join([str(names.index(ann["category_id"]))] + [f"{v:.6f}" for v in coords]))
    return {Path(im["file_name"]).stem: "".join(f"{line}\n" for line in lines[im["id"]]) for im in data["images"]}


def _labels(src: Path, split: str, seg: bool) -> dict[str, str]:
    if seg:
        return yolo_seg_labels(src, split)
    return {p.stem: p.read_text() for p in (src / split / "labels").glob("*.txt")}


def _names(src: Path) -> list[str]:
    data = _coco(src, "test")
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def ultralytics_yolo(
    src: Path, out: Path, path: str, *, seg: bool = False, splits: tuple[str, ...] = ("test",)
) -> Path:
    """An Ultralytics data set: `images/<split>/`, `labels/<split>/` mirroring it, and a data.yaml whose
    `path:` is what its maker's machine had (absolute, or relative to where they ran the trainer)."""
    for split in splits:
        labels = _labels(src, split, seg)
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for image in sorted((src / split / "images").iterdir()):
            shutil.copy(image, out / "images" / split / image.name)
            (out / "labels" / split / f"{image.stem}.txt").write_text(labels.get(image.stem, ""))
    data = {"path": path, **{s: f"images/{s}" for s in splits}, "names": dict(enumerate(_names(src)))}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def roboflow_yolo(src: Path, out: Path, *, seg: bool = False, splits: tuple[str, ...] = ("test",)) -> Path:
    """Roboflow's "YOLOv8" export: `{train,valid,test}/{images,labels}` and a data.yaml naming every split as
    `../<split>/images` whether exported or not, with `nc`, a `names` list and a `roboflow:` block."""
    for split in splits:
        labels = _labels(src, split, seg)
        folder = out / ROBOFLOW_SPLIT[split]
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        for image in sorted((src / split / "images").iterdir()):
            name = f"{image.stem}_{image.suffix[1:]}.rf.{_digest(image.stem)}"
            shutil.copy(image, folder / "images" / f"{name}{image.suffix}")
            (folder / "labels" / f"{name}.txt").write_text(labels.get(image.stem, ""))
    names = _names(src)
    (out / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(names)}\nnames: {json.dumps(names)}\n\n"
        f"roboflow:\n  workspace: optic\n  project: {PROJECT}\n  version: 1\n  license: CC BY 4.0\n"
        f"  url: https://universe.roboflow.com/optic/{PROJECT}/dataset/1\n"
    )
    (out / "README.roboflow.txt").write_text("shapes - v1\nThis dataset was exported via roboflow.com\n")
    return out


def roboflow_folders(src: Path, out: Path) -> Path:
    """Roboflow's "Folder Structure" classification export: `{train,valid,test}/<class>/`."""
    for split, name in ROBOFLOW_SPLIT.items():
        shutil.copytree(src / split, out / name)
    return out
