"""Find and load initial weights: a torchvision weights name (from the local hub cache only) or a file.

optic never downloads: a missing torchvision file is an error that says where to put it and where it
comes from, so air-gapped machines and CI behave the same as laptops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, get_weight

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class WeightsNotFoundError(FileNotFoundError):
    """A torchvision weights file is not in the local torch hub cache."""


def is_none(spec: str | Path | None) -> bool:
    return spec is None or str(spec).strip().lower() in ("", "none", "scratch")


def lookup_torchvision_weights(spec: str, arch: str | None) -> WeightsEnum:
    """Weights named fully (ResNet18_Weights.IMAGENET1K_V1), or as IMAGENET1K_V1 / DEFAULT with `arch`."""
    if "." in spec:
        try:
            return get_weight(spec)
        except (ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"unknown torchvision weights {spec!r}: {exc}") from None
    if arch is None:
        raise ValueError(f"weights {spec!r} need an architecture, or spell them like ResNet18_Weights.{spec}")
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"architecture {arch!r} has no torchvision weights: {exc}") from None
    try:
        return enum.verify(spec)
    except (ValueError, KeyError):
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ValueError(f"unknown weights {spec!r} for {arch}; known: {known}") from None


def hub_cache_path(weights: WeightsEnum) -> Path:
    """Where `torch.hub.load_state_dict_from_url` would have stored the file (honours $TORCH_HOME)."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_state_dict_file(path: Path) -> StateDict:
    """A bare state dict, or a checkpoint dict holding one under "model" (what `training.engine` writes)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path} holds neither a state dict nor a checkpoint with a 'model' state dict")
    # Checkpoints saved from DataParallel/DDP prefix every key; the bare model does not.
    if payload and all(key.startswith("module.") for key in payload):
        payload = {key.removeprefix("module."): value for key, value in payload.items()}
    return payload


def resolve_weights(spec: str | Path | None, arch: str | None = None) -> StateDict | None:
    """The state dict named by `spec`, or None to train from scratch. Never touches the network."""
    if spec is None or is_none(spec):
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        return load_state_dict_file(path)
    text = str(spec)
    if os.sep in text or text.endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f"weights file {path} does not exist")
    weights = lookup_torchvision_weights(text, arch)
    cached = hub_cache_path(weights)
    if not cached.is_file():
        raise WeightsNotFoundError(
            f"{weights} is not in the local torch hub cache: expected the file {cached}. optic never "
            f"downloads; fetch it yourself from {weights.url} (e.g. curl -L -o {cached} {weights.url}), "
            f"or pass a local file path"
        )
    log.info("loading %s from %s", weights, cached)
    state: StateDict = torch.load(cached, map_location="cpu", weights_only=True)
    return state


def load_matching(model: nn.Module, state: StateDict, head_prefixes: Iterable[str] = ()) -> list[str]:
    """Load `state` into `model`, strictly, except head keys whose shape differs (a new label set).

    Returns the skipped keys. Any other missing, unexpected or mis-shaped key raises: a backbone that only
    half-loads would train silently from a worse start.
    """
    prefixes = tuple(f"{p}." for p in head_prefixes)
    own = model.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape and k.startswith(prefixes))
    wrong = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape and k not in skipped)
    if wrong:
        details = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
        raise ValueError(f"{len(wrong)} backbone weights do not fit the model ({details}); wrong architecture?")
    result = model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    missing = sorted(set(result.missing_keys) - set(skipped))
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not match the model: missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    if skipped:
        log.info("new head: skipped %d pretrained keys with another shape: %s", len(skipped), skipped)
    return skipped
