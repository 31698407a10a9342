"""The form fields each route takes: parsed and checked by hand on the hot path, documented in OpenAPI.

A task parameter's type and bounds are declared once, on the task's pydantic params model
(`ClassificationParams.top_k: int = Field(5, ge=1, le=1000)`); `param_field` reads that declaration once, at
start, into a plain converter and an OpenAPI schema, so no request pays for a pydantic validation and the
docs cannot drift from what is enforced.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel

from service.errors import ExpectedFile, ExpectedText, InvalidParameter
from service.http.multipart import Part

Convert = Callable[[list[str]], Any]


@dataclass(frozen=True)
class FileField:
    name: str
    description: str
    many: bool = True  # several files in the one field name
    required: bool = True


@dataclass(frozen=True)
class TextField:
    name: str
    description: str
    schema: dict[str, Any]
    convert: Convert
    required: bool = False


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = float(item.ge)  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.Le):
            high = float(item.le)  # type: ignore[arg-type]
    return low, high


def _single(name: str, values: list[str]) -> str:
    if len(values) > 1:
        raise InvalidParameter(f"{name}: given {len(values)} times; send it once")
    return values[0].strip()


def _number(name: str, kind: type, low: float | None, high: float | None) -> Convert:
    word = "an integer" if kind is int else "a number"

    def convert(values: list[str]) -> Any:
        text = _single(name, values)
        try:
            value = kind(text)
        except ValueError:
            raise InvalidParameter(f"{name}: must be {word}, got {text[:40]!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParameter(f"{name}: must be a finite number, got {text[:40]!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidParameter(f"{name}: must be between {low} and {high}, got {text[:40]}")
        return value

    return convert


def _choice(name: str, choices: tuple[str, ...]) -> Convert:
    def convert(values: list[str]) -> str:
        text = _single(name, values)
        if text not in choices:
            raise InvalidParameter(f"{name}: must be one of {', '.join(choices)}, got {text[:40]!r}")
        return text

    return convert


def _names(name: str) -> Convert:
    def convert(values: list[str]) -> list[str]:
        return [v.strip() for value in values for v in value.split(",") if v.strip()]

    return convert


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def param_field(params: type[BaseModel], name: str, description: str) -> TextField:
    """A text field for task parameter `name`, converted and bounded as the params model declares it."""
    info = params.model_fields[name]
    annotation = _strip_optional(info.annotation)
    low, high = _bounds(info.metadata)
    schema: dict[str, Any]
    if annotation in (int, float):
        schema = {"type": "integer" if annotation is int else "number"}
        schema |= {k: v for k, v in (("minimum", low), ("maximum", high)) if v is not None}
        return TextField(name, description, schema, _number(name, annotation, low, high))
    if typing.get_origin(annotation) is Literal:
        choices = tuple(str(c) for c in typing.get_args(annotation))
        return TextField(name, description, {"type": "string", "enum": list(choices)}, _choice(name, choices))
    if typing.get_origin(annotation) is list:
        return TextField(name, description, {"type": "string"}, _names(name))
    raise TypeError(f"{params.__name__}.{name}: no form converter for {annotation!r}")


def text_field(name: str, description: str, *, required: bool = False, max_length: int = 256) -> TextField:
    def convert(values: list[str]) -> str:
        text = _single(name, values)
        if len(text) > max_length:
            raise InvalidParameter(f"{name}: longer than {max_length} characters")
        return text

    return TextField(name, description, {"type": "string", "maxLength": max_length}, convert, required)


@dataclass
class UploadedFile:
    display_name: str  # "images[0] (cat.jpg)": how errors name the file
    data: bytes


class Form:
    """A route's parsed form: files and converted values, every field checked against the route's fields."""

    def __init__(self, parts: list[Part], files: tuple[FileField, ...], texts: tuple[TextField, ...]) -> None:
        self._files: dict[str, list[Part]] = {f.name: [] for f in files}
        by_name: dict[str, list[str]] = {}
        fields = {t.name: t for t in texts}
        for part in parts:
            if part.name in self._files:
                if not part.is_file and not _looks_like_file(part):
                    raise ExpectedFile(
                        f"field {part.name!r} takes file uploads, got a text value (it is never fetched as a "
                        f"URL): send the file itself, e.g. curl -F {part.name}=@photo.jpg"
                    )
                self._files[part.name].append(part)
            elif part.name in fields:
                if part.is_file:
                    raise ExpectedText(f"field {part.name!r} takes a text value, got a file upload")
                by_name.setdefault(part.name, []).append(part.text())
            # Other fields are ignored, as HTML forms and most form parsers do.
        self.values: dict[str, Any] = {}
        for name, field in fields.items():
            if name in by_name:
                self.values[name] = field.convert(by_name[name])
            elif field.required:
                raise InvalidParameter(f"the form field {name!r} is required")

    def files(self, name: str) -> list[UploadedFile]:
        return [
            UploadedFile(f"{name}[{i}]" + (f" ({p.filename})" if p.filename else ""), p.data)
            for i, p in enumerate(self._files[name])
        ]

    def parts(self, name: str) -> list[Part]:
        return self._files[name]


def _looks_like_file(part: Part) -> bool:
    """A part without a file name still carries a file when it says so by its type (some clients omit it)."""
    media = part.content_type.split(";")[0].strip().lower()
    return bool(media) and not media.startswith("text/")
