"""Detection architectures by torchvision name, with class heads sized for the data set.

Weights (`--weights`), never downloaded (see training.weights):
  none                     random initialisation, torchvision's from-scratch layout;
  NAME or FILE             full detector weights: a torchvision weights name for this architecture found in
                           the torch hub cache (COCO_V1, DEFAULT, ...), or a state dict file (torchvision's, or
                           an optic detection checkpoint); the class heads are re-initialised when the
                           class count differs;
  backbone:NAME|FILE       classifier weights for the backbone only: a torchvision name for the backbone
                           architecture (IMAGENET1K_V1, ...) or a classification checkpoint of that
                           architecture (e.g. an optic classification run's best.pt).
Backbone weights go through torchvision's own builder (`weights_backbone=`), so the detector gets exactly
torchvision's pretrained-backbone layout (frozen BatchNorm for the R-CNN family, SSDlite's full tail).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model_builder, get_model_weights
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from training.models import find_head
from training.weights import StateDict, hub_cache_path, is_none, load_matching, resolve_weights

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone:"


@dataclass(frozen=True)
class DetectorSpec:
    backbone: str  # the torchvision classifier whose weights fit the backbone
    background: bool  # softmax with a background class 0: the model has num_classes + 1 outputs
    body: str  # the backbone's feature extractor (frozen by --freeze-backbone)
    lock_bn: bool = True  # pretrained BatchNorm statistics stay fixed when fine-tuning (torchvision's choice)


DETECTORS: dict[str, DetectorSpec] = {
    "fasterrcnn_mobilenet_v3_large_fpn": DetectorSpec("mobilenet_v3_large", True, "backbone.body"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": DetectorSpec("mobilenet_v3_large", True, "backbone.body"),
    "fasterrcnn_resnet50_fpn": DetectorSpec("resnet50", True, "backbone.body"),
    "fasterrcnn_resnet50_fpn_v2": DetectorSpec("resnet50", True, "backbone.body"),
    "retinanet_resnet50_fpn": DetectorSpec("resnet50", False, "backbone.body"),
    "retinanet_resnet50_fpn_v2": DetectorSpec("resnet50", False, "backbone.body"),
    "fcos_resnet50_fpn": DetectorSpec("resnet50", False, "backbone.body"),
    # SSDlite trains its BatchNorm even from pretrained weights (torchvision's recipe).
    "ssdlite320_mobilenet_v3_large": DetectorSpec("mobilenet_v3_large", True, "backbone.features", lock_bn=False),
}


def list_detectors() -> list[str]:
    return sorted(DETECTORS)


def get_spec(arch: str) -> DetectorSpec:
    if arch not in DETECTORS:
        raise KeyError(f"unknown detection architecture {arch!r}; known: {', '.join(list_detectors())}")
    return DETECTORS[arch]


def parse_weights(spec: str | None) -> tuple[str, str | None]:
    """("none" | "detector" | "backbone", the name or path)."""
    if spec is None or is_none(spec):
        return "none", None
    if spec.startswith(BACKBONE_PREFIX):
        return "backbone", spec[len(BACKBONE_PREFIX) :]
    return "detector", spec


class LetterboxedTransform(GeneralizedRCNNTransform):
    """torchvision's normalize-and-batch step without its resize: inputs arrive letterboxed to the graph's
    size (service.imaging), so boxes stay in model-input pixels and nothing is resampled twice."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def letterboxed(transform: GeneralizedRCNNTransform) -> LetterboxedTransform:
    return LetterboxedTransform(
        transform.min_size,
        transform.max_size,
        transform.image_mean,
        transform.image_std,
        size_divisible=transform.size_divisible,
        fixed_size=transform.fixed_size,
    )


