"""The inference, evaluation and model routes: thin handlers over the repository, pipeline and runner.

Each handler validates, calls the pipeline, and shapes the answer; the HTTP contract (paths, fields, JSON
shapes, error shape) is the one documented in the README and in /docs.json.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from service.errors import InvalidParameter, NoImages, TooManyImages
from service.evaluation.archive import extract_archive
from service.evaluation.runner import RunOptions, evaluate_folder
from service.http.app import Answer, Call, Route, json_answer, upload_path
from service.http.evaluations import EVALUATION_ROUTES
from service.http.forms import FileField, Form, param_field, text_field
from service.imaging import decode_image
from service.pipeline import Prediction
from service.render import draw_detections, draw_masks, to_png
from service.repository import LoadedModel
from service.tasks.classification import ClassificationParams
from service.tasks.detection import DetectionParams
from service.tasks.instance_segmentation import InstanceParams

if TYPE_CHECKING:
    from service.service import Optic

IMAGES = FileField("images", "One or more image files (JPEG, PNG, WebP, BMP, GIF, TIFF).")
ONE_IMAGE = FileField("images", "One image file (the first is drawn).")
DATASET = FileField("dataset", "zip, tar or tar.gz of a data set in the model's task format.", many=False)


def model_field(task: str) -> Any:
    return text_field("model", f"Model name or name:version; default: the first {task} model.")


THRESHOLD = param_field(DetectionParams, "score_threshold", "Keep detections scoring at least this.")
MAX_DETECTIONS = param_field(DetectionParams, "max_detections", "At most this many detections per image.")
CLASSES = param_field(DetectionParams, "classes", "Only these labels or class ids (comma-separated, or repeated).")
SEG_THRESHOLD = param_field(InstanceParams, "score_threshold", "Instance models: keep instances scoring this.")
SEG_MAX = param_field(InstanceParams, "max_detections", "Instance models: at most this many per image.")
MASK_FORMAT = param_field(InstanceParams, "mask_format", "rle (COCO compressed RLE, default), polygon or png.")
TOP_K = param_field(ClassificationParams, "top_k", "How many classes per image (default OPTIC_DEFAULT_TOP_K).")


def _images(service: Optic, form: Form, limit: int | None = None) -> list[tuple[str, bytes]]:
    files = form.files("images")
    if not files:
        raise NoImages("no images: send one or more files in the multipart field 'images'")
    if len(files) > service.settings.max_images_per_request:
        raise TooManyImages(
            f"{len(files)} images exceeds the limit of {service.settings.max_images_per_request} "
            "per request (OPTIC_MAX_IMAGES_PER_REQUEST)"
        )
    return [(f.display_name, f.data) for f in files[:limit]]


def _params(model: LoadedModel, values: dict[str, Any]) -> Any:
    """The model's defaults, with what the request set (already converted and bounded by its fields)."""
    defaults = model.default_params
    update = {k: v for k, v in values.items() if k in type(defaults).model_fields}
    if "score_threshold" in update and getattr(defaults, "class_thresholds", None):
        update["class_thresholds"] = None  # a threshold the request names wins over the model's per-class ones
    params = defaults.model_copy(update=update) if update else defaults
    model.task.check_params(params, model.metadata)
    return params


def _ok(model: LoadedModel, predictions: list[Prediction]) -> Answer:
    meta = model.metadata
    results = [p.result for p in predictions]
    return json_answer({"model": {"name": meta.name, "version": meta.version}, "results": results})


async def _predict(
    service: Optic, form: Form, task: str, *, limit: int | None = None, **extra: Any
) -> tuple[LoadedModel, list[Prediction], list[tuple[str, bytes]]]:
    model = service.repository.resolve(form.values.get("model"), task)
    params = _params(model, {**form.values, **extra})
    files = _images(service, form, limit)
    return model, await service.pipeline.predict(model, files, params), files


async def classify(service: Optic, form: Form) -> Answer:
    model, predictions, _ = await _predict(
        service, form, "classification", top_k=form.values.get("top_k", service.settings.default_top_k)
    )
    return _ok(model, predictions)


async def detect(service: Optic, form: Form) -> Answer:
    model, predictions, _ = await _predict(service, form, "detection")
    return _ok(model, predictions)


def _render(service: Optic, data: bytes, entries: list[dict[str, Any]], draw: Callable[..., Image.Image]) -> bytes:
    full = decode_image(data, filename="image", max_pixels=service.settings.max_image_pixels)
    return to_png(draw(full.image, entries))


