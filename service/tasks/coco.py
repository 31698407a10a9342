"""COCO ground truth and pycocotools' COCOeval, shared by detection and instance segmentation."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidDataset
from service.metadata import ModelMetadata
from service.tasks.base import EvalDataset, EvalItem

SUMMARY_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def _fail(path: Path, problem: str) -> InvalidDataset:
    return InvalidDataset(f"malformed COCO file {path.name}: {problem}")


def _coco_candidates(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def has_coco_json(root: Path) -> bool:
    return bool(_coco_candidates(root))


def find_coco_json(root: Path) -> Path:
    candidates = _coco_candidates(root)
    for preferred in ("test", "val"):
        for path in candidates:
            if preferred in path.stem or preferred in path.parent.name:
                return path
    if not candidates:
        raise InvalidDataset("the archive holds no COCO annotation file (*.json)")
    return candidates[0]


def validate_coco(data: Any, path: Path, *, need_segmentation: bool = False) -> None:
    """Refuse files pycocotools would crash on or silently misread, naming the first problem."""
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"'{key}' must be a list")
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
            raise _fail(path, f"images[{i}] needs id, file_name, width and height")
        image_ids.add(image["id"])
    category_ids = set()
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not {"id", "name"} <= category.keys():
            raise _fail(path, f"categories[{i}] needs id and name")
        category_ids.add(category["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(path, f"annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise _fail(path, f"annotations[{i}] has no '{key}'")
        if ann["image_id"] not in image_ids:
            raise _fail(path, f"annotations[{i}] refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise _fail(path, f"annotations[{i}] refers to unknown category_id {ann['category_id']}")
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise _fail(path, f"annotations[{i}].bbox must be [x, y, width, height] with width, height >= 0")
        if need_segmentation and "segmentation" not in ann:
            raise _fail(path, f"annotations[{i}] has no 'segmentation'")


def load_coco_dataset(root: Path, metadata: ModelMetadata, *, need_segmentation: bool = False) -> EvalDataset:
    path = find_coco_json(root)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    validate_coco(data, path, need_segmentation=need_segmentation)
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    label_to_category = category_mapping(data["categories"], metadata)
    items = []
    for image in data["images"]:
        file_path = _resolve_image(path.parent, root, image["file_name"])
        items.append(EvalItem(path=file_path, target=image["id"]))
    info = {"format": "coco", "annotations": path.name, "coco": data, "label_to_category": label_to_category}
    return EvalDataset(items=items, info=info)


def category_mapping(categories: list[dict[str, Any]], metadata: ModelMetadata) -> dict[int, int]:
    """Model label index -> category id, matched by name (COCO JSON and YOLO alike); unknown names refused."""
    names = {c["name"]: c["id"] for c in categories}
    unknown = sorted(set(names) - set(metadata.labels))
    if unknown:
        raise InvalidDataset(
            f"categories not among the model's labels: {', '.join(unknown[:10])}", detail={"labels": metadata.labels}
        )
    return {i: names[label] for i, label in enumerate(metadata.labels) if label in names}


def _resolve_image(json_dir: Path, root: Path, file_name: str) -> Path:
    for base in (json_dir, json_dir / "images", root, root / "images"):
        candidate = (base / file_name).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            return candidate
    raise InvalidDataset(f"image {file_name!r} listed in the COCO file is not in the archive")


def public_info(dataset: EvalDataset) -> None:
    """Drop the bulky internals from the info the report returns."""
    dataset.info.pop("coco", None)
    dataset.info.pop("label_to_category", None)


def run_cocoeval(
    coco_data: dict[str, Any],
    detections: list[dict[str, Any]],
    iou_type: str,
    labels: list[str],
    label_to_category: dict[int, int],
    *,
    curves: bool = False,
) -> dict[str, Any]:
    """COCOeval's twelve summary numbers, plus per-class AP and AP50 read from its precision array.

    `curves`: also each class's precision at COCO's 101 recall points, IoU 0.5 (training's PR-curve plots).
    The caller's ground truth is left as it was (COCOeval writes flags into annotation dicts).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {**coco_data, "annotations": [dict(a) for a in coco_data["annotations"]]}
        ground_truth.createIndex()
        if not detections:
            return {"summary": dict.fromkeys(SUMMARY_NAMES, 0.0), "per_class": [], "num_detections": 0}
        results = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, results, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: float(value) for name, value in zip(SUMMARY_NAMES, evaluator.stats, strict=True)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    category_index = {cat_id: k for k, cat_id in enumerate(evaluator.params.catIds)}
    per_class = []
    for label_id, category_id in sorted(label_to_category.items()):
        k = category_index.get(category_id)
        if k is None:
            continue
        all_ious = precision[:, :, k, 0, -1]
        at_50 = precision[0, :, k, 0, -1]
        per_class.append({
            "label": labels[label_id],
            "class_id": label_id,
            "AP": float(np.mean(all_ious[all_ious > -1])) if (all_ious > -1).any() else -1.0,
            "AP50": float(np.mean(at_50[at_50 > -1])) if (at_50 > -1).any() else -1.0,
        })  # fmt: skip
        if curves:
            per_class[-1]["pr_curve"] = {
                "recall": [float(r) for r in evaluator.params.recThrs],
                "precision": [float(p) for p in np.clip(at_50, 0, 1)],
            }
    return {"summary": summary, "per_class": per_class, "num_detections": len(detections)}
