"""Detection models and training: the architecture registry, weights options, COCO scoring, the task plug-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_builder

from dataformats.detection import find_detection_splits
from tests.detection_support import write_tiny_shapes
from tests.weights_support import hub_file, random_state
from training import cli
from training.config import TrainConfig
from training.data.detection import DetectionDataset
from training.detection_eval import coco_detections, score_coco
from training.detectors import (
    DETECTORS,
    LetterboxedTransform,
    build_detector,
    class_dependent_modules,
    list_detectors,
)
from training.recipes import get_recipe
from training.tasks import list_tasks
from training.tasks.detection import label_offset
from training.weights import WeightsNotFoundError

REQUIRED = {
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
}
SMALL = "ssdlite320_mobilenet_v3_large"


def _class_outputs(model: Any) -> int:
    head = model.roi_heads.box_predictor if hasattr(model, "roi_heads") else model.head
    if hasattr(head, "cls_score"):
        return int(head.cls_score.out_features)
    classification = head.classification_head
    return int(getattr(classification, "num_classes", getattr(classification, "num_columns", -1)))


def test_registry_lists_the_required_architectures() -> None:
    assert set(list_detectors()) >= REQUIRED
    assert "detection" in list_tasks()
    with pytest.raises(KeyError, match=r"known: .*ssdlite320_mobilenet_v3_large"):
        build_detector("yolo_v99", 3)


@pytest.mark.parametrize("arch", list_detectors())
def test_every_architecture_builds_with_a_head_for_the_labels(arch: str) -> None:
    model: Any = build_detector(arch, 3, score_thresh=0.05, detections_per_img=100)
    spec = DETECTORS[arch]
    assert _class_outputs(model) == 3 + spec.background
    assert label_offset(model) == int(spec.background)
    assert isinstance(model.transform, LetterboxedTransform)  # no resize inside the graph
    assert class_dependent_modules(arch, 3 + spec.background)
    settings = model.roi_heads if hasattr(model, "roi_heads") else model
    assert (settings.score_thresh, settings.detections_per_img) == (0.05, 100)


def test_backbone_weights_from_a_classification_checkpoint(tmp_path: Path) -> None:
    classifier = torchvision.models.mobilenet_v3_large(num_classes=5)  # an optic classification run's layout
    torch.save({"model": classifier.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    model: Any = build_detector(SMALL, 2, f"backbone:{tmp_path / 'best.pt'}")
    features = model.backbone.features
    torch.testing.assert_close(features[0][0][0].weight, classifier.features[0][0].weight)
    # torchvision's pretrained-backbone layout (full tail), rebuilt from the spec alone for export:
    layout = build_detector(SMALL, 2, f"backbone:{tmp_path / 'missing.pt'}", load_weights=False)
    assert {k: v.shape for k, v in layout.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.backbone.features[-1][-1][0].out_channels == 960  # the full tail, as torchvision builds it
    torch.save(model.state_dict(), tmp_path / "detector.pt")
    with pytest.raises(ValueError, match="not a mobilenet_v3_large backbone"):
        build_detector(SMALL, 2, f"backbone:{tmp_path / 'detector.pt'}")


def test_detector_weights_keep_the_body_and_renew_the_heads(tmp_path: Path) -> None:
    source = build_detector(SMALL, 3)
    torch.save(source.state_dict(), tmp_path / "detector.pt")
    model = build_detector(SMALL, 5, str(tmp_path / "detector.pt"))
    own, loaded = model.state_dict(), source.state_dict()
    heads = tuple(f"{m}." for m in class_dependent_modules(SMALL, 6))
    assert all(torch.equal(own[k], v) for k, v in loaded.items() if not k.startswith(heads))
    assert _class_outputs(model) == 6


def test_weights_never_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        build_detector(SMALL, 2, "COCO_V1")
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        build_detector(SMALL, 2, "backbone:IMAGENET1K_V1")
    with pytest.raises(ValueError, match="freeze_backbone"):
        build_detector(SMALL, 2, None, freeze_backbone=True)
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")  # the private hub cache left no trace


def test_detector_weights_from_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    coco = get_model_builder(arch)(weights=None, weights_backbone=None, num_classes=91)  # COCO's layout
    # torchvision's pretrained R-CNNs use FrozenBatchNorm2d: their files have no num_batches_tracked.
    state = {k: v for k, v in random_state(coco).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, hub_file(tmp_path / "torch", "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1"))
    heads = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.")
    for spec in ("COCO_V1", "FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT"):
        model: Any = build_detector(arch, 3, spec)
        own = model.state_dict()
        kept = [k for k in state if not k.startswith(heads)]
        assert len(kept) == len(state) - 4
        assert all(torch.equal(own[k], state[k]) for k in kept), spec
        # The class heads are new, sized for 3 labels plus background (the file's are 91 wide).
        predictor = model.roi_heads.box_predictor
        assert (predictor.cls_score.out_features, predictor.bbox_pred.out_features) == (4, 16)
        assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 91
        assert float(own[f"{heads[0]}weight"].abs().max()) < 0.5 <= float(state[f"{heads[0]}weight"].min())  # fresh
        model.train()  # pretrained BatchNorm statistics stay fixed in the body
        norms = [m for m in model.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and not any(m.training or m.weight.requires_grad for m in norms)


def test_backbone_weights_from_the_classifier_in_the_torch_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = random_state(torchvision.models.mobilenet_v3_large(weights=None))  # the ImageNet file's layout
    torch.save(state, hub_file(tmp_path / "torch", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"))
    model: Any = build_detector(SMALL, 2, "backbone:IMAGENET1K_V1")
    # SSDlite regroups the classifier's `features` (split at C4), in the same order: every tensor is the file's.
    ours = list(model.backbone.features.state_dict().values())
    theirs = [v for k, v in state.items() if k.startswith("features.")]
    assert len(ours) == len(theirs) > 100
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert _class_outputs(model) == 3  # a new head: 2 labels plus background
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")  # the builder's private hub left no trace


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shapes(tmp_path_factory.mktemp("data") / "shapes")


def test_perfect_detections_score_one_after_the_round_trip(shapes: Path) -> None:
    """Targets mapped into the letterbox and predictions mapped back (the service's way) meet again."""
    split = find_detection_splits(shapes).val
    dataset = DetectionDataset(split, (160, 160))
    detections = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        n = len(target["labels"])
        boxes, labels = target["boxes"].numpy(), target["labels"].numpy()
        detections += coco_detections(target["image_id"], boxes, np.ones(n), labels, target["geometry"],
                                      split.label_to_category)  # fmt: skip
    names = dict(enumerate(["circle", "square", "triangle", "star"]))
    metrics, details = score_coco(split.coco, detections, names, split.label_to_category)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    assert all(row["AP50"] == pytest.approx(1.0) for row in details["per_class"])
    assert score_coco(split.coco, [], names, split.label_to_category)[0]["map"] == 0.0


def test_shapes_recipe_commands_parse_to_the_recipe_config() -> None:
    recipe = get_recipe("shapes")
    demo, train, export = recipe.commands()
    assert demo == ["data", "demo", "detection", "--out", "data/demo-det"]
    args = cli.build_parser().parse_args(train)
    given = {f: getattr(args, d) for d, f in cli._TRAIN_FIELDS.items() if getattr(args, d) is not None}
    assert TrainConfig(**given) == recipe.config()
    assert export[:2] == ["export", "runs/shapes-ssdlite320_mobilenet_v3_large"]