def _png(model: LoadedModel, png: bytes) -> Answer:
    return Answer(png, content_type=b"image/png", headers=[(b"x-optic-model", model.key.encode())])


async def detect_render(service: Optic, form: Form) -> Answer:
    model, predictions, files = await _predict(service, form, "detection", limit=1)
    detections = predictions[0].result["detections"]
    return _png(model, await service.pipeline.offload(_render, service, files[0][1], detections, draw_detections))


def _segment_task(service: Optic, name: str | None) -> str:
    """/segment serves semantic and instance models alike: the model's task picks the plug-in."""
    if name:
        task = service.repository.get(name).metadata.task
        return task if task in ("segmentation", "instance-segmentation") else "segmentation"  # resolve() refuses
    if any(m.metadata.task == "segmentation" for m in service.repository):
        return "segmentation"
    return "instance-segmentation"


async def segment(service: Optic, form: Form) -> Answer:
    task = _segment_task(service, form.values.get("model"))
    model, predictions, _ = await _predict(service, form, task)
    return _ok(model, predictions)


async def segment_render(service: Optic, form: Form) -> Answer:
    task = _segment_task(service, form.values.get("model"))
    model, predictions, files = await _predict(service, form, task, limit=1, mask_format="rle")
    result = predictions[0].result
    entries = result.get("instances", result.get("classes", []))
    return _png(model, await service.pipeline.offload(_render, service, files[0][1], entries, draw_masks))


async def evaluate(service: Optic, form: Form) -> Answer:
    parts = form.parts("dataset")
    if len(parts) != 1:
        raise InvalidParameter(f"send exactly one archive in the field 'dataset' (got {len(parts)})")
    model = service.repository.get(form.values["model"])
    settings = service.settings
    archive = upload_path(parts[0])
    root = await asyncio.to_thread(
        lambda: extract_archive(
            archive,
            archive.parent / "data",
            max_bytes=settings.max_archive_bytes,
            max_members=settings.max_archive_members,
        )
    )
    pipeline = service.pipeline
    options = RunOptions(
        settings.max_image_pixels, settings.max_batch_size, pipeline.eval_pool, pace=pipeline.eval_pace
    )
    report = await evaluate_folder(model, root, pipeline.run_background, options)
    service.metrics.evaluation_scores(report)
    return json_answer(report)


async def models(service: Optic, call: Call) -> Answer:
    return json_answer({"models": [m.describe() for m in service.repository], "failed": service.repository.failures})


_RESULTS = {"200": {"description": "One result per image, in the order sent; the model that answered."}}
_PNG = {"200": {"description": "PNG of the first image with the results drawn.", "content": {"image/png": {}}}}

ROUTES = [
    Route("/classify", "POST", "Classify images", "Top-k labels per image.", classify,
          (IMAGES,), (model_field("classification"), TOP_K), _RESULTS),
    Route("/detect", "POST", "Detect objects", "Boxes in original-image pixels, labels and scores per image.", detect,
          (IMAGES,), (model_field("detection"), THRESHOLD, MAX_DETECTIONS, CLASSES), _RESULTS),
    Route("/detect/render", "POST", "Draw detections", "As /detect, for one image, drawn.", detect_render,
          (ONE_IMAGE,), (model_field("detection"), THRESHOLD, MAX_DETECTIONS, CLASSES), _PNG),
    Route("/segment", "POST", "Segment images",
          "Semantic models: a mask per class present; instance models: boxes, scores and a mask per instance.",
          segment, (IMAGES,), (model_field("segmentation"), SEG_THRESHOLD, SEG_MAX, MASK_FORMAT), _RESULTS),
    Route("/segment/render", "POST", "Draw masks", "As /segment, for one image, masks overlaid.", segment_render,
          (ONE_IMAGE,), (model_field("segmentation"), SEG_THRESHOLD), _PNG),
    Route("/evaluate", "POST", "Evaluate a model on a data set",
          "The task's metrics on an uploaded archive, equal to the reference libraries'.", evaluate,
          (DATASET,), (text_field("model", "Model name or name:version.", required=True),),
          {"200": {"description": "The evaluation report: model, dataset, metrics, seconds."}},
          spool=frozenset({"dataset"}), large_body=True),
    Route("/models", "GET", "Loaded models", "Every loaded model's model.json, provider and sha256; failed versions.",
          models, responses={"200": {"description": "models and failed"}}),
    *EVALUATION_ROUTES,
]  # fmt: skip
