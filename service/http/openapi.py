"""/docs.json: BentoML's document (probes, metrics) with optic's own routes and their form fields added.

File fields are `type: string, format: binary` (arrays of them where a field takes several files), with an
`encoding` naming the image types, so Swagger UI shows file pickers and a fuzzer sends real files.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from service.http.app import Route

IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/bmp, image/gif, image/tiff"
ARCHIVE_TYPES = "application/zip, application/x-tar, application/gzip"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, naming the field, file or limit."},
        "reason": {"type": "string", "description": "A short, stable label (also the errors metric's)."},
        "detail": {"type": "object"},
    },
}
ERRORS = {
    "400": "Malformed request, no images, bad form framing.",
    "401": "A valid API key is needed (OPTIC_API_KEYS is set).",
    "404": "Unknown model or version.",
    "413": "Body, field, part count, image or archive over its limit.",
    "415": "Not a form body.",
    "422": "A parameter, image or data set that cannot be used.",
    "503": "Overloaded (see Retry-After), still loading, or shutting down.",
}


def _form_schema(route: Route, models: list[str]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for f in route.files:
        binary = {"type": "string", "format": "binary"}
        properties[f.name] = (
            {"type": "array", "items": binary, "description": f.description, "minItems": 1}
            if f.many
            else {**binary, "description": f.description}
        )
        encoding[f.name] = {"contentType": ARCHIVE_TYPES if route.large_body else IMAGE_TYPES}
    for t in route.texts:
        properties[t.name] = {**t.schema, "description": t.description}
        if t.name == "model" and models:
            properties[t.name]["examples"] = models
    required = [f.name for f in route.files if f.required] + [t.name for t in route.texts if t.required]
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": properties, "required": required},
                "encoding": encoding,
            }
        },
    }


def _operation(route: Route, models: list[str]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, spec in route.responses.items():
        responses[status] = {"content": {"application/json": {}}, **spec}
    for status, text in ERRORS.items():
        responses[status] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpticError"}}},
        }
    operation: dict[str, Any] = {
        "summary": route.summary,
        "description": route.description,
        "operationId": re.sub(r"[{}]", "", route.path).strip("/").replace("/", "_").replace(".", "_") or "root",
        "tags": ["optic"],
        "responses": responses,
    }
    if route.takes_form:
        operation["requestBody"] = _form_schema(route, models)
    return operation


def build_spec(base: dict[str, Any], routes: list[Route], version: str, models: list[str]) -> dict[str, Any]:
    """`models`: the loaded models' names (and name:version), shown as examples of the `model` field."""
    spec = copy.deepcopy(base)
    spec.setdefault("info", {}).update(
        title="optic",
        version=version,
        description=(
            "Batched ONNX Runtime inference and evaluation for image classification, detection and "
            "segmentation. Every error is JSON `{error, reason}`."
        ),
    )
    paths = spec.setdefault("paths", {})
    for route in routes:
        operation = _operation(route, models)
        names = re.findall(r"{(\w+)}", route.path)
        if names:
            operation["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
            ]
        if sum(r.path == route.path for r in routes) > 1:  # one id per operation
            operation["operationId"] = f"{route.method.lower()}_{operation['operationId']}"
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    spec.setdefault("components", {}).setdefault("schemas", {})["OpticError"] = ERROR_SCHEMA
    spec["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Only when OPTIC_API_KEYS is set."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    spec["security"] = [{}, {"bearer": []}, {"apiKey": []}]  # a key is optional until keys are set
    return spec
