"""Instance segmentation: COCO polygons/RLE, Mask R-CNN, detection's padded outputs plus a 28x28 mask per box.

The served graph (service/tasks/instance_segmentation.py is the other side of this contract):
  images uint8 [N, 3, H, W] (letterboxed) -> boxes float32 [N, K, 4] (x1, y1, x2, y2, model-input pixels),
  scores float32 [N, K], labels int64 [N, K] (0-based), num_detections int64 [N], and masks float32
  [N, K, 28, 28]: the mask head's probabilities for each kept box's class, before pasting. The service
  pastes them into the original image (`paste_mask`, torchvision's `paste_masks_in_image` for one box);
  pasting K full-size masks inside the graph would make its output K x H x W floats.
Everything else is detection's: the one-image graph looped over N in ONNX (truly dynamic batch), the
letterbox, the parity rules. Training evaluates exactly what the service will answer: mask probabilities
pasted by the service's function at the original size, scored by pycocotools' COCOeval (segm and bbox), as
`optic eval` scores them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN

from dataformats.instances import find_instance_splits
from service.tasks.detection import to_image_boxes
from service.tasks.instance_segmentation import MASK_THRESHOLD, paste_mask
from service.tasks.masks import encode_rle
from training import plots
from training.config import RunConfig, TrainConfig
from training.data.instances import InstanceDataset, InstanceTrainPreset
from training.detection_eval import plot_class_ap, score_coco
from training.mask_rcnn import build_instance_model
from training.tasks import register_task
from training.tasks.base import Evaluation, ParityError
from training.tasks.detection import DetectionTask, DetectorExport, float_images

log = logging.getLogger(__name__)

MASK_SIZE = 28  # Mask R-CNN's mask head output: 14x14 RoIAlign, one 2x transposed conv


def detect_with_mask_probs(model: MaskRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN inference up to the pasting: boxes in model-input pixels (the letterboxed transform never
    resizes), 1-based labels, and `masks` [K, 1, 28, 28], the probabilities for each box's own class."""
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    result: list[dict[str, torch.Tensor]] = detections
    return result


class InstanceExport(DetectorExport):
    """uint8 images -> detection's padded outputs plus `masks` [N, K, 28, 28]; `single` is the exported graph."""

    def single(  # type: ignore[override]  # detection's four outputs, then the masks
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        found = detect_with_mask_probs(self.model, [image[0].float() / 255.0])[0]
        k = self.max_detections
        boxes = torch.cat([found["boxes"], found["boxes"].new_zeros((k, 4))])[:k]
        scores = torch.cat([found["scores"], found["scores"].new_zeros((k,))])[:k]
        labels = found["labels"] - self.offset
        count = torch.ones_like(labels).sum().reshape(1)
        labels = torch.cat([labels, labels.new_zeros((k,))])[:k]
        probs = found["masks"][:, 0]
        masks = torch.cat([probs, probs.new_zeros((k, MASK_SIZE, MASK_SIZE))])[:k]
        return boxes[None], scores[None], labels[None], count, masks[None]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _pair_rows(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], box_atol: float, score_atol: float
) -> Iterator[tuple[int, int]]:
    """(i, j) pairs of valid rows that agree on label, box and score (detection's pairing rule)."""
    count_e, count_a = int(expected["num_detections"]), int(actual["num_detections"])
    used = np.zeros(count_a, dtype=bool)
    for i in range(count_e):
        box_gap = np.abs(actual["boxes"][:count_a] - expected["boxes"][i]).max(axis=1, initial=0.0)
        score_gap = np.abs(actual["scores"][:count_a] - expected["scores"][i])
        ok = ~used & (actual["labels"][:count_a] == expected["labels"][i]) & (box_gap <= box_atol)
        ok &= score_gap <= score_atol
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(score_gap[ok])])
            used[j] = True
            yield i, j


