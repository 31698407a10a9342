"""Hostile and malformed requests over a raw socket: each gets a 4xx JSON `{error, reason}` naming the problem,
counted by reason, and the server goes on serving; a fuzzer over the live /docs.json finds no server error."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import get_metrics, metric_value
from tests.server import ROOT, Server

BOUNDARY = b"b0undary"
CT = b"multipart/form-data; boundary=" + BOUNDARY


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _part(disposition: bytes, data: bytes, content_type: bytes = b"") -> bytes:
    head = b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n"
    return head + (b"Content-Type: " + content_type + b"\r\n" if content_type else b"") + b"\r\n" + data + b"\r\n"


def _image(filename: bytes = b"a.png") -> bytes:
    return _part(b'name="images"; filename="' + filename + b'"', _png(), b"image/png")


END = b"--" + BOUNDARY + b"--\r\n"


def raw_post(server: Server, path: str, body: bytes, content_type: bytes | None = CT,
             extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request as bytes on a fresh connection: nothing in between fixes up the framing."""
    host, port = server.url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n".encode()
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + extra + b"\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head_block, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head_block.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


HOSTILE = {
    "broken_framing": (_image() + b"--" + BOUNDARY + b"\r\nContent-Disp", CT, 400, "malformed_request",
                       "closing boundary"),
    "missing_boundary": (_image() + END, b"multipart/form-data", 400, "malformed_request", "no boundary"),
    "too_many_parts": (b"".join(_part(b'name="x"', b"1") for _ in range(200)) + _image() + END, CT, 413,
                       "too_many_parts", "OPTIC_MAX_FORM_PARTS"),
    "overlong_filename": (_image(b"n" * 300 + b".png") + END, CT, 400, "invalid_filename", "OPTIC_MAX_FILENAME_LENGTH"),
    "odd_filename": (_image(b"a\x00b.png") + END, CT, 400, "invalid_filename", "control character"),
    "path_filename": (_image(b"..\\..\\boot.ini") + END, CT, 400, "invalid_filename", "path separator"),
    "oversized_field": (_part(b'name="model"', b"m" * (70 * 1024)) + _image() + END, CT, 413, "field_too_large",
                        "OPTIC_MAX_FIELD_BYTES"),
    "wrong_content_type": (_png(), b"image/png", 415, "unsupported_media_type", "image/png"),
    "no_content_type": (_image() + END, None, 415, "unsupported_media_type", "no Content-Type"),
    "json_body": (b'{"images": ["a.png"], "model": "digits"}', b"application/json", 415, "unsupported_media_type",
                  "application/json"),
    "text_for_file": (_part(b'name="images"', b"/etc/passwd") + END, CT, 422, "expected_file", "never fetched"),
    "file_for_text": (_part(b'name="model"; filename="m.txt"', b"digits") + _image() + END, CT, 422,
                      "expected_text", "model"),
    "garbage_multipart": (os.urandom(4096), CT, 400, "malformed_request", "multipart"),
    "nested_multipart_header": (b"--" + BOUNDARY + b"\r\n" + b"X" * 70000 + END, CT, 400, "malformed_request",
                                "header"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_request_gets_a_counted_4xx(server: Server, case: str) -> None:
    body, content_type, status, reason, words = HOSTILE[case]
    before = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/classify", reason=reason)
    got, headers, payload = raw_post(server, "/classify", body, content_type)
    assert got == status, payload
    answer = json.loads(payload)
    assert set(answer) == {"error", "reason"} and answer["reason"] == reason and words in answer["error"], answer
    assert headers["content-type"] == "application/json" and headers["x-optic-error-reason"] == reason
    after = metric_value(get_metrics(server.url), "optic_errors_total", endpoint="/classify", reason=reason)
    assert after == before + 1
    ok = httpx.post(f"{server.url}/classify", files=[("images", ("a.png", _png(), "image/png"))], timeout=30)
    assert ok.status_code == 200, ok.text


def test_a_url_sent_where_a_file_belongs_is_never_fetched(server: Server) -> None:
    """The text value names a listener on loopback; it must see no connection at all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(2.0)
    port = listener.getsockname()[1]
    hits: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            hits.append(conn.recv(1024))
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    for path in ("/classify", "/detect", "/segment"):
        response = httpx.post(f"{server.url}{path}", data={"images": f"http://127.0.0.1:{port}/cat.jpg"}, timeout=30)
        assert response.status_code == 422 and response.json()["reason"] == "expected_file", response.text
    form = {"dataset": f"http://127.0.0.1:{port}/d.zip", "model": "digits"}
    response = httpx.post(f"{server.url}/evaluate", data=form, timeout=30)
    assert response.status_code == 422 and response.json()["reason"] == "expected_file", response.text
    thread.join()
    listener.close()
    assert hits == [], "the server connected to an address a client named"


def test_a_body_shorter_than_declared_does_not_hang_or_crash(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: " + CT + b"\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head + _image())
    ok = httpx.post(f"{server.url}/classify", files=[("images", ("a.png", _png(), "image/png"))], timeout=30)
    assert ok.status_code == 200


def test_docs_describe_every_route_and_field(server: Server) -> None:
    spec = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    assert spec["info"]["title"] == "optic"
    expected = {
        "/classify": {"images", "model", "top_k"},
        "/detect": {"images", "model", "score_threshold", "max_detections", "classes"},
        "/detect/render": {"images", "model", "score_threshold", "max_detections", "classes"},
        "/segment": {"images", "model", "score_threshold", "max_detections", "mask_format"},
        "/segment/render": {"images", "model", "score_threshold"},
        "/evaluate": {"dataset", "model"},
    }
    for path, fields in expected.items():
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        properties = body["schema"]["properties"]
        assert set(properties) == fields, path
        binary = properties["dataset" if path == "/evaluate" else "images"]
        assert (binary.get("items") or binary)["format"] == "binary"
        assert "422" in spec["paths"][path]["post"]["responses"]
    assert spec["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]["score_threshold"] == {"type": "number", "minimum": 0.0, "maximum": 1.0,
                                             "description": "Keep detections scoring at least this."}
    assert {"/models", "/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 200  # Swagger UI


def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    """The fuzzer reads the live /docs.json and sends real images (tests/schemathesis_hooks.py) to every route."""
    before = metric_value(get_metrics(server.url), "optic_images_total")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{server.url}/docs.json", "--checks", "not_a_server_error",
         "--max-examples", "30", "--seed", "1", "--request-timeout", "60", "--report", "junit",
         "--report-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
    after = metric_value(get_metrics(server.url), "optic_images_total")
    assert after - before >= 20, "the fuzzer's images never reached a model"
    assert metric_value(get_metrics(server.url), "optic_errors_total", reason="internal_error") == 0
