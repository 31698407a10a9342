"""What the deployment tests share: a model to call, an image to send, and the check of the answer.

No model list is hardcoded: the tests take the first classification model the repository (or a running
server's GET /models) has, so they keep working as models are added.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import ROOT


def first_classifier(repository: Path = ROOT / "models") -> dict[str, Any]:
    """model.json of the first classification model in `repository`; skips the test when there is none."""
    for meta_path in sorted(repository.glob("*/*/model.json")):
        if meta_path.parent.name.startswith("."):
            continue
        meta = json.loads(meta_path.read_text())
        if meta.get("task") == "classification":
            return dict(meta)
    pytest.skip(f"no classification model in {repository} (make demo-models writes the demo one)")


def served_classifier(url: str) -> dict[str, Any]:
    """The first classification model a running server lists on GET /models."""
    models = httpx.get(f"{url}/models", timeout=10).json()["models"]
    classifiers = [m for m in models if m["task"] == "classification"]
    assert classifiers, f"the server serves no classification model: {models}"
    return dict(classifiers[0])


def digit_png(digit: int = 3) -> bytes:
    """A 32x32 RGB PNG of a handwritten digit (scikit-learn's bundled digits, white on black)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = int(np.flatnonzero(digits.target == digit)[0])
    pixels = np.clip(np.rint(digits.images[index] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def classify_and_check(url: str, model: dict[str, Any]) -> dict[str, Any]:
    """POST one digit to /classify with `model` pinned as name:version; assert a well-formed answer."""
    pinned = f"{model['name']}:{model['version']}"
    response = httpx.post(
        f"{url}/classify",
        files=[("images", ("digit.png", digit_png(), "image/png"))],
        data={"model": pinned, "top_k": "3"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": model["name"], "version": model["version"]}, body
    assert len(body["results"]) == 1, body
    predictions = body["results"][0]["predictions"]
    assert 1 <= len(predictions) <= 3, body
    assert all(p["label"] in model["labels"] and 0 <= p["score"] <= 1 for p in predictions), body
    return dict(body)


def wait_until_ready(url: str, timeout_s: float, alive: Any = None, describe: Any = None) -> None:
    """Poll `url`/readyz until 200; `alive()` False or the deadline fails with `describe()` (a log tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"the server exited before it was ready:\n{describe() if describe else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz not ready after {timeout_s:.0f} s:\n{describe() if describe else ''}")
