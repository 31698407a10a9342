"""Image classification: softmax probabilities in, top-k labels out; scikit-learn metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from service.errors import InvalidDataset
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs, ServeTask

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ClassificationParams(BaseModel):
    top_k: int = Field(5, ge=1, le=1000)


def find_split_root(root: Path) -> Path:
    """An image-folder tree may sit under wrapper folders and hold test/ or val/ splits. A lone folder is a
    wrapper only when it holds folders alone: a lone class folder holds the images themselves."""
    while True:
        for split in ("test", "val"):
            if (root / split).is_dir():
                return root / split
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
            root = entries[0]
            continue
        return root


@register_task
class ClassificationTask(ServeTask):
    name = "classification"
    params_model = ClassificationParams

    def postprocess(self, outputs: Outputs, geometry: Geometry, metadata: ModelMetadata, params: Any) -> dict[str, Any]:
        probabilities = outputs[metadata.outputs[0]]
        k = min(params.top_k, probabilities.shape[0])
        if probabilities.shape[0] <= 256:  # a Python sort of a short list beats numpy's call overhead
            scores = probabilities.tolist()
            top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]  # stable: ties keep class order
        else:
            top = np.argsort(-probabilities, kind="stable")[:k].tolist()
        return {
            "predictions": [
                {"label": metadata.labels[i], "class_id": i, "score": float(probabilities[i])} for i in top
            ],
        }

    def load_eval_dataset(self, root: Path, metadata: ModelMetadata) -> EvalDataset:
        split = find_split_root(root)
        class_dirs = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise InvalidDataset(
                "the archive holds no class folders (expected an image-folder tree: "
                "CLASS/IMAGE files, optionally under test/ or val/)"
            )
        index = {label: i for i, label in enumerate(metadata.labels)}
        unknown = [d.name for d in class_dirs if d.name not in index]
        if unknown:
            raise InvalidDataset(
                f"class folders not among the model's labels: {', '.join(unknown[:10])}",
                detail={"model_labels": metadata.labels},
            )
        items = [
            EvalItem(path=f, target=index[d.name])
            for d in class_dirs
            for f in sorted(d.rglob("*"))
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not items:
            raise InvalidDataset("the archive's class folders hold no images")
        return EvalDataset(items=items, info={"split": split.name})

    def eval_params(self, metadata: ModelMetadata) -> ClassificationParams:
        return ClassificationParams(top_k=1)

    def compute_metrics(
        self, dataset: EvalDataset, outputs: list[Outputs], results: list[dict[str, Any]], metadata: ModelMetadata
    ) -> dict[str, Any]:
        y_true = np.array([item.target for item in dataset.items])
        scores = np.stack([o[metadata.outputs[0]] for o in outputs])
        return classification_metrics(y_true, scores, metadata.labels)


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Top-1/top-5, per-class P/R/F1/support, macro and weighted averages, confusion matrix (sklearn's)."""
    class_ids = list(range(len(labels)))
    y_pred = scores.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=class_ids, zero_division=0)
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=class_ids, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    k = min(5, len(labels))
    top5 = top_k_accuracy_score(y_true, scores, k=k, labels=class_ids) if len(labels) > 2 else 1.0
    top1 = float(np.mean(y_pred == y_true))
    return {
        "summary": {"top1": top1, "top5": float(top5), "macro_f1": averages["macro"]["f1"]},
        "top1": top1,
        "top5": float(top5),
        "per_class": [
            {
                "label": labels[i],
                "class_id": i,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in class_ids
        ],
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=class_ids).tolist(),
        "num_images": len(y_true),
    }
