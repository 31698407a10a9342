"""Classification architectures by torchvision name, with a head sized for the label set.

The model is built directly with `num_classes` (torchvision sizes every head, including Inception's and
GoogLeNet's auxiliary ones); pretrained weights are then loaded with the old head skipped.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache

import torch
import torchvision
from torch import nn

from training.weights import load_matching, resolve_weights

log = logging.getLogger(__name__)


@cache
def list_architectures() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _construct(arch: str, num_classes: int) -> nn.Module:
    with warnings.catch_warnings():
        # GoogLeNet/Inception warn that their default init will change; irrelevant for a named arch.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    return model


def _last_linear(model: nn.Module) -> str:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    return names[-1]


def find_head(model: nn.Module, arch: str, num_classes: int) -> list[str]:
    """Names of the modules whose parameters depend on `num_classes`, the main head last.

    Found by building the same architecture with another class count on the meta device (no memory, no
    init cost) and diffing parameter shapes: exact even for auxiliary heads or a convolutional head
    (SqueezeNet). Falls back to the last nn.Linear where meta construction fails (RegNet).
    """
    try:
        with torch.device("meta"):
            other = _construct(arch, num_classes + 1)
    except (NotImplementedError, RuntimeError):
        return [_last_linear(model)]
    own, ref = model.state_dict(), other.state_dict()
    changed = [key.rsplit(".", 1)[0] for key in own if key in ref and own[key].shape != ref[key].shape]
    if not changed:
        return [_last_linear(model)]
    return list(dict.fromkeys(changed))  # state_dict order puts the main head last


def set_trainable_head_only(model: nn.Module, head: list[str]) -> int:
    """Freeze everything but `head`; returns the number of trainable parameters left."""
    prefixes = tuple(f"{name}." for name in head)
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefixes)
        trainable += param.numel() if param.requires_grad else 0
    return trainable


def build_classifier(
    arch: str, num_classes: int, weights: str | None = None, freeze_backbone: bool = False
) -> nn.Module:
    """A torchvision classifier with `num_classes` outputs, optionally initialised from `weights`."""
    if arch not in list_architectures():
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(list_architectures())}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = _construct(arch, num_classes)
    head = find_head(model, arch, num_classes)
    state = resolve_weights(weights, arch)
    if state is not None:
        load_matching(model, state, head)
    elif freeze_backbone:
        raise ValueError("freeze_backbone without pretrained weights would train only a head on random features")
    if freeze_backbone:
        trainable = set_trainable_head_only(model, head)
        log.info("backbone frozen: %d trainable parameters in %s", trainable, head)
    return model