class _LockedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that stays in eval mode: torchvision's FrozenBatchNorm2d, keeping BatchNorm2d's state dict."""

    def train(self, mode: bool = True) -> _LockedBatchNorm2d:
        return super().train(False)


def lock_batchnorm(module: nn.Module) -> None:
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = _LockedBatchNorm2d
            child.eval()
            for param in child.parameters():
                param.requires_grad_(False)


def class_dependent_modules(arch: str, num_outputs: int) -> list[str]:
    """Modules whose shapes follow the class count, found by building the arch twice on the meta device."""
    builder = get_model_builder(arch)
    with torch.device("meta"):
        own = builder(weights=None, weights_backbone=None, num_classes=num_outputs).state_dict()
        other = builder(weights=None, weights_backbone=None, num_classes=num_outputs + 1).state_dict()
    return sorted({key.rsplit(".", 1)[0] for key in own if own[key].shape != other[key].shape})


@contextmanager
def _offline_hub(weights: WeightsEnum, state: StateDict) -> Iterator[None]:
    """Serve `state` as `weights` from a private hub cache: torchvision's builder finds the file "cached"
    and loads it, so it lays the model out exactly as for its own pretrained backbone."""
    # Restore the private setting itself: set_dir(get_dir()) would pin the folder and stop get_dir()
    # following $TORCH_HOME afterwards.
    previous = getattr(torch.hub, "_hub_dir", None)
    with tempfile.TemporaryDirectory(prefix="optic-hub-") as tmp:
        torch.hub.set_dir(tmp)
        try:
            path = hub_cache_path(weights)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
            yield
        finally:
            torch.hub._hub_dir = previous


def backbone_state(backbone: str, state: StateDict | None) -> StateDict:
    """`state` completed to the torchvision classifier layout the builder loads strictly (1000 classes).

    Only the classifier head may be missing or differ; any other gap means the file is not a `backbone`.
    `state=None` gives a random one: the layout without the weights, for rebuilding a trained model.
    """
    reference = torchvision.models.get_model(backbone, weights=None)
    full = reference.state_dict()
    if state is None:
        return full
    head = tuple(f"{name}." for name in find_head(reference, backbone, 1000))
    unexpected = sorted(set(state) - set(full))
    body = [k for k in full if not k.startswith(head)]
    missing = [k for k in body if k not in state]
    wrong = [k for k in body if k in state and state[k].shape != full[k].shape]
    if unexpected or missing or wrong:
        raise ValueError(
            f"these weights are not a {backbone} backbone: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {wrong[:5]}"
        )
    return {**full, **{k: v for k, v in state.items() if not k.startswith(head)}}


def _load_detector_state(model: nn.Module, arch: str, num_outputs: int, state: StateDict) -> None:
    # torchvision's pretrained detectors use FrozenBatchNorm2d, whose state has no num_batches_tracked.
    own = model.state_dict()
    counters = {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    load_matching(model, {**counters, **state}, class_dependent_modules(arch, num_outputs))


def build_detector(
    arch: str,
    num_classes: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    *,
    load_weights: bool = True,
    **settings: Any,
) -> nn.Module:
    """A torchvision detector for `num_classes` labels (plus background where the arch has one).

    `load_weights=False` builds the layout `weights` implies without reading them (export rebuilds a trained
    model from its config alone). `settings` set the postprocessing: score_thresh, nms_thresh,
    detections_per_img (on the model, or its roi_heads for the R-CNN family).
    """
    spec = get_spec(arch)
    if num_classes < 1:
        raise ValueError(f"a detector needs at least 1 class, got {num_classes}")
    kind, source = parse_weights(weights)
    if freeze_backbone and kind == "none":
        raise ValueError("freeze_backbone without pretrained weights would train heads on random features")
    # Read the weights before building: a missing file fails at once, not after a model's construction.
    state = resolve_weights(source, spec.backbone if kind == "backbone" else arch) if load_weights else None
    outputs = num_classes + int(spec.background)
    builder = get_model_builder(arch)
    if kind == "backbone":
        enum = get_model_weights(spec.backbone).DEFAULT  # only names the cache file; our state is served
        with _offline_hub(enum, backbone_state(spec.backbone, state)):
            model = builder(weights=None, weights_backbone=enum, num_classes=outputs)
    else:
        model = builder(weights=None, weights_backbone=None, num_classes=outputs)
        if state is not None:
            _load_detector_state(model, arch, outputs, state)
            if spec.lock_bn:
                lock_batchnorm(model.get_submodule(spec.body))
    model.transform = letterboxed(model.transform)
    postprocess = model.roi_heads if hasattr(model, "roi_heads") else model
    for name, value in settings.items():
        if not hasattr(postprocess, name):
            raise AttributeError(f"{arch} has no postprocessing setting {name!r}")
        setattr(postprocess, name, value)
    if freeze_backbone:
        body = model.get_submodule(spec.body)
        lock_batchnorm(body)
        for param in body.parameters():
            param.requires_grad_(False)
    return model


def postprocess_settings(model: nn.Module) -> dict[str, float]:
    target: Any = model.roi_heads if hasattr(model, "roi_heads") else model
    return {
        "score_thresh": float(target.score_thresh),
        "nms_thresh": float(target.nms_thresh),
        "detections_per_img": int(target.detections_per_img),
    }