@register_task("instance-segmentation")
class InstanceSegmentationTask(DetectionTask):
    primary_metric = "mask_map"
    export_outputs = ["boxes", "scores", "labels", "num_detections", "masks"]  # noqa: RUF012 - a constant
    mask_min_iou: ClassVar[float] = 0.99  # pasted torch vs ONNX masks, per instance

    find_splits = staticmethod(find_instance_splits)
    splits_name = "instances"
    dataset_type = InstanceDataset  # type: ignore[assignment]
    train_preset = InstanceTrainPreset  # type: ignore[assignment]
    build_network = staticmethod(build_instance_model)
    target_keys = ("boxes", "masks")

    # --- evaluation (training and loss are detection's, with masks among the targets) ------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Evaluation:
        """COCO mask AP (and box AP) of what the service would answer, in original-image pixels."""
        model.eval()
        dataset = loader.dataset
        if not isinstance(dataset, InstanceDataset):
            raise TypeError(f"instance segmentation evaluates InstanceDataset loaders, got {type(dataset).__name__}")
        if not isinstance(model, MaskRCNN):
            raise TypeError(f"instance segmentation evaluates a MaskRCNN, got {type(model).__name__}")
        split = dataset.split
        if not len(split):
            raise ValueError("cannot evaluate on an empty data set")
        segm, bbox = [], []
        for images, targets in loader:
            for found, target in zip(detect_with_mask_probs(model, float_images(images, device)), targets, strict=True):
                geometry = target["geometry"]
                boxes = to_image_boxes(found["boxes"].cpu().numpy().astype(np.float64), geometry)
                probs = found["masks"][:, 0].cpu().numpy()
                for box, prob, score, label in zip(
                    boxes, probs, found["scores"].tolist(), (found["labels"] - 1).tolist(), strict=True
                ):
                    if label not in split.label_to_category:
                        continue
                    mask = paste_mask(prob, box, geometry.width, geometry.height)
                    x1, y1, x2, y2 = (float(v) for v in box)
                    common = {
                        "image_id": target["image_id"],
                        "category_id": split.label_to_category[label],
                        "score": float(score),
                    }
                    segm.append({**common, "segmentation": encode_rle(mask)})
                    bbox.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        category_names = {c["id"]: str(c["name"]) for c in split.coco["categories"]}
        names = {label: category_names[category] for label, category in split.label_to_category.items()}
        # pycocotools' COCOeval, as `optic eval` runs it on the same results; plus per-class PR curves at IoU 0.5.
        mask_metrics, mask_details = score_coco(split.coco, segm, names, split.label_to_category, "segm")
        box_metrics, box_details = score_coco(split.coco, bbox, names, split.label_to_category, "bbox")
        metrics = {
            "mask_map": mask_metrics.get("map", 0.0),
            "mask_map50": mask_metrics.get("map50", 0.0),
            "mask_map75": mask_metrics.get("map75", 0.0),
            "map": box_metrics.get("map", 0.0),
            "map50": box_metrics.get("map50", 0.0),
        }
        return Evaluation(
            metrics={key: max(0.0, value) for key, value in metrics.items()},  # -1: "no ground truth"
            details={
                "per_class": mask_details["per_class"],
                "pr_curves": mask_details["pr_curves"],
                "box_per_class": box_details["per_class"],
            },
        )

    # --- export -------------------------------------------------------------------------------------------
    def export_module(self, model: nn.Module, run: RunConfig) -> nn.Module:
        return InstanceExport(model, self.max_detections)

    def check_parity(
        self, torch_outputs: dict[str, np.ndarray], onnx_outputs: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Detection's rules for boxes, scores and labels; then each paired instance's mask, pasted by the
        service's `paste_mask` from both graphs' probabilities into the same box, must overlap by IoU >=
        `mask_min_iou`."""
        diffs = super().check_parity(torch_outputs, onnx_outputs)
        worst_iou, prob_diff = 1.0, 0.0
        for n in range(len(torch_outputs["num_detections"])):
            expected = {name: value[n] for name, value in torch_outputs.items()}
            actual = {name: value[n] for name, value in onnx_outputs.items()}
            for i, j in _pair_rows(expected, actual, self.box_atol, self.score_atol):
                box = expected["boxes"][i].astype(np.float64)
                width, height = int(np.ceil(box[2])) + 2, int(np.ceil(box[3])) + 2
                mask_e = paste_mask(expected["masks"][i], box, width, height)
                mask_a = paste_mask(actual["masks"][j], box, width, height)
                iou = mask_iou(mask_e, mask_a)
                if iou < self.mask_min_iou:
                    raise ParityError(
                        f"image {n}: detection {i} (label {expected['labels'][i]}): the pasted masks overlap by IoU "
                        f"{iou:.4f} < {self.mask_min_iou}"
                    )
                worst_iou = min(worst_iou, iou)
                prob_diff = max(prob_diff, float(np.abs(expected["masks"][i] - actual["masks"][j]).max()))
        return {**diffs, "mask_min_iou": worst_iou, "mask_probs": prob_diff}

    def metadata_params(self, cfg: TrainConfig) -> dict[str, Any]:
        return {
            **super().metadata_params(cfg),
            "mask_size": MASK_SIZE,
            "mask_threshold": MASK_THRESHOLD,
        }

    # --- reporting ----------------------------------------------------------------------------------------
    def plots(
        self, run_dir: Path, history: list[dict[str, Any]], eval_details: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        losses = sorted({key for row in history for key in row if key.startswith("train_")})
        plots.plot_curves(run_dir / "loss.png", history, losses, ylabel="training loss")
        keys = ["val_mask_map", "val_mask_map50", "val_map", "val_map50"]
        plots.plot_curves(run_dir / "mask_map.png", history, keys, ylabel="COCO AP (val)")
        for split, details in eval_details.items():
            plot_class_ap(
                run_dir / f"class_mask_ap_{split}.png",
                details.get("per_class", []),
                title=f"mask AP per class ({split}, best epoch)",
            )
            plots.plot_pr_curves(
                run_dir / f"mask_pr_curves_{split}.png",
                details.get("pr_curves", {}),
                title=f"mask precision-recall at IoU 0.5 ({split}, best epoch)",
            )
