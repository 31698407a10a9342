"""COCO JSON detection ground truth -> `DetectionSplit`.

Validation is the service's (`service.tasks.coco.validate_coco`), so a file that trains is a file that
`optic eval` and POST /evaluate accept. Labels are the category names in category-id order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.tasks.coco import validate_coco
from training.data.annotations import DetectionSample, DetectionSplit, empty_targets, xywh_to_xyxy

log = logging.getLogger(__name__)


def coco_labels(data: dict[str, Any]) -> list[str]:
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"COCO categories repeat the names {duplicates}; labels must be unique")
    return [str(n) for n in names]


def find_image(json_path: Path, file_name: str, images_dir: Path | None) -> Path:
    bases = [images_dir] if images_dir is not None else []
    bases += [json_path.parent, json_path.parent / "images", json_path.parent.parent / "images"]
    for base in bases:
        candidate = base / file_name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{json_path}: image {file_name!r} not found under {', '.join(map(str, bases))}")


def read_coco(
    json_path: Path, labels: list[str] | None = None, images_dir: Path | None = None
) -> tuple[list[str], DetectionSplit]:
    """(labels, split). `labels` from another split (train) fixes the order; the categories must be among them.

    Crowd annotations (`iscrowd: 1`) stay in the COCO ground truth and are left out of the training targets;
    so are boxes without area, which torchvision refuses.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path} is not valid JSON ({exc})") from None
    validate_coco(data, json_path)
    own = coco_labels(data)
    if labels is None:
        labels = own
    unknown = sorted(set(own) - set(labels))
    if unknown:
        raise ValueError(f"{json_path} has categories {unknown} that the train split does not have")
    index = {name: i for i, name in enumerate(labels)}
    category_label = {c["id"]: index[c["name"]] for c in data["categories"]}
    for ann in data["annotations"]:  # the defaults pycocotools assumes, written out for COCOeval
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples, dropped = [], 0
    for image in data["images"]:
        anns = by_image.get(image["id"], [])
        kept = [a for a in anns if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        dropped += sum(1 for a in anns if not a["iscrowd"]) - len(kept)
        boxes, classes = empty_targets()
        if kept:
            boxes = np.asarray([xywh_to_xyxy(a["bbox"]) for a in kept], dtype=np.float32)
            classes = np.asarray([category_label[a["category_id"]] for a in kept], dtype=np.int64)
        samples.append(
            DetectionSample(
                path=find_image(json_path, image["file_name"], images_dir),
                image_id=image["id"],
                width=int(image["width"]),
                height=int(image["height"]),
                boxes=boxes,
                labels=classes,
            )
        )
    if not samples:
        raise ValueError(f"{json_path} lists no images")
    if dropped:
        log.warning("%s: %d boxes without area are not training targets", json_path, dropped)
    label_to_category = {index[c["name"]]: c["id"] for c in data["categories"]}
    return labels, DetectionSplit(samples, data, label_to_category)


def find_split_json(folder: Path) -> Path | None:
    """The annotation file of a split folder: `annotations.json`, else its only `*.json`."""
    if (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    candidates = sorted(folder.glob("*.json"))
    if len(candidates) > 1:
        raise ValueError(
            f"{folder} holds several JSON files {[p.name for p in candidates]}; name the annotations annotations.json"
        )
    return candidates[0] if candidates else None
