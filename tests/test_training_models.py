"""Model factory over the required architectures, and initial-weights loading (never downloading)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.models import build_classifier, find_head, list_architectures
from training.weights import WeightsNotFoundError, hub_cache_path, lookup_torchvision_weights, resolve_weights

ARCHS = ["resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"]
HEAVY = {"resnet50", "convnext_tiny"}  # construction is checked; their forward adds seconds for nothing new


def _head(model: nn.Module, arch: str, num_classes: int) -> nn.Module:
    return model.get_submodule(find_head(model, arch, num_classes)[-1])


@pytest.mark.parametrize("arch", ARCHS)
def test_build_replaces_the_head(arch: str) -> None:
    model = build_classifier(arch, 7)
    head = _head(model, arch, 7)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    if arch not in HEAVY:
        with torch.no_grad():
            assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="resnet18") as info:
        build_classifier("resnet19", 3)
    assert "mobilenet_v3_small" in str(info.value)
    assert "convnext_tiny" in list_architectures()


def test_weights_from_a_local_state_dict_and_checkpoint(tmp_path: Path) -> None:
    source = build_classifier("resnet18", 5)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    for name in ("plain.pt", "checkpoint.pt"):
        state = resolve_weights(str(tmp_path / name))
        assert state is not None
        loaded = build_classifier("resnet18", 5, weights=str(tmp_path / name))
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert resolve_weights(None) is None and resolve_weights("none") is None
    with pytest.raises(FileNotFoundError):
        resolve_weights(str(tmp_path / "missing.pt"))


def test_pretrained_file_with_another_head_loads_the_backbone_and_freezes(tmp_path: Path) -> None:
    source = build_classifier("mobilenet_v3_small", 1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    model = build_classifier("mobilenet_v3_small", 4, weights=str(tmp_path / "imagenet.pth"), freeze_backbone=True)
    assert torch.equal(model.state_dict()["features.0.0.weight"], source.state_dict()["features.0.0.weight"])
    assert isinstance(head := _head(model, "mobilenet_v3_small", 4), nn.Linear) and head.out_features == 4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.3.weight", "classifier.3.bias"}
    with pytest.raises(ValueError, match="backbone"):  # wrong architecture: shapes differ outside the head
        build_classifier("mobilenet_v3_large", 4, weights=str(tmp_path / "imagenet.pth"))
    with pytest.raises(ValueError, match="freeze_backbone"):
        build_classifier("mobilenet_v3_small", 4, freeze_backbone=True)


def test_torchvision_weights_come_from_the_hub_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = lookup_torchvision_weights("IMAGENET1K_V1", "mobilenet_v3_small")
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    assert hub_cache_path(weights) == expected
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("IMAGENET1K_V1", "mobilenet_v3_small")
    assert str(expected) in str(info.value) and weights.url in str(info.value)

    expected.parent.mkdir(parents=True)
    source = build_classifier("mobilenet_v3_small", 1000)
    torch.save(source.state_dict(), expected)
    for spec in ("IMAGENET1K_V1", "DEFAULT", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"):
        model = build_classifier("mobilenet_v3_small", 10, weights=spec)
        key = "features.1.block.0.0.weight"
        assert torch.equal(model.state_dict()[key], source.state_dict()[key]), spec
        assert isinstance(head := _head(model, "mobilenet_v3_small", 10), nn.Linear) and head.out_features == 10


def test_unknown_weights_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resolve_weights("IMAGENET9K", "resnet18")
    with pytest.raises(ValueError, match="architecture"):
        resolve_weights("IMAGENET1K_V1")
