"""The BentoML service: thin endpoints over the repository, the pipeline and the evaluation runner.

`bentoml serve service.service:Optic`. Requests carry a model name and parameters, so batching happens
below the API, per model, in the pipeline's batcher (a batchable BentoML API takes one argument only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
from PIL import Image
from pydantic import Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.errors import InvalidParameter, NoImages, OpticError, TooManyImages
from service.evaluation.archive import extract_archive
from service.evaluation.runner import evaluate_folder
from service.imaging import decode_image
from service.metrics import get_metrics
from service.middleware import REASON_HEADER, OpticMiddleware
from service.pipeline import Pipeline, Prediction
from service.render import draw_detections, draw_masks, to_png
from service.repository import LoadedModel, ModelRepository
from service.settings import get_settings

log = logging.getLogger("optic")

ENDPOINTS = frozenset({"/classify", "/detect", "/detect/render", "/segment", "/segment/render", "/evaluate", "/models"})


def _body_limit(path: str) -> int:
    settings = get_settings()
    return max(settings.max_body_bytes, settings.max_archive_bytes) if path == "/evaluate" else settings.max_body_bytes


def _count_error(endpoint: str, reason: str) -> None:
    get_metrics().errors.labels(endpoint, reason).inc()


def error_response(exc: OpticError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status_code, headers={REASON_HEADER.decode(): exc.reason})


def _display_name(path: Path, index: int, field: str) -> str:
    # BentoML stores an upload as tempfile prefix "tmp" + 8 random characters + the client's filename.
    original = path.name[11:] if path.name.startswith("tmp") and len(path.name) > 11 else ""
    return f"{field}[{index}]" + (f" ({original})" if original else "")


async def _models(request: Request) -> Response:
    service = request.app.state.optic
    return JSONResponse({"models": [m.describe() for m in service.repository], "failed": service.repository.failures})


models_app = Starlette(routes=[Route("/models", _models, methods=["GET"])])


# Read here because BentoML takes them at class definition; documented with the other settings.
INFERENCE_ROUTES = ["/classify", "/detect", "/detect/render", "/segment", "/segment/render"]


@bentoml.service(
    name="optic",
    workers=int(os.environ.get("OPTIC_WORKERS", "1")),
    traffic={"timeout": 600},
    # Per-request spans and access lines cost the event loop ~25% of its time on small models (bench/).
    tracing={"excluded_urls": INFERENCE_ROUTES},
    logging={"access": {"enabled": os.environ.get("OPTIC_ACCESS_LOG", "false").lower() in ("1", "true", "yes")}},
)
@bentoml.asgi_app(models_app, path="/")
class Optic:
    def __init__(self) -> None:
        self.settings = get_settings()
        self.metrics = get_metrics()
        self.ready = False
        self.repository = ModelRepository.load(self.settings)
        for failed in self.repository.failures:
            self.metrics.load_failures.labels(failed.split("/")[0]).inc()
        for model in self.repository:
            meta = model.metadata
            self.metrics.model_info.labels(meta.name, meta.version, meta.task, model.provider, meta.sha256[:12]).set(1)
            log.info("serving %s (%s) on %s", model.key, meta.task, model.provider)
        self.pipeline = Pipeline(self.repository, self.settings, self.metrics)
        models_app.state.optic = self
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    # -- inference --------------------------------------------------------------------------------------
    def _read_images(self, images: list[Path]) -> list[tuple[str, Path]]:
        """Names and paths: the bytes are read in the preprocessing thread, off the event loop."""
        if not images:
            raise NoImages("no images: send one or more files in the multipart field 'images'")
        if len(images) > self.settings.max_images_per_request:
            raise TooManyImages(
                f"{len(images)} images exceeds the limit of {self.settings.max_images_per_request} "
                "per request (OPTIC_MAX_IMAGES_PER_REQUEST)"
            )
        return [(_display_name(p, i, "images"), p) for i, p in enumerate(images)]

    def _params(self, model: LoadedModel, **values: Any) -> Any:
        params = model.task.default_params(model.metadata)
        try:
            return params.model_validate({**params.model_dump(), **{k: v for k, v in values.items() if v is not None}})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidParameter(problems) from None

    def _ok(self, loaded: LoadedModel, predictions: list[Prediction]) -> dict[str, Any]:
        # A ready response skips BentoML's output validation and serialization on the event loop.
        body = {"model": self._model_json(loaded), "results": [p.result for p in predictions]}
        return JSONResponse(body)  # type: ignore[return-value]

    def _model_json(self, model: LoadedModel) -> dict[str, str]:
        return {"name": model.metadata.name, "version": model.metadata.version}

    async def _infer(
        self, task: str, images: list[Path], model: str | None, **params: Any
    ) -> tuple[LoadedModel, list[Prediction]]:
        loaded = self.repository.resolve(model, task)
        parsed = self._params(loaded, **params)
        files = self._read_images(images)
        return loaded, await self.pipeline.predict(loaded, files, parsed)

    @bentoml.api(route="/classify")
    async def classify(
        self,
        images: list[Path] = Field(default_factory=list, description="One or more image files."),
        model: str | None = Field(None, description="Model name or name:version; default: the first classifier."),
        top_k: int | None = Field(None, description="How many classes per image (default 5)."),
    ) -> dict[str, Any]:
        try:
            loaded, predictions = await self._infer(
                "classification", images, model, top_k=top_k if top_k is not None else self.settings.default_top_k
            )
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return self._ok(loaded, predictions)

    @bentoml.api(route="/detect")
    async def detect(
        self,
        images: list[Path] = Field(default_factory=list, description="One or more image files."),
        model: str | None = Field(None, description="Model name or name:version; default: the first detector."),
        score_threshold: float | None = Field(None, description="Keep detections scoring at least this."),
        max_detections: int | None = Field(None, description="At most this many detections per image."),
        classes: str | int | list[str | int] | None = Field(None, description="Only these labels or class ids."),
    ) -> dict[str, Any]:
        try:
            loaded, predictions = await self._infer(
                "detection",
                images,
                model,
                score_threshold=score_threshold,
                max_detections=max_detections,
                classes=classes,
            )
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return self._ok(loaded, predictions)

    @bentoml.api(route="/detect/render")
    async def detect_render(
        self,
        images: list[Path] = Field(default_factory=list, description="One image file (the first is drawn)."),
        model: str | None = Field(None, description="Model name or name:version; default: the first detector."),
        score_threshold: float | None = Field(None, description="Keep detections scoring at least this."),
        max_detections: int | None = Field(None, description="At most this many detections per image."),
        classes: str | int | list[str | int] | None = Field(None, description="Only these labels or class ids."),
    ) -> Image.Image:  # the declared PNG for OpenAPI; the bytes are encoded off the event loop
        try:
            loaded, predictions = await self._infer(
                "detection",
                images[:1],
                model,
                score_threshold=score_threshold,
                max_detections=max_detections,
                classes=classes,
            )
            png = await asyncio.get_running_loop().run_in_executor(
                None, self._render, images[0], predictions[0].result["detections"], draw_detections
            )
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return Response(png, media_type="image/png", headers={"x-optic-model": loaded.key})  # type: ignore[return-value]

    def _render(self, path: Path, entries: list[dict[str, Any]], draw: Callable[..., Image.Image]) -> bytes:
        full = decode_image(path.read_bytes(), filename="image", max_pixels=self.settings.max_image_pixels)
        return to_png(draw(full.image, entries))

    @bentoml.api(route="/segment")
    async def segment(
        self,
        images: list[Path] = Field(default_factory=list, description="One or more image files."),
        model: str | None = Field(None, description="Model name or name:version; default: the first segmenter."),
        score_threshold: float | None = Field(None, description="Instance models: keep instances scoring this."),
        max_detections: int | None = Field(None, description="Instance models: at most this many per image."),
        mask_format: str | None = Field(None, description="rle (COCO compressed RLE, default), polygon or png."),
    ) -> dict[str, Any]:
        try:
            loaded, predictions = await self._segment(images, model, score_threshold, mask_format, max_detections)
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return self._ok(loaded, predictions)

    @bentoml.api(route="/segment/render")
    async def segment_render(
        self,
        images: list[Path] = Field(default_factory=list, description="One image file (the first is drawn)."),
        model: str | None = Field(None, description="Model name or name:version; default: the first segmenter."),
        score_threshold: float | None = Field(None, description="Instance models: keep instances scoring this."),
    ) -> Image.Image:
        try:
            loaded, predictions = await self._segment(images[:1], model, score_threshold, "rle")
            result = predictions[0].result
            entries = result.get("instances", result.get("classes", []))
            png = await asyncio.get_running_loop().run_in_executor(None, self._render, images[0], entries, draw_masks)
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return Response(png, media_type="image/png", headers={"x-optic-model": loaded.key})  # type: ignore[return-value]

    async def _segment(
        self,
        images: list[Path],
        model: str | None,
        score_threshold: float | None,
        mask_format: str | None,
        max_detections: int | None = None,
    ) -> tuple[LoadedModel, list[Prediction]]:
        """/segment serves semantic and instance models alike: the model's task picks the plug-in."""
        task = "segmentation"
        if model:
            task = self.repository.get(model).metadata.task
            if task not in ("segmentation", "instance-segmentation"):
                task = "segmentation"  # resolve() below names the wrong task
        elif not any(m.metadata.task == "segmentation" for m in self.repository):
            task = "instance-segmentation"
        params: dict[str, Any] = {"score_threshold": score_threshold, "mask_format": mask_format}
        if task == "instance-segmentation":
            params["max_detections"] = max_detections
        return await self._infer(task, images, model, **params)

    # -- evaluation -------------------------------------------------------------------------------------
    @bentoml.api(route="/evaluate")
    async def evaluate(
        self,
        dataset: Path = Field(description="zip, tar or tar.gz of a data set in the model's task format."),
        model: str = Field(description="Model name or name:version."),
    ) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="optic-eval-"))
        try:
            loaded = self.repository.get(model)
            root = extract_archive(
                dataset,
                workdir / "data",
                max_bytes=self.settings.max_archive_bytes,
                max_members=self.settings.max_archive_members,
            )
            report = await evaluate_folder(
                loaded,
                root,
                self.pipeline.run_batch,
                max_pixels=self.settings.max_image_pixels,
                batch_size=self.settings.max_batch_size,
            )
        except OpticError as exc:
            return error_response(exc)  # type: ignore[return-value]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        meta = loaded.metadata
        for metric, value in report["metrics"].get("summary", {}).items():
            self.metrics.evaluation_score.labels(meta.name, meta.version, metric).set(value)
        return report


Optic.add_asgi_middleware(  # type: ignore[attr-defined]
    OpticMiddleware, max_body_bytes=_body_limit, count_error=_count_error, endpoints=ENDPOINTS
)
