"""Mask R-CNN architectures: torchvision's by name, and a slim MobileNetV3 one that fits a ~15 MB ONNX file.

`maskrcnn_mobilenet_v3_large_fpn` is torchvision's `MaskRCNN` assembled from torchvision parts: the
MobileNetV3-Large feature stack (the classifier's layout, so its weights load) up to its last inverted
residual, an FPN over strides 8, 16 and 32 with 64 channels (plus the max-pool level), anchors 16-128 px, a
128-wide two-layer box head and a two-conv mask head; ~3.5 M parameters instead of resnet50-FPN's ~46 M.

Weights (`--weights`), never downloaded, as for detection (training.detectors):
  none                   random initialisation;
  NAME or FILE           full Mask R-CNN weights: a torchvision name (COCO_V1, DEFAULT) for the torchvision
                         architectures, or a state dict file; the class-dependent layers are re-initialised
                         when the class count differs;
  backbone:NAME|FILE     backbone weights: a torchvision classifier name (IMAGENET1K_V1, ...) or a checkpoint
                         that holds the backbone (an optic classification, segmentation or instance run's
                         best.pt); the backbone's BatchNorm statistics then stay fixed (torchvision's choice).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torchvision
from torch import nn
from torchvision.models import get_model_builder
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from training.detectors import letterboxed, lock_batchnorm, parse_weights
from training.segmenters import load_backbone_weights
from training.weights import load_matching, resolve_weights

# The modules whose shapes follow the class count (background included).
CLASS_DEPENDENT = ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                   "roi_heads.mask_predictor.mask_fcn_logits"]  # fmt: skip


@dataclass(frozen=True)
class InstanceSpec:
    builder: Callable[..., nn.Module]
    backbone: str  # the torchvision classifier whose weights fit the backbone body


def maskrcnn_mobilenet_v3_large_fpn(*, num_classes: int, **kwargs: Any) -> MaskRCNN:
    """The slim Mask R-CNN; `kwargs` go to `MaskRCNN` (thresholds, detections per image)."""
    features = torchvision.models.mobilenet_v3_large(weights=None).features
    # Ends of the stride-8, -16 and -32 stages; the 960-channel 1x1 conv after them is left out (0.15 M
    # parameters the FPN does not need).
    return_layers = {"6": "0", "12": "1", "15": "2"}
    channels = [features[int(i)].out_channels for i in return_layers]
    backbone = BackboneWithFPN(
        features, return_layers, channels, out_channels=64, extra_blocks=LastLevelMaxPool(), norm_layer=nn.BatchNorm2d
    )
    levels = ["0", "1", "2"]
    settings: dict[str, Any] = {
        # Few, mid-sized objects in small images: fewer proposals and sampled RoIs than COCO's defaults.
        "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150,
        "box_batch_size_per_image": 128,
    }  # fmt: skip
    settings.update(kwargs)
    return MaskRCNN(
        backbone,
        num_classes=None,  # the predictors below are sized already
        min_size=320,  # unused: the letterboxed transform never resizes
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(64 * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(64, [64, 64], 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
        **settings,
    )


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, **kwargs: Any) -> nn.Module:
        model: nn.Module = get_model_builder(arch)(
            weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
        return model

    return build


INSTANCE_ARCHS: dict[str, InstanceSpec] = {
    "maskrcnn_mobilenet_v3_large_fpn": InstanceSpec(maskrcnn_mobilenet_v3_large_fpn, "mobilenet_v3_large"),
    "maskrcnn_resnet50_fpn": InstanceSpec(_torchvision("maskrcnn_resnet50_fpn"), "resnet50"),
    "maskrcnn_resnet50_fpn_v2": InstanceSpec(_torchvision("maskrcnn_resnet50_fpn_v2"), "resnet50"),
}


def list_instance_archs() -> list[str]:
    return sorted(INSTANCE_ARCHS)


def _build(arch: str, num_outputs: int, settings: dict[str, Any]) -> MaskRCNN:
    spec = INSTANCE_ARCHS[arch]
    # MaskRCNN's constructor takes the postprocessing settings under their box_* names.
    kwargs = {f"box_{name}": value for name, value in settings.items()}
    model = spec.builder(num_classes=num_outputs, **kwargs)
    if not isinstance(model, MaskRCNN):
        raise TypeError(f"{arch} built a {type(model).__name__}, not a MaskRCNN")
    return model


def build_instance_model(
    arch: str,
    num_classes: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    *,
    load_weights: bool = True,
    **settings: Any,
) -> MaskRCNN:
    """A Mask R-CNN for `num_classes` labels plus background, taking letterboxed 0..1 images.

    `settings` set the postprocessing (score_thresh, nms_thresh, detections_per_img); `load_weights=False`
    builds the layout `weights` implies without reading them.
    """
    if arch not in INSTANCE_ARCHS:
        raise KeyError(
            f"unknown instance-segmentation architecture {arch!r}; known: {', '.join(list_instance_archs())}"
        )
    if num_classes < 1:
        raise ValueError(f"instance segmentation needs at least 1 class, got {num_classes}")
    model = _build(arch, num_classes + 1, settings)
    kind, source = parse_weights(weights)
    body = model.backbone.body
    if kind == "backbone":
        if load_weights:
            state = resolve_weights(source, INSTANCE_ARCHS[arch].backbone)
            assert state is not None
            load_backbone_weights(body, state, str(source))
        lock_batchnorm(body)
    elif kind == "detector" and load_weights:  # parse_weights' name for "the whole model"
        state = resolve_weights(source, arch)
        assert state is not None
        own = model.state_dict()
        # torchvision's pretrained R-CNNs use FrozenBatchNorm2d, whose state has no num_batches_tracked.
        counters = {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
        load_matching(model, OrderedDict({**counters, **state}), CLASS_DEPENDENT)
    model.transform = letterboxed(model.transform)
    if freeze_backbone:
        if kind == "none":
            raise ValueError("freeze_backbone without pretrained weights would train heads on random features")
        lock_batchnorm(body)
        for param in body.parameters():
            param.requires_grad_(False)
    return model
