"""pycocotools' COCOeval, shared by detection and instance segmentation (the ground truth: dataformats.coco)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from service.tasks.base import EvalDataset

SUMMARY_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


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
    matching: bool = False,
) -> dict[str, Any]:
    """COCOeval's twelve summary numbers, plus per-class AP and AP50 read from its precision array.

    `curves`: also each class's precision at COCO's 101 recall points, IoU 0.5 (PR-curve plots).
    `matching`: also, per class, the score threshold that maximizes F1 at IoU 0.5 (`thresholds`, and
    `f1_threshold` in per_class), and under `matches` COCOeval's own matching of every detection (by its
    index in `detections`: the ground-truth id it matched at IoU 0.5, that IoU, whether it is ignored) and
    each image's countable ground truth by category.
    The caller's ground truth is left as it was (COCOeval writes flags into annotation dicts).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {**coco_data, "annotations": [dict(a) for a in coco_data["annotations"]]}
        ground_truth.createIndex()
        if not detections:
            empty: dict[str, Any] = {"summary": dict.fromkeys(SUMMARY_NAMES, 0.0), "per_class": [], "num_detections": 0}
            if matching:
                empty["thresholds"] = {}
                empty["matches"] = _no_matches(coco_data)
            return empty
        results = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, results, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: float(value) for name, value in zip(SUMMARY_NAMES, evaluator.stats, strict=True)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    category_index = {cat_id: k for k, cat_id in enumerate(evaluator.params.catIds)}
    matches = _matches(evaluator) if matching else None
    per_class = []
    thresholds: dict[str, float] = {}
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
        if matches is not None:
            best = best_f1(matches["by_category"].get(category_id, ([], [])), matches["positives"].get(category_id, 0))
            per_class[-1]["f1_threshold"] = best
            if best is not None:
                thresholds[labels[label_id]] = best["score"]
    report: dict[str, Any] = {"summary": summary, "per_class": per_class, "num_detections": len(detections)}
    if matches is not None:
        report["thresholds"] = thresholds
        report["matches"] = {"detections": matches["detections"], "ground_truth": matches["ground_truth"]}
    return report


def _no_matches(coco_data: dict[str, Any]) -> dict[str, Any]:
    ground_truth: dict[Any, dict[int, list[int]]] = {}
    for ann in coco_data["annotations"]:
        if not ann.get("iscrowd", 0):
            ground_truth.setdefault(ann["image_id"], {}).setdefault(ann["category_id"], []).append(ann["id"])
    return {"detections": {}, "ground_truth": ground_truth}


def _matches(evaluator: Any) -> dict[str, Any]:
    """COCOeval's matching at IoU 0.5, area "all", its largest max-detections: per detection (index in the
    list given to loadRes, whose ids are index + 1) its ground-truth id or None, IoU and ignore flag; per
    category the (scores, true-positive flags) of the detections that count; per image and category the ids
    of the ground truth that counts (not crowd, in the area range)."""
    params = evaluator.params
    detections: dict[int, tuple[int | None, float | None, bool]] = {}
    by_category: dict[int, tuple[list[float], list[bool]]] = {}
    positives: dict[int, int] = {}
    ground_truth: dict[Any, dict[int, list[int]]] = {}
    images, areas = len(params.imgIds), len(params.areaRng)
    for k, category_id in enumerate(params.catIds):
        scores, hits = by_category.setdefault(category_id, ([], []))
        for i, image_id in enumerate(params.imgIds):
            e = evaluator.evalImgs[k * areas * images + i]  # area index 0: "all"
            if e is None:
                continue
            counted = [g for g, ignore in zip(e["gtIds"], e["gtIgnore"], strict=True) if not ignore]
            positives[category_id] = positives.get(category_id, 0) + len(counted)
            if counted:
                ground_truth.setdefault(image_id, {})[category_id] = [int(g) for g in counted]
            gts = evaluator._gts[image_id, category_id]
            column = {g["id"]: c for c, g in enumerate(gts)}
            ious = evaluator.ious.get((image_id, category_id))
            for row, dt_id in enumerate(e["dtIds"]):
                matched = int(e["dtMatches"][0, row])
                ignored = bool(e["dtIgnore"][0, row])
                iou = None
                if matched and ious is not None and len(ious):
                    iou = float(ious[row, column[matched]])
                detections[int(dt_id) - 1] = (matched or None, iou, ignored)
                if not ignored:
                    scores.append(float(e["dtScores"][row]))
                    hits.append(bool(matched))
    return {"detections": detections, "by_category": by_category, "positives": positives,
            "ground_truth": ground_truth}  # fmt: skip


def best_f1(scored: tuple[list[float], list[bool]], positives: int) -> dict[str, float] | None:
    """The score threshold (keep detections scoring at least it) with the highest F1, and its precision and
    recall; None without detections or ground truth. Ties in F1 go to the higher threshold."""
    scores, hits = np.asarray(scored[0], dtype=np.float64), np.asarray(scored[1], dtype=bool)
    if not len(scores) or not positives:
        return None
    order = np.argsort(-scores, kind="mergesort")
    scores, hits = scores[order], hits[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every detection of an equal score
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    best = int(np.argmax(f1))
    return {"score": float(scores[best]), "precision": float(precision[best]), "recall": float(recall[best]),
            "f1": float(f1[best])}  # fmt: skip
