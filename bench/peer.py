"""The peer: the server a user would write instead of optic, FastAPI + uvicorn[standard] + ONNX Runtime.

    uvicorn --factory bench.peer:create_app --loop uvloop --http httptools --no-access-log

Written the way FastAPI's documentation teaches: `UploadFile` and `Form` parameters, a plain `def` endpoint
(FastAPI runs it in its thread pool, so a slow model does not block the event loop), the dict answer
serialised by FastAPI. To compare serving stacks and nothing else, it uses optic's own model loader (the
same ONNX Runtime session options and threads), decoding and postprocessing; what it lacks is what a
hand-written server lacks: cross-request batching, admission control, a lean request path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile

from service.pipeline import prepare
from service.repository import LoadedModel, load_model, version_dirs
from service.settings import Settings


def _load(repository: Path) -> dict[str, LoadedModel]:
    settings = Settings(model_repository=repository)
    models = {}
    for version_dir in version_dirs(repository):
        model = load_model(version_dir, settings)
        models[model.key] = models[model.metadata.name] = model
    return models


def create_app() -> FastAPI:
    repository = Path(os.environ.get("OPTIC_MODEL_REPOSITORY", "models"))
    models = _load(repository)
    app = FastAPI(title="peer")

    def infer(images: list[UploadFile], model: str | None, task: str) -> dict[str, Any]:
        loaded = models.get(model or "") or next((m for m in models.values() if m.metadata.task == task), None)
        if loaded is None:
            raise HTTPException(404, f"unknown model {model!r}")
        meta = loaded.metadata
        prepared = [prepare(loaded, f.file.read(), f.filename or "image", 40_000_000) for f in images]
        outputs = loaded.run(np.stack([p.array for p in prepared]))
        params = loaded.default_params
        results = [loaded.task.postprocess(o, p.geometry, meta, params) for p, o in zip(prepared, outputs, strict=True)]
        return {"model": {"name": meta.name, "version": meta.version}, "results": results}

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(images: list[UploadFile] = File(...), model: str | None = Form(None)) -> dict[str, Any]:  # noqa: B008
        return infer(images, model, "classification")

    @app.post("/detect")
    def detect(images: list[UploadFile] = File(...), model: str | None = Form(None)) -> dict[str, Any]:  # noqa: B008
        return infer(images, model, "detection")

    @app.post("/segment")
    def segment(images: list[UploadFile] = File(...), model: str | None = Form(None)) -> dict[str, Any]:  # noqa: B008
        name = model or ""
        task = models[name].metadata.task if name in models else "segmentation"
        return infer(images, model, task)

    return app
