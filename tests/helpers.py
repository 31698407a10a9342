"""Small shared helpers for HTTP tests: multipart bodies, metrics parsing, archives."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

import httpx


def files_field(paths: list[Path], field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            samples.append((labels, float(match.group(2))))
    return samples


def metric_value(text: str, name: str, **labels: str) -> float:
    return sum(v for lab, v in metric_samples(text, name) if all(lab.get(k) == x for k, x in labels.items()))


def get_metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def zip_tree(root: Path, arcname_prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, arcname_prefix + str(path.relative_to(root)))
    return buffer.getvalue()


def targz_tree(root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root, arcname=root.name)
    return buffer.getvalue()


def zip_members(members: dict[str, bytes]) -> bytes:
    """A zip archive of these names and contents (archive tests that need exact member names)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def assert_plot(path: Path) -> None:
    """A real figure: a PNG of a sensible size with more on it than a blank canvas."""
    from PIL import Image

    assert path.is_file(), path.name
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300, path.name
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50, path.name  # axes, text, bars or curves
