"""API keys against a real server: every route but the probes (and /metrics) needs one, no path trick avoids
it, keys are counted by id and never appear in /metrics or the log."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.auth import ApiKeyError, KeyChecker, load_keys
from service.http.guard import GuardState, _exempt, normalize_path
from tests.helpers import get_metrics, metric_value
from tests.server import Server, start_server

NAMED = "ci-robot-key-0123456789"  # from the keys file, named "ci"
BARE = "bare-key-abcdefghijklmnop"  # from OPTIC_API_KEYS, no name


@pytest.fixture(scope="module")
def keyed(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "keys").write_text(f"# optic keys\nci:{NAMED}\n\n")
    env = {"OPTIC_API_KEYS": BARE, "OPTIC_API_KEYS_FILE": str(folder / "keys")}
    handle = start_server(repository, folder / "serve.log", env=env)
    yield handle
    handle.stop()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _classify(server: Server, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", files=[("images", ("a.png", _png(), "image/png"))], headers=headers,
                      timeout=30)


def _raw(server: Server, method: str, target: str, headers: str = "") -> tuple[int, bytes]:
    """The request line exactly as given: no client normalizes the path first."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return int(data.split(b" ", 2)[1]), data


def test_without_a_key_only_probes_and_metrics_answer(keyed: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed.url}{path}", timeout=10).status_code == 200, path
    for method, path in (("GET", "/models"), ("GET", "/docs.json"), ("GET", "/"), ("GET", "/healthz"),
                         ("GET", "/no-such-route"), ("POST", "/evaluate")):
        response = httpx.request(method, f"{keyed.url}{path}", timeout=10)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json() == {
            "error": "a valid API key is needed: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`",
            "reason": "unauthorized",
        }
        assert response.headers["www-authenticate"] == 'Bearer realm="optic"'
    assert _classify(keyed, {}).status_code == 401


@pytest.mark.parametrize("method,target", [
    ("POST", "//classify"), ("POST", "/%63lassify"), ("POST", "/classify/"), ("POST", "/./classify"),
    ("POST", "/livez/../classify"), ("POST", "/readyz/..//classify"), ("HEAD", "/classify"), ("OPTIONS", "/classify"),
    ("OPTIONS", "/livez"), ("HEAD", "/models"), ("GET", "/%2e%2e/models"), ("GET", "//livez/../models"),
    ("GET", "/livez%2f..%2fmodels"), ("POST", "/livez"),
])  # fmt: skip
def test_no_path_trick_gets_past_the_key_check(keyed: Server, method: str, target: str) -> None:
    status, data = _raw(keyed, method, target)
    assert status == 401, data[:300]
    status, data = _raw(keyed, method, target, f"X-API-Key: {BARE}\r\n")
    assert status != 401, data[:300]


def test_valid_keys_pass_and_are_counted_by_id(keyed: Server) -> None:
    text = get_metrics(keyed.url)
    ci_before = metric_value(text, "optic_api_key_requests_total", key_id="ci")
    bare_id = KeyChecker(load_keys(BARE, None)).keys[0].key_id
    assert bare_id.startswith("key-") and len(bare_id) == 12
    bare_before = metric_value(text, "optic_api_key_requests_total", key_id=bare_id)
    unauthorized_before = metric_value(text, "optic_errors_total", reason="unauthorized")

    assert _classify(keyed, {"Authorization": f"Bearer {NAMED}"}).status_code == 200
    assert _classify(keyed, {"authorization": f"bearer {NAMED}"}).status_code == 200
    assert _classify(keyed, {"X-API-Key": BARE}).status_code == 200
    wrong = _classify(keyed, {"Authorization": f"Bearer {NAMED[:-1]}x"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "the API key sent is not valid"
    assert _classify(keyed, {"Authorization": f"Basic {NAMED}"}).status_code == 401

    text = get_metrics(keyed.url)
    assert metric_value(text, "optic_api_key_requests_total", key_id="ci") == ci_before + 2
    assert metric_value(text, "optic_api_key_requests_total", key_id=bare_id) == bare_before + 1
    assert metric_value(text, "optic_errors_total", reason="unauthorized") == unauthorized_before + 2
    assert NAMED not in text and BARE not in text
    assert NAMED not in keyed.log() and BARE not in keyed.log()


def test_exemptions_match_only_the_canonical_path() -> None:
    state = GuardState()
    assert _exempt(state, "/livez", "GET") and _exempt(state, "/readyz", "HEAD") and _exempt(state, "/metrics", "GET")
    assert not _exempt(state, "/livez", "OPTIONS") and not _exempt(state, "//livez", "GET")
    assert not _exempt(state, "/livez/", "GET") and not _exempt(state, "/livez/../classify", "GET")
    state.protect_metrics = True
    assert not _exempt(state, "/metrics", "GET")
    assert normalize_path("//a/./b/../c") == "/a/c" and normalize_path("/%63lassify") == "/classify"


def test_unusable_keys_stop_the_start_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="OPTIC_API_KEYS: an API key is shorter than 16"):
        load_keys("short", None)
    with pytest.raises(ApiKeyError, match="given twice"):
        load_keys(f"{BARE},{BARE}", None)
    with pytest.raises(ApiKeyError, match="OPTIC_API_KEYS_FILE: cannot read"):
        load_keys("", tmp_path / "missing")
