"""Pretrained-weights fixtures for tests: torchvision's hub cache layout, and states no initialiser produces."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_weight

from training.weights import hub_cache_path


def hub_file(torch_home: Path, weights: str) -> Path:
    """Where torchvision's own download would have put `weights` under $TORCH_HOME, folder created."""
    enum = get_weight(weights)
    path = torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(enum.url).path)
    assert hub_cache_path(enum) == path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s layout with values no initialiser produces (BatchNorm statistics included)."""
    generator = torch.Generator().manual_seed(1)
    return {
        key: torch.rand(value.shape, generator=generator) + 0.5 if value.is_floating_point() else value.clone()
        for key, value in model.state_dict().items()
    }
