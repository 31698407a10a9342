"""Image classification: softmax probabilities in, top-k labels out; scikit-learn metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from dataformats.folders import load_folder_dataset
from service.imaging import Geometry
from service.metadata import ModelMetadata
from service.tasks import register_task
from service.tasks.base import EvalDataset, EvalItem, Outputs, ServeTask
from service.tasks.datasets import read_ground_truth


class ClassificationParams(BaseModel):
    top_k: int = Field(5, ge=1, le=1000)


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
        return read_ground_truth(load_folder_dataset, root, metadata)

    def eval_params(self, metadata: ModelMetadata) -> ClassificationParams:
        return ClassificationParams(top_k=1)

    def eval_record(
        self, item: EvalItem, outputs: Outputs, result: dict[str, Any], dataset: EvalDataset, metadata: ModelMetadata
    ) -> dict[str, Any]:
        return {"target": item.target, "scores": outputs[metadata.outputs[0]].tolist()}

    def score(
        self, records: list[dict[str, Any]], info: dict[str, Any], metadata: ModelMetadata
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        labels = metadata.labels
        y_true = np.array([r["target"] for r in records], dtype=np.int64)
        scores = np.array([r["scores"] for r in records], dtype=np.float64).reshape(len(records), len(labels))
        predicted = scores.argmax(axis=1)
        images = [
            {
                "file": r["file"],
                "label": labels[int(t)],
                "predicted": labels[int(p)],
                "score": float(scores[i, p]),
                "correct": bool(t == p),
            }
            for i, (r, t, p) in enumerate(zip(records, y_true, predicted, strict=True))
        ]
        return classification_metrics(y_true, scores, labels), images


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
