"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): the image fields get real, decodable images.

Random bytes in a `format: binary` field only ever test the "not an image" refusal; with these the fuzzer's
requests reach decoding, batching and every parameter's handling.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _encode(fmt: str, width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


def _images(fmt: str) -> st.SearchStrategy[bytes]:
    colors = st.tuples(*[st.integers(0, 255)] * 3)
    return st.builds(_encode, st.just(fmt), st.integers(1, 96), st.integers(1, 96), colors)


schemathesis.openapi.media_type("image/png", _images("PNG"))
schemathesis.openapi.media_type("image/jpeg", _images("JPEG"))
schemathesis.openapi.media_type("image/webp", _images("WEBP"))
