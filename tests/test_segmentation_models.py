"""Segmentation model factories: the required architectures, head sizes, backbone weights from files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_builder

from tests.weights_support import hub_file, random_state
from training.mask_rcnn import INSTANCE_ARCHS, build_instance_model
from training.models import build_classifier
from training.segmenters import SEGMENTERS, build_segmenter

SEMANTIC = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "fcn_resnet50"]
INSTANCE = ["maskrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn_v2"]
HEAVY = {"deeplabv3_resnet50", "fcn_resnet50", "maskrcnn_resnet50_fpn_v2"}  # construction only: forwards add seconds


def _last_conv(module: nn.Module) -> nn.Conv2d:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


@pytest.mark.parametrize("arch", SEMANTIC)
def test_semantic_models_have_a_head_per_class(arch: str) -> None:
    assert arch in SEGMENTERS
    model = build_segmenter(arch, 3)
    assert _last_conv(model.classifier).out_channels == 3
    assert not hasattr(model, "aux_classifier") or model.aux_classifier is None
    if arch not in HEAVY:
        with torch.no_grad():
            assert model.eval()(torch.rand(1, 3, 64, 48))["out"].shape == (1, 3, 64, 48)  # logits at input size


@pytest.mark.parametrize("arch", INSTANCE)
def test_instance_models_have_class_and_mask_heads_with_background(arch: str) -> None:
    assert arch in INSTANCE_ARCHS
    model = build_instance_model(arch, 4, score_thresh=0.2, detections_per_img=7)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert (model.roi_heads.score_thresh, model.roi_heads.detections_per_img) == (0.2, 7)
    if arch not in HEAVY:
        # The slim model must fit the ~15 MB budget of a committed ONNX file (4 bytes per parameter).
        assert sum(p.numel() for p in model.parameters()) < 3.75e6
        with torch.no_grad():
            found = model.eval()([torch.rand(3, 96, 128)])[0]
        assert found["masks"].shape[1:] == (1, 96, 128) and len(found["boxes"]) <= 7


def test_unknown_architectures_list_the_known_ones() -> None:
    with pytest.raises(KeyError, match="lraspp_mobilenet_v3_large"):
        build_segmenter("unet", 3)
    with pytest.raises(KeyError, match="maskrcnn_mobilenet_v3_large_fpn"):
        build_instance_model("maskrcnn_resnet18", 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_segmenter("lraspp_mobilenet_v3_large", 1)


def test_backbone_weights_come_from_classifier_and_segmentation_checkpoints(tmp_path: Path) -> None:
    classifier = build_classifier("mobilenet_v3_large", 3)
    torch.save({"model": classifier.state_dict()}, tmp_path / "cls.pt")
    reference = classifier.features[5].block[0][0].weight

    semantic = build_segmenter("lraspp_mobilenet_v3_large", 3, weights=f"backbone:{tmp_path / 'cls.pt'}")
    assert torch.equal(semantic.backbone["5"].block[0][0].weight, reference)
    torch.save({"model": semantic.state_dict()}, tmp_path / "seg.pt")

    for source in ("cls.pt", "seg.pt"):  # classifier layout `features.`, segmentation layout `backbone.`
        model = build_instance_model("maskrcnn_mobilenet_v3_large_fpn", 2, weights=f"backbone:{tmp_path / source}")
        assert torch.equal(model.backbone.body["5"].block[0][0].weight, reference), source
        batchnorm = model.backbone.body["5"].block[0][1]
        assert not batchnorm.weight.requires_grad and not model.train().backbone.body["5"].block[0][1].training
    with pytest.raises(ValueError, match="backbone"):
        build_segmenter("deeplabv3_resnet50", 3, weights=f"backbone:{tmp_path / 'cls.pt'}")  # a MobileNet file


def test_full_weights_with_another_class_count_reinitialise_only_the_heads(tmp_path: Path) -> None:
    source = build_segmenter("lraspp_mobilenet_v3_large", 6)
    torch.save(source.state_dict(), tmp_path / "seg6.pt")
    model = build_segmenter("lraspp_mobilenet_v3_large", 3, weights=str(tmp_path / "seg6.pt"), freeze_backbone=True)
    assert torch.equal(model.backbone["3"].block[0][0].weight, source.backbone["3"].block[0][0].weight)
    assert _last_conv(model.classifier).out_channels == 3
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(ValueError, match="freeze_backbone"):
        build_segmenter("lraspp_mobilenet_v3_large", 3, freeze_backbone=True)


def _assert_loaded(model: nn.Module, state: dict[str, torch.Tensor], renewed: tuple[str, ...]) -> None:
    """Every tensor of `state` outside `renewed` (and torchvision's auxiliary head) is in `model` unchanged;
    the `renewed` ones have the model's class count and fresh values."""
    own = model.state_dict()
    kept = [k for k in state if not k.startswith((*renewed, "aux_classifier."))]
    assert all(torch.equal(own[k], state[k]) for k in kept)
    new = [k for k in own if k.startswith(renewed)]
    assert new and set(own) - set(kept) == set(new)
    for key in new:
        assert own[key].shape != state[key].shape, key
        assert (own[key] < 0.5).any(), key  # freshly initialised: the file's values are all in [0.5, 1.5)


@pytest.mark.parametrize(
    ("arch", "weights", "heads"),
    [
        ("lraspp_mobilenet_v3_large", "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
         ("classifier.low_classifier.", "classifier.high_classifier.")),
        ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
         ("classifier.4.",)),
    ],
)  # fmt: skip
def test_semantic_weights_from_the_torch_hub_cache(
    arch: str, weights: str, heads: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    aux = {} if arch.startswith("lraspp") else {"aux_loss": True}  # torchvision's DeepLab file has its aux head
    source = get_model_builder(arch)(weights=None, weights_backbone=None, num_classes=21, **aux)  # VOC's 21
    state = random_state(source)
    torch.save(state, hub_file(tmp_path / "torch", weights))
    model = build_segmenter(arch, 3, weights.rsplit(".", 1)[1])
    _assert_loaded(model, state, heads)
    assert _last_conv(model.classifier).out_channels == 3
    assert not any(k.startswith("aux_classifier.") for k in model.state_dict())


def test_mask_rcnn_weights_from_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    builder = get_model_builder("maskrcnn_resnet50_fpn_v2")
    state = random_state(builder(weights=None, weights_backbone=None, num_classes=91))  # COCO's layout
    torch.save(state, hub_file(tmp_path / "torch", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"))
    model = build_instance_model("maskrcnn_resnet50_fpn_v2", 4, "COCO_V1")
    heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
    _assert_loaded(model, state, heads)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5

    # The slim Mask R-CNN from the ImageNet classifier's file: its body is the classifier's `features` up to 15.
    imagenet = random_state(torchvision.models.mobilenet_v3_large(weights=None))
    torch.save(imagenet, hub_file(tmp_path / "torch", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"))
    slim = build_instance_model("maskrcnn_mobilenet_v3_large_fpn", 2, "backbone:IMAGENET1K_V1")
    body = slim.backbone.body.state_dict()
    assert len(body) > 100 and all(torch.equal(v, imagenet[f"features.{k}"]) for k, v in body.items())
    assert slim.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3


@pytest.mark.parametrize("name", ["shape-crops", "shapes-seg", "shapes-instances"])
def test_segmentation_recipes_parse_back_to_their_configs(name: str) -> None:
    from training import cli
    from training.config import TrainConfig
    from training.recipes import get_recipe

    recipe = get_recipe(name)
    commands = recipe.commands()
    args = cli.build_parser().parse_args(commands[1])
    given = {f: getattr(args, d) for d, f in cli._TRAIN_FIELDS.items() if getattr(args, d) is not None}
    assert TrainConfig(**given) == recipe.config()
    assert commands[0][:3] == ["data", "demo", recipe.demo_task]
    assert len(commands) == (3 if recipe.export else 2)  # the pretraining run is not exported
    arch = recipe.train["arch"]
    assert arch in (SEGMENTERS if recipe.train["task"] == "segmentation" else INSTANCE_ARCHS) or name == "shape-crops"
