"""The Open Inference Protocol (KServe v2) against the real server, with the real tritonclient: HTTP, gRPC and
http.aio. Raw outputs equal ONNX Runtime run directly; encoded images give what /classify and /detect give."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.helpers import get_metrics, metric_samples, metric_value
from tests.server import Server, start_server

KEY = "v2-test-key-0123456789abcdef"


def _auth() -> dict[str, str]:
    """A new dict each call: tritonclient's infer() writes its own headers into the dict it is given."""
    return {"Authorization": f"Bearer {KEY}"}


def _auth_grpc() -> dict[str, str]:
    return {"x-api-key": KEY}


@pytest.fixture(scope="module")
def v2(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The demo models, and a digits/7 that ONNX Runtime refuses (its sha256 matching): it must not stop the rest.
    folder = tmp_path_factory.mktemp("v2")
    models = folder / "models"
    shutil.copytree(repository, models)
    broken = models / "digits" / "7"
    shutil.copytree(models / "digits" / "1", broken)
    (broken / "model.onnx").write_bytes(b"not a graph" * 64)
    meta = json.loads((broken / "model.json").read_text())
    meta.update(version="7", sha256=hashlib.sha256((broken / "model.onnx").read_bytes()).hexdigest())
    (broken / "model.json").write_text(json.dumps(meta))
    # Default body and message limits (64 MiB): a gRPC batch over gRPC's usual 4 MiB goes through.
    env = {"OPTIC_API_KEYS": f"v2:{KEY}", "OPTIC_MAX_BATCH_WAIT_MS": "5"}
    handle = start_server(models, folder / "serve.log", env=env)
    yield handle
    handle.stop()


def _http(server: Server) -> thttp.InferenceServerClient:
    return thttp.InferenceServerClient(server.url.removeprefix("http://"))


def _grpc(server: Server) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(server.grpc_url)


def _ort(repository: Path, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    version_dir = max((repository / model).iterdir(), key=lambda p: int(p.name))
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": batch}), strict=True))


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _encoded(width: int, height: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 40, np.uint8)
    x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
    image[y : y + height // 3, x : x + width // 3] = (230, 30, 30)  # a shape for the detector to find
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _http_input(array: np.ndarray, datatype: str = "UINT8", binary: bool = True) -> thttp.InferInput:
    tensor = thttp.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _grpc_input(array: np.ndarray, datatype: str = "UINT8", name: str = "images") -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_metadata_and_config_over_all_three_clients(v2: Server, repository: Path) -> None:
    http, rpc = _http(v2), _grpc(v2)
    assert http.is_server_live() and http.is_server_ready()
    assert rpc.is_server_live() and rpc.is_server_ready()
    assert http.is_model_ready("digits", headers=_auth()) and rpc.is_model_ready("digits", headers=_auth_grpc())
    assert http.is_model_ready("digits", "1", headers=_auth())
    assert not rpc.is_model_ready("no-such-model", headers=_auth_grpc())

    server = http.get_server_metadata(headers=_auth())
    assert server["name"] == "optic" and "binary_tensor_data" in server["extensions"]
    assert rpc.get_server_metadata(headers=_auth_grpc()).name == "optic"

    meta = http.get_model_metadata("digits", headers=_auth())
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 3, 64, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    image_meta = rpc.get_model_metadata("shapes_image", headers=_auth_grpc(), as_json=True)
    assert image_meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": ["-1", "1"]}]
    assert [o["name"] for o in image_meta["outputs"]] == ["boxes", "scores", "labels", "num_detections"]

    config = http.get_model_config("shapes", headers=_auth())
    assert config["max_batch_size"] > 0 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [3, 320, 320],
                                "format": "FORMAT_NCHW"}]  # fmt: skip
    assert {o["name"]: o["data_type"] for o in config["output"]} == {
        "boxes": "TYPE_FP32", "scores": "TYPE_FP32", "labels": "TYPE_INT64", "num_detections": "TYPE_INT64"
    }  # fmt: skip
    grpc_config = rpc.get_model_config("digits_image", headers=_auth_grpc()).config
    assert grpc_config.input[0].data_type == 13 and list(grpc_config.input[0].dims) == [1]  # TYPE_STRING

    async def aio() -> None:
        client = thttp_aio.InferenceServerClient(v2.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            assert (await client.get_model_metadata("digits", headers=_auth()))["name"] == "digits"
            batch = _pixels(2, 64, seed=5)
            result = await client.infer("digits", [_http_input(batch)], headers=_auth())
            expected = _ort(repository, "digits", batch)["probabilities"]
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        finally:
            await client.close()

    asyncio.run(aio())


def test_binary_and_json_tensors_equal_onnx_runtime(v2: Server, repository: Path) -> None:
    batch = _pixels(4, 64, seed=1)
    reference = _ort(repository, "digits", batch)["probabilities"]
    http = _http(v2)
    for binary_in, binary_out in ((True, True), (False, False), (True, False)):
        result = http.infer(
            "digits", [_http_input(batch, binary=binary_in)], model_version="1", request_id=f"req-{binary_in}",
            outputs=[thttp.InferRequestedOutput("probabilities", binary_data=binary_out)], headers=_auth(),
        )  # fmt: skip
        response = result.get_response()
        assert response["id"] == f"req-{binary_in}" and response["model_name"] == "digits"
        assert response["model_version"] == "1"
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference, atol=1e-5)
    grpc_result = _grpc(v2).infer("digits", [_grpc_input(batch)], model_version="1", request_id="g-1",
                                  headers=_auth_grpc())  # fmt: skip
    assert grpc_result.get_response().id == "g-1"
    np.testing.assert_allclose(grpc_result.as_numpy("probabilities"), reference, atol=1e-5)

    # The tensor view of every task is the graph's own output.
    for model, size in (("shapes", 320), ("shapes-seg", 160), ("shapes-instances", 224)):
        pixels = _pixels(2, size, seed=2)
        expected = _ort(repository, model, pixels)
        got = _grpc(v2).infer(model, [_grpc_input(pixels)], headers=_auth_grpc())
        for name, array in expected.items():
            np.testing.assert_allclose(got.as_numpy(name), array, atol=1e-4, err_msg=f"{model}:{name}")


def test_classification_extension(v2: Server, repository: Path) -> None:
    batch = _pixels(3, 64, seed=3)
    reference = _ort(repository, "digits", batch)["probabilities"]
    outputs = [thttp.InferRequestedOutput("probabilities", class_count=3)]
    got = _http(v2).infer("digits", [_http_input(batch)], outputs=outputs, headers=_auth()).as_numpy("probabilities")
    assert got.shape == (3, 3)
    for row, scores in zip(got, reference, strict=True):
        top = np.argsort(-scores)[:3]
        parsed = [item.decode().split(":") for item in row]
        assert [int(p[1]) for p in parsed] == top.tolist()
        assert [p[2] for p in parsed] == [str(i) for i in top]  # the digits' labels are their names
        np.testing.assert_allclose([float(p[0]) for p in parsed], scores[top], atol=1e-5)


def test_encoded_images_give_what_the_json_routes_give(v2: Server) -> None:
    files = [_encoded(640, 480, "JPEG", 0), _encoded(200, 300, "JPEG", 1), _encoded(320, 320, "PNG", 2)]
    encoded = np.array([[f] for f in files], dtype=np.object_)
    http, rpc = _http(v2), _grpc(v2)

    classify = httpx.post(f"{v2.url}/classify", files=[("images", (f"{i}.img", f)) for i, f in enumerate(files)],
                          data={"model": "digits", "top_k": "10"}, headers=_auth(), timeout=30).json()  # fmt: skip
    for result in (
        http.infer("digits_image", [_http_input(encoded, "BYTES")], headers=_auth()),
        rpc.infer("digits_image", [_grpc_input(encoded, "BYTES")], headers=_auth_grpc()),
    ):
        probabilities = result.as_numpy("probabilities")
        for row, expected in zip(probabilities, classify["results"], strict=True):
            for prediction in expected["predictions"]:
                assert row[prediction["class_id"]] == pytest.approx(prediction["score"], abs=1e-6)

    detect = httpx.post(f"{v2.url}/detect", files=[("images", (f"{i}.img", f)) for i, f in enumerate(files)],
                        data={"model": "shapes", "score_threshold": "0.05"}, headers=_auth(), timeout=30).json()
    result = rpc.infer("shapes_image", [_grpc_input(encoded, "BYTES")], headers=_auth_grpc())
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    labels, counts = result.as_numpy("labels"), result.as_numpy("num_detections")
    assert sum(len(r["detections"]) for r in detect["results"]) > 0, "the detector found nothing to compare"
    for i, expected in enumerate(detect["results"]):
        rows = sorted(range(int(counts[i])), key=lambda j: -scores[i, j])
        rows = [j for j in rows if scores[i, j] >= 0.05][: len(expected["detections"])]
        assert len(rows) == len(expected["detections"])
        for j, detection in zip(rows, expected["detections"], strict=True):
            np.testing.assert_allclose(boxes[i, j], detection["box"], atol=0.01)  # original-image pixels
            assert int(labels[i, j]) == detection["class_id"]
            assert float(scores[i, j]) == pytest.approx(detection["score"], abs=1e-6)
        assert not boxes[i, int(counts[i]) :].any(), "padding rows stay zero"


def test_unknown_model_and_wrong_inputs_are_refused(v2: Server) -> None:
    http, rpc = _http(v2), _grpc(v2)
    pixels = _pixels(1, 64)
    with pytest.raises(InferenceServerException) as caught:
        http.infer("no-such-model", [_http_input(pixels)], headers=_auth())
    assert caught.value.status() == "404" and "no-such-model" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        rpc.infer("no-such-model", [_grpc_input(pixels)], headers=_auth_grpc())
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        http.infer("digits", [_http_input(pixels)], model_version="9", headers=_auth())
    assert caught.value.status() == "404" and "version" in caught.value.message()

    cases = [
        (_grpc_input(pixels, name="pixels"), "one input named 'images'"),
        (_grpc_input(pixels.astype(np.float32), "FP32"), "UINT8"),
        (_grpc_input(_pixels(1, 32)), "shape"),
        (_grpc_input(np.array([[b"not an image"]], dtype=np.object_), "BYTES"), "UINT8"),
    ]
    for tensor, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            rpc.infer("digits", [tensor], headers=_auth_grpc())
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
        assert words in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        http.infer("digits_image", [_http_input(np.array([[b"not an image"]], dtype=np.object_), "BYTES")],
                   headers=_auth())  # fmt: skip
    assert caught.value.status() == "400" and "image" in caught.value.message()

    # Byte sizes that do not match the shape, as bytes on the wire.
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 64, 64],
                                     "parameters": {"binary_data_size": 100}}]}).encode()  # fmt: skip
    before = get_metrics(v2.url)
    response = httpx.post(f"{v2.url}/v2/models/digits/infer", content=header + bytes(100), timeout=10,
                          headers={**_auth(), "Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert response.status_code == 400 and "12288" in response.json()["error"]
    assert response.json()["reason"] == "invalid_byte_size"
    after = get_metrics(v2.url)
    labels = {"endpoint": "/v2/models/infer", "reason": "invalid_byte_size"}
    counted = metric_value(after, "optic_errors_total", **labels) - metric_value(before, "optic_errors_total", **labels)
    assert counted == 1
    response = httpx.post(f"{v2.url}/v2/models/digits/infer", content=b"{not json", headers=_auth(), timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    request = tgrpc.service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(bytes(1000))
    with grpc.insecure_channel(v2.grpc_url) as channel:
        stub = tgrpc.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as rpc_error:
            stub.ModelInfer(request, metadata=[("x-api-key", KEY)])
        assert rpc_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "12288" in rpc_error.value.details()
        with pytest.raises(grpc.RpcError) as rpc_error:
            stub.ModelStreamInfer(iter([request]), metadata=[("x-api-key", KEY)]).next()
        assert rpc_error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert v2.process.poll() is None


def test_grpc_batch_over_four_mib(v2: Server, repository: Path) -> None:
    pixels = _pixels(16, 320, seed=4)
    assert pixels.nbytes > 4 * 1024 * 1024
    result = _grpc(v2).infer("shapes", [_grpc_input(pixels)], headers=_auth_grpc())
    expected = _ort(repository, "shapes", pixels)
    np.testing.assert_allclose(result.as_numpy("scores"), expected["scores"], atol=1e-4)
    assert result.as_numpy("boxes").shape == (16, 100, 4)


def test_api_key_through_headers_and_metadata(v2: Server) -> None:
    http, rpc = _http(v2), _grpc(v2)
    pixels = _pixels(1, 64)
    assert http.is_server_ready() and rpc.is_server_ready()  # probes need no key
    with pytest.raises(InferenceServerException) as caught:
        http.infer("digits", [_http_input(pixels)])
    assert caught.value.status() == "401"
    with pytest.raises(InferenceServerException) as caught:
        rpc.infer("digits", [_grpc_input(pixels)])
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as caught:
        rpc.infer("digits", [_grpc_input(pixels)], headers={"authorization": "Bearer wrong-key-0123456789"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    before = get_metrics(v2.url)
    http.infer("digits", [_http_input(pixels)], headers={"X-API-Key": KEY})
    rpc.infer("digits", [_grpc_input(pixels)], headers={"authorization": f"Bearer {KEY}"})
    after = get_metrics(v2.url)
    counted = metric_value(after, "optic_api_key_requests_total", key_id="v2")
    assert counted - metric_value(before, "optic_api_key_requests_total", key_id="v2") == 2
    assert KEY not in after and KEY not in v2.log()


def test_one_batcher_for_every_protocol(v2: Server) -> None:
    """One image at a time from each protocol, all at once, on the slowest model: while one runs, the others
    wait in the one batcher and go in one batch, whichever protocol brought them."""
    model, size = "shapes-instances", 224
    image = _encoded(300, 200, "JPEG", 7)
    pixels = _pixels(1, size, seed=8)
    before = get_metrics(v2.url)
    rounds = 6

    def json_route() -> None:
        response = httpx.post(f"{v2.url}/segment", files=[("images", ("a.jpg", image))], data={"model": model},
                              headers=_auth(), timeout=30)  # fmt: skip
        assert response.status_code == 200

    def v2_http() -> None:
        _http(v2).infer(model, [_http_input(pixels)], headers=_auth())

    def v2_grpc() -> None:
        _grpc(v2).infer(model, [_grpc_input(pixels)], headers=_auth_grpc())

    with ThreadPoolExecutor(3) as pool:
        for _ in range(rounds):
            for future in [pool.submit(call) for call in (json_route, v2_http, v2_grpc)]:
                future.result()
    after = get_metrics(v2.url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    for protocol in ("http", "v2-http", "v2-grpc"):
        assert delta("optic_requests_total", model=model, version="2", protocol=protocol) == rounds, protocol
    batches = delta("optic_batch_size_count", model=model, version="2")
    images = delta("optic_batch_size_sum", model=model, version="2")
    assert images == 3 * rounds
    assert batches < 3 * rounds, "requests of different protocols never shared a batch"
    assert any(s[0].get("protocol") == "v2-grpc" for s in metric_samples(after, "optic_requests_total"))


def test_repository_index_and_a_version_that_failed_to_load(v2: Server) -> None:
    """Triton's repository index: every version READY, or UNAVAILABLE with the reason; the broken digits/7 did not
    replace digits/1, which serves."""
    index = _http(v2).get_model_repository_index(headers=_auth())
    states = {(e["name"], e["version"]): e["state"] for e in index}
    for name in ("digits", "digits_image", "shapes", "shapes-seg_image"):
        assert states[name, max(v for n, v in states if n == name and states[n, v] == "READY")] == "READY"
    failed = [e for e in index if e["state"] == "UNAVAILABLE"]
    assert {(e["name"], e["version"]) for e in failed} == {("digits", "7"), ("digits_image", "7")}
    assert all("ONNX Runtime cannot run it" in e["reason"] for e in failed)
    ready = _grpc(v2).get_model_repository_index(headers=_auth_grpc(), as_json=True)["models"]
    assert {(e["name"], e["version"]) for e in ready if e.get("state") == "READY"} == {
        k for k, state in states.items() if state == "READY"
    }
    response = httpx.post(f"{v2.url}/v2/repository/index", json={"ready": True}, headers=_auth(), timeout=10)
    assert all(e["state"] == "READY" for e in response.json()) and len(response.json()) == len(states) - 2
    result = _http(v2).infer("digits", [_http_input(_pixels(1, 64))], headers=_auth())
    assert result.get_response()["model_version"] == "1"
    assert httpx.get(f"{v2.url}/models", headers=_auth(), timeout=10).json()["failed"].keys() == {"digits/7"}
    assert metric_value(get_metrics(v2.url), "optic_model_load_seconds_count", model="digits") >= 1
