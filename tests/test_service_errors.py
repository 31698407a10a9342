"""Every bad input gets a 4xx JSON error naming the problem, is counted by reason, and the server goes on."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import files_field, get_metrics, metric_value
from tests.server import Server


def _png(size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _still_serving(server: Server, cls_data: Path) -> None:
    image = next((cls_data / "test" / "5").glob("*.png"))
    response = httpx.post(f"{server.url}/classify", files=files_field([image]), timeout=30)
    assert response.status_code == 200, response.text


def _post_image(server: Server, name: str, data: bytes, **form: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/classify", files=[("images", (name, data, "application/octet-stream"))], data=form, timeout=30
    )


BAD_IMAGES = {
    "not_an_image": (b"this is plain text, not a picture", 422, "invalid_image", "not a recognised image"),
    "empty": (b"", 422, "invalid_image", "empty"),
    "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 422, "invalid_image", "image"),
    "truncated": (_jpeg()[:3000], 422, "invalid_image", "truncated"),
    "bomb": (_png((9000, 9000), "1"), 413, "image_too_large", "exceeds the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused(server: Server, cls_data: Path, case: str) -> None:
    data, status, reason, words = BAD_IMAGES[case]
    before = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/classify", reason=reason)
    response = _post_image(server, f"{case}.png", data)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and words in body["error"] and f"{case}.png" in body["error"]
    after = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/classify", reason=reason)
    assert after == before + 1
    _still_serving(server, cls_data)


def test_one_bad_image_refuses_the_whole_request(server: Server, cls_data: Path) -> None:
    good = next((cls_data / "test" / "1").glob("*.png")).read_bytes()
    response = httpx.post(
        f"{server.url}/classify",
        timeout=30,
        files=[("images", ("good.png", good, "image/png")), ("images", ("bad.png", b"nope", "image/png"))],
    )
    assert response.status_code == 422
    assert "images[1] (bad.png)" in response.json()["error"]


def test_unknown_model(server: Server, cls_data: Path) -> None:
    response = _post_image(server, "a.png", _png(), model="no-such-model")
    assert response.status_code == 404
    assert response.json()["reason"] == "unknown_model" and "no-such-model" in response.json()["error"]
    response = _post_image(server, "a.png", _png(), model="digits:999")
    assert response.status_code == 404 and "999" in response.json()["error"]
    _still_serving(server, cls_data)


def test_no_images(server: Server, cls_data: Path) -> None:
    response = httpx.post(f"{server.url}/classify", data={"model": "digits"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["reason"] == "no_images" and "images" in response.json()["error"]
    _still_serving(server, cls_data)


def test_invalid_parameter(server: Server) -> None:
    response = _post_image(server, "a.png", _png(), top_k="0")
    assert response.status_code in (400, 422)
    assert "top_k" in response.text


def test_too_many_images(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/classify", files=[("images", (f"{i}.png", _png(), "image/png")) for i in range(33)], timeout=30
    )
    assert response.status_code == 413 and response.json()["reason"] == "too_many_images"


def test_body_over_limit(server: Server, cls_data: Path) -> None:
    before = metric_value(get_metrics(server.url), "optic_errors_total", reason="body_too_large")
    response = _post_image(server, "big.png", b"\0" * (5 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["reason"] == "body_too_large" and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the limit must hold on the bytes received
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(6):
            yield b"\0" * (1024 * 1024)

    response = httpx.post(
        f"{server.url}/classify",
        content=chunks(),
        timeout=30,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 413
    after = metric_value(get_metrics(server.url), "optic_errors_total", reason="body_too_large")
    assert after == before + 2
    _still_serving(server, cls_data)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _evaluate(server: Server, name: str, data: bytes, model: str = "digits") -> httpx.Response:
    return httpx.post(
        f"{server.url}/evaluate",
        data={"model": model},
        files={"dataset": (name, data, "application/octet-stream")},
        timeout=60,
    )


def test_broken_archive(server: Server, cls_data: Path) -> None:
    response = _evaluate(server, "broken.zip", _zip({"3/a.png": _png()})[:-30])
    assert response.status_code == 422 and response.json()["reason"] == "invalid_archive"
    response = _evaluate(server, "junk.tar.gz", b"\x1f\x8b" + b"garbage" * 20)
    assert response.status_code == 422 and response.json()["reason"] == "invalid_archive"
    _still_serving(server, cls_data)


def test_archive_path_escape_is_refused(server: Server, tmp_path: Path) -> None:
    response = _evaluate(server, "evil.zip", _zip({"../../evil/3/a.png": _png()}))
    assert response.status_code == 422 and "escapes" in response.json()["error"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("3/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    response = _evaluate(server, "evil.tar.gz", buffer.getvalue())
    assert response.status_code == 422 and "link" in response.json()["error"]


def test_archive_over_size_limit(server: Server) -> None:
    # 7 MiB of zeros compresses to a few KiB: the limit must be on what it expands to.
    response = _evaluate(server, "bomb.zip", _zip({"3/a.png": b"\0" * (7 * 1024 * 1024)}))
    assert response.status_code == 413 and response.json()["reason"] == "archive_too_large"


def test_dataset_with_unknown_classes(server: Server) -> None:
    response = _evaluate(server, "odd.zip", _zip({"cat/a.png": _png(), "dog/b.png": _png()}))
    assert response.status_code == 422 and "cat" in response.json()["error"]


def test_evaluate_unknown_model(server: Server) -> None:
    response = _evaluate(server, "x.zip", _zip({"3/a.png": _png()}), model="nope")
    assert response.status_code == 404 and response.json()["reason"] == "unknown_model"


def test_evaluate_corrupt_image_in_archive(server: Server) -> None:
    response = _evaluate(server, "x.zip", _zip({"3/a.png": b"not a png"}))
    assert response.status_code == 422 and "3/a.png" in response.json()["error"]
