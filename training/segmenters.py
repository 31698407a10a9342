"""Semantic segmentation architectures by torchvision name, with a classifier sized for the label set.

Weights (`--weights`), never downloaded (see training.weights):
  none                   random initialisation;
  NAME or FILE           full segmentation weights: a torchvision weights name for this architecture found in
                         the torch hub cache (COCO_WITH_VOC_LABELS_V1, DEFAULT), or a state dict file (an optic
                         segmentation checkpoint); the class-dependent layers are re-initialised when the
                         class count differs;
  backbone:NAME|FILE     classifier weights for the backbone only: a torchvision name for the backbone
                         architecture (IMAGENET1K_V1, ...) or a checkpoint that holds that backbone (an optic
                         classification, segmentation or instance-segmentation run's best.pt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import get_model_builder

from training.detectors import lock_batchnorm, parse_weights
from training.weights import StateDict, load_matching, resolve_weights

log = logging.getLogger(__name__)

# arch -> the torchvision classifier whose weights fit its backbone
SEGMENTERS: dict[str, str] = {
    "lraspp_mobilenet_v3_large": "mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
    "fcn_resnet50": "resnet50",
    "fcn_resnet101": "resnet101",
}
# Where a backbone's keys may sit in a checkpoint: a classifier (MobileNet `features.`, ResNet at the top),
# a segmentation model (`backbone.`) or an R-CNN (`backbone.body.`).
_BACKBONE_PREFIXES = ("features.", "", "backbone.", "backbone.body.")


def list_segmenters() -> list[str]:
    return sorted(SEGMENTERS)


def _construct(arch: str, num_classes: int) -> nn.Module:
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": False}  # LR-ASPP has no auxiliary head
    model: nn.Module = get_model_builder(arch)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return model


def class_dependent_modules(arch: str, num_classes: int) -> list[str]:
    with torch.device("meta"):
        own, other = _construct(arch, num_classes).state_dict(), _construct(arch, num_classes + 1).state_dict()
    return sorted({key.rsplit(".", 1)[0] for key in own if own[key].shape != other[key].shape})


def load_backbone_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> str:
    """Load `state`'s backbone into `backbone` (every key, every shape must fit); returns the prefix it sat under.

    The module's own keys are looked up under each of `_BACKBONE_PREFIXES`, so one file format rule serves a
    classifier checkpoint, a torchvision ImageNet file and another optic task's checkpoint alike.
    """
    own = backbone.state_dict()
    best, best_hits = "", -1
    for prefix in _BACKBONE_PREFIXES:
        hits = sum(
            1 for k, v in own.items() if state.get(prefix + k) is not None and state[prefix + k].shape == v.shape
        )
        if hits == len(own):
            backbone.load_state_dict({k: state[prefix + k] for k in own})
            log.info("loaded %d backbone tensors from %s (prefix %r)", len(own), source, prefix)
            return prefix
        if hits > best_hits:
            best, best_hits = prefix, hits
    missing = [best + k for k, v in own.items() if state.get(best + k) is None or state[best + k].shape != v.shape]
    raise ValueError(
        f"{source} do not hold this backbone: {len(missing)} of {len(own)} tensors missing or of another shape "
        f"(closest layout {best or 'top level'!r}: {missing[:5]})"
    )


def build_segmenter(
    arch: str,
    num_classes: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    *,
    load_weights: bool = True,
) -> nn.Module:
    """A torchvision segmentation model whose `out` has `num_classes` channels at the input's resolution.

    `load_weights=False` builds the layout without reading any weights (export rebuilds from config.json).
    """
    if arch not in SEGMENTERS:
        raise KeyError(f"unknown segmentation architecture {arch!r}; known: {', '.join(list_segmenters())}")
    if num_classes < 2:
        raise ValueError(f"segmentation needs at least 2 classes (background and one more), got {num_classes}")
    model = _construct(arch, num_classes)
    kind, source = parse_weights(weights)
    if load_weights and kind == "backbone":
        state = resolve_weights(source, SEGMENTERS[arch])
        assert state is not None
        load_backbone_weights(model.get_submodule("backbone"), state, str(source))
    elif load_weights and kind == "detector":  # parse_weights' name for "the whole model"
        full: StateDict | None = resolve_weights(source, arch)
        assert full is not None
        # torchvision's COCO weights carry an auxiliary head that optic does not train.
        full = {k: v for k, v in full.items() if not k.startswith("aux_classifier.")}
        load_matching(model, full, class_dependent_modules(arch, num_classes))
    if freeze_backbone:
        if kind == "none":
            raise ValueError("freeze_backbone without pretrained weights would train a head on random features")
        backbone = model.get_submodule("backbone")
        lock_batchnorm(backbone)
        for param in backbone.parameters():
            param.requires_grad_(False)
    return model
