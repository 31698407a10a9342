"""`python -m bench.v2`: the KServe v2 tensor path against raw ONNX Runtime, over HTTP (wrk) and gRPC.

The bench's JPEGs are decoded and preprocessed once, by optic's own code, into uint8 `[3, H, W]` tensors; the
same tensors, `--batch` per request, go to every arm:

- raw: in-process `session.run` (the service's loader, session options and threads), batch after batch
  with nothing else running: the best of the request's batch and of the largest batch the batcher forms.
- v2 HTTP: `POST /v2/models/M/infer` with Triton's binary tensor extension, driven by wrk (bench/wrk.lua, c
  keep-alive connections, prebuilt bodies), binary outputs back.
- v2 gRPC: `ModelInfer` with raw contents, c calls in flight on one channel, from this process (grpc.aio):
  the CPU this client costs is reported, since it shares the cores with the server.

Each arm is measured at `--batch` images per request and at 1 (for comparison), at each concurrency.
Writes bench/results/v2-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import make_images
from bench.machine import machine_info
from bench.report import write_json
from bench.server import HOST, running_server
from bench.wrk import BodySet, run_wrk
from service.pipeline import prepare
from service.repository import load_model
from service.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def tensors(model_dir: Path, settings: Settings, count: int) -> list[np.ndarray]:
    model = load_model(model_dir, settings)
    return [prepare(model, image.data, image.name, settings.max_image_pixels).array for image in make_images(count)]


def batches(images: list[np.ndarray], size: int, count: int = 8) -> list[np.ndarray]:
    return [np.stack([images[(i * size + j) % len(images)] for j in range(size)]) for i in range(count)]


def measure_raw(model_dir: Path, settings: Settings, images: list[np.ndarray], size: int, seconds: float) -> dict:
    model = load_model(model_dir, settings)
    best: dict[str, Any] = {}
    for run_size in sorted({size, max(size, settings.max_batch_size)}):
        work = batches(images, run_size)
        for batch in work[:2]:
            model.run(batch)
        done, latencies = 0, []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            model.run(work[done % len(work)])
            latencies.append((time.perf_counter() - t0) * 1000)
            done += 1
        rate = done * run_size / (time.perf_counter() - started)
        if rate > best.get("images_per_s", 0):
            best = {"images_per_s": rate, "batch": run_size, "p50_ms": float(np.percentile(latencies, 50))}
    return best


def v2_body(model: str, batch: np.ndarray) -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }, separators=(",", ":")).encode()  # fmt: skip
    return header + batch.tobytes(), len(header)


def measure_http(port: int, model: str, work: list[np.ndarray], c: int, seconds: float) -> dict[str, Any]:
    built = [v2_body(model, batch) for batch in work]
    lengths = {length for _, length in built}
    assert len(lengths) == 1, "every body's JSON header has the same length"
    url = f"http://{HOST}:{port}/v2/models/{model}/infer"
    header = f"Inference-Header-Content-Length: {lengths.pop()}"
    with BodySet([body for body, _ in built]) as bodies:
        run_wrk(url, bodies, "application/octet-stream", connections=c, seconds=2, header=header)
        result = run_wrk(url, bodies, "application/octet-stream", connections=c, seconds=seconds, header=header)
    size = len(work[0])
    return {"images_per_s": result.ok_per_s * size, "p50_ms": result.latency_us["p50"] / 1000,
            "p99_ms": result.latency_us["p99"] / 1000, "errors": result.errors,
            "client_cores": result.client_cpu_s / result.seconds}  # fmt: skip


def measure_grpc(port: int, model: str, work: list[np.ndarray], c: int, seconds: float) -> dict[str, Any]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    requests = []
    for batch in work:
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="images", datatype="UINT8", shape=list(batch.shape))
        request.outputs.add(name="probabilities")
        request.raw_input_contents.append(batch.tobytes())
        requests.append(request)
    limit = 64 * 1024 * 1024

    async def run(duration: float) -> tuple[int, int, list[float], float]:
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            latencies: list[float] = []
            errors = 0
            deadline = time.perf_counter() + duration

            async def client(i: int) -> None:
                nonlocal errors
                n = i
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        await stub.ModelInfer(requests[n % len(requests)])
                        latencies.append((time.perf_counter() - t0) * 1000)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    n += 1

            started = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(c)))
            return len(latencies), errors, latencies, time.perf_counter() - started

    asyncio.run(run(2))
    before = resource.getrusage(resource.RUSAGE_SELF)
    ok, errors, latencies, elapsed = asyncio.run(run(seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"images_per_s": ok * len(work[0]) / elapsed, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "errors": {"rpc": errors} if errors else {},
            "client_cores": cpu / elapsed}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--batch", type=int, default=8, help="images per request (1 is measured beside it)")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = Settings(model_repository=args.repository)
    model_dir = max((args.repository / args.model).iterdir(), key=lambda p: (not p.name.isdigit(), p.name.zfill(9)))
    images = tensors(model_dir, settings, 32)
    levels = [int(c) for c in args.concurrency.split(",")]
    sizes = sorted({args.batch, 1}, reverse=True)
    rows: list[dict[str, Any]] = []
    raw = {size: measure_raw(model_dir, settings, images, size, args.seconds) for size in sizes}
    with running_server(args.repository) as server:
        for size in sizes:
            work = batches(images, size)
            for c in levels:
                http = measure_http(server.port, args.model, work, c, args.seconds)
                rpc = measure_grpc(server.grpc_port, args.model, work, c, args.seconds)
                row = {"images_per_request": size, "concurrency": c, "raw": raw[size], "v2_http": http,
                       "v2_grpc": rpc, "http_over_raw": http["images_per_s"] / raw[size]["images_per_s"],
                       "grpc_over_raw": rpc["images_per_s"] / raw[size]["images_per_s"]}  # fmt: skip
                rows.append(row)
                print(f"{size} img/request c={c:<3} raw {raw[size]['images_per_s']:8.1f} img/s (batch "
                      f"{raw[size]['batch']})  v2 HTTP {http['images_per_s']:8.1f} ({row['http_over_raw']:.2f} x raw, "
                      f"p50 {http['p50_ms']:.2f} ms)  v2 gRPC {rpc['images_per_s']:8.1f} "
                      f"({row['grpc_over_raw']:.2f} x raw, p50 {rpc['p50_ms']:.2f} ms, client "
                      f"{rpc['client_cores']:.2f} cores)", flush=True)  # fmt: skip
    target = next((r for r in rows if r["images_per_request"] == args.batch and r["concurrency"] == max(levels)), None)
    report = {"command": "python -m bench.v2 " + " ".join(argv or []), "machine": machine_info(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": args.model,
              "ort_intra_op_threads": settings.ort_intra_op_threads, "rows": rows,
              "target": {"v2_http_over_raw_at_batch_c_max": target["http_over_raw"] if target else None,
                         "goal": 0.9}}  # fmt: skip
    if target:
        verdict = "reached" if target["http_over_raw"] >= 0.9 else "NOT reached"
        print(f"target: v2 HTTP >= 0.9 x raw at {args.batch} images/request, c={max(levels)}: "
              f"{target['http_over_raw']:.2f} ({verdict})")
    path = write_json(report, args.output_dir, prefix="v2-")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
