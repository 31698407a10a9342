"""`python -m bench.run`: optic over HTTP against the raw ONNX Runtime limit and the peer, per model, one machine.

1. Builds the fixed JPEG set (bench.images).
2. For each selected model, measures the raw in-process limit at each concurrency (bench.raw), with no
   server running, so nothing competes for the cores.
3. Starts the real `bentoml serve` (bench.server) and drives it with wrk (bench.wrk: c connections, each
   sending its next request as soon as the last is answered, one image per request).
4. Stops it, starts the peer (bench.peer: FastAPI + uvicorn[standard] + ORT, the same models and ORT
   threads) and drives it the same way.
5. Prints a table per model and writes bench/results/<UTC timestamp>.json and latest.json (bench.report).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ENDPOINTS
from bench.http_load import CONTENT_TYPE, multipart_body
from bench.images import HEIGHT, QUALITY, WIDTH, fingerprint, make_images
from bench.machine import (
    BUSY_WARNING,
    idle_check,
    machine_busy_s,
    machine_info,
    own_cpu_s,
    raise_priority,
    restore_priority,
    wait_quiet,
)
from bench.raw import find_version_dirs, measure, service_batch_size
from bench.report import level_row, print_model, raw_summary, service_summary, targets, write_json
from bench.server import HOST, Server, get, running_server, scrape
from bench.wrk import BodySet, WrkMissing, run_wrk, wrk_binary
from service.repository import LoadedModel, ModelLoadError, load_model
from service.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--repository", type=Path, default=Path("models"), help="model repository (default: models)")
    add("--models", default="", help="comma-separated NAME or NAME:VERSION (default: every model)")
    add("--concurrency", default="1,4,16", help="client counts (default: 1,4,16)")
    add("--seconds", type=float, default=8.0, help="measured seconds per HTTP level (default: 8)")
    add("--warmup", type=float, default=2.0, help="HTTP warm-up seconds per level (default: 2)")
    add("--raw-seconds", type=float, default=3.0, help="seconds per raw pass (default: 3)")
    add("--raw-repeats", type=int, default=3, help="raw passes per level, the best kept (default: 3)")
    add("--images", type=int, default=32, help="how many 640x480 JPEGs (default: 32)")
    add("--output-dir", type=Path, default=RESULTS, help="where the JSON goes (default: bench/results)")
    add("--no-service", action="store_true", help="measure the raw limit only")
    add("--no-peer", action="store_true", help="leave out the FastAPI peer")
    add("--nice", type=int, default=0, metavar="N",
        help="run the benchmark and the server N steps ahead of other processes (needs root; for shared "
             "machines: other work then takes less of the cores while measuring)")
    add("--busy-retries", type=int, default=2,
        help="measure a level again when other processes took CPU meanwhile (default: 2)")
    add("--server-env", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
        help="extra environment for the server only, e.g. OPTIC_WORKERS=2 (repeatable); the raw limit "
             "always uses this process's OPTIC_ settings")
    return parser.parse_args(argv)


def _selected(version_dir: Path, wanted: set[str]) -> bool:
    name, version = version_dir.parent.name, version_dir.name
    return not wanted or name in wanted or f"{name}:{version}" in wanted


def _probe(server: Server, metrics: bool) -> dict[str, Any]:
    """CPU counters first (they bound the window), then the server's histograms (optic only)."""
    return {"time": time.perf_counter(), "machine_s": machine_busy_s(), "client_cpu_s": own_cpu_s(),
            "server_cpu_s": server.cpu_seconds(), "metrics": scrape(server.port) if metrics else {}}


def measure_raw(args: argparse.Namespace, settings: Settings, images: list[Any], levels: list[int],
                version_dir: Path) -> dict[str, Any]:
    model = load_model(version_dir, settings)  # the service's loader: same ORT options and provider
    meta = model.metadata
    print(f"raw: {model.key} ({meta.task}) on {model.provider}, "
          f"{settings.ort_intra_op_threads} intra-op threads")
    raw: dict[int, dict[str, Any]] = {}
    for c in levels:
        def level(c: int = c, model: LoadedModel = model) -> dict[str, Any]:
            return raw_summary(measure(model, images, c, settings, seconds=args.raw_seconds,
                                       repeats=args.raw_repeats))

        raw[c] = _quietly(level, args.busy_retries)
        print(f"  c={c:<3} batch {raw[c]['batch_size']:<3} {raw[c]['images_per_s']:8.1f} img/s  "
              f"p50 {raw[c]['p50_ms']:.2f} ms{_busy_note(raw[c])}")
    result = {"model": model.key, "task": meta.task, "endpoint": ENDPOINTS.get(meta.task, f"/{meta.task}"),
              "provider": model.provider, "batch_cap": service_batch_size(model, settings),
              "input": {"width": meta.input.width, "height": meta.input.height}, "raw_levels": raw}
    del model
    gc.collect()
    return result


def measure_service(args: argparse.Namespace, server: Server, images: list[Any], levels: list[int],
                    result: dict[str, Any], arm: str) -> None:
    """One arm ("service": optic, or "peer") at every concurrency, with wrk."""
    raw_bodies = [multipart_body(image, result["model"]) for image in images]
    conn_status, conn_body = _one_request(server, result["endpoint"], raw_bodies[0])
    found: dict[int, dict[str, Any] | None] = dict.fromkeys(levels)
    result.setdefault("arms", {})[arm] = found
    if conn_status != 200:
        print(f"{arm}: {result['model']}: first request got {conn_status}: {conn_body[:300]!r}; skipped")
        result[f"{arm}_error"] = f"{conn_status}: {conn_body[:300].decode(errors='replace')}"
        return
    print(f"{arm}: {result['model']} on {result['endpoint']}")
    url = f"http://{HOST}:{server.port}{result['endpoint']}"
    with BodySet(raw_bodies) as bodies:
        for c in levels:
            def level(c: int = c) -> dict[str, Any]:
                run_wrk(url, bodies, CONTENT_TYPE, connections=c, seconds=args.warmup)
                start = _probe(server, arm == "service")
                load = run_wrk(url, bodies, CONTENT_TYPE, connections=c, seconds=args.seconds)
                end = _probe(server, arm == "service")
                return service_summary(load, (start, end), result["model"], result["endpoint"])

            summary = found[c] = _quietly(level, args.busy_retries)
            print(f"  c={c:<3} {summary['images_per_s']:8.1f} img/s  p50 {summary['p50_ms']:.2f} ms  "
                  f"errors {sum(summary['errors'].values())}{_busy_note(summary)}")


def finish_levels(result: dict[str, Any], levels: list[int]) -> None:
    raw = result.pop("raw_levels")
    arms = result.pop("arms", {})
    result["levels"] = [level_row(c, raw[c], (arms.get("service") or {}).get(c), (arms.get("peer") or {}).get(c))
                        for c in levels]
    result["targets"] = targets(result["levels"], result["task"])


def _quietly(measure_level: Callable[[], dict[str, Any]], retries: int) -> dict[str, Any]:
    """Measure; while other processes took the cores meanwhile, wait for quiet and measure again.
    Keeps the least contaminated attempt and says how many there were."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        attempts.append(measure_level())
        if attempts[-1].get("other_cores", 0.0) <= BUSY_WARNING or attempt == retries:
            break
        if wait_quiet(20.0) > BUSY_WARNING:
            break  # busy for good: another attempt would be no cleaner
        print(f"    other processes used {attempts[-1]['other_cores']:.2f} cores; measuring again")
    best = min(attempts, key=lambda a: a.get("other_cores", 0.0))
    best["attempts"] = len(attempts)
    return best


def _busy_note(summary: dict[str, Any]) -> str:
    other = summary.get("other_cores", 0.0)
    return f"  (other processes: {other:.2f} cores)" if other > BUSY_WARNING else ""


def _one_request(server: Server, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": CONTENT_TYPE})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    saved = raise_priority(os.getpid(), args.nice) if args.nice else None  # threads made from now inherit it
    if args.nice and saved is None:
        print(f"--nice {args.nice}: could not raise the priority (needs root)", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the server too, like Ctrl-C
    try:
        return _run(args, levels, sys.argv[1:] if argv is None else argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if saved is not None:
            restore_priority(os.getpid(), saved)


def _run(args: argparse.Namespace, levels: list[int], argv: list[str]) -> int:
    settings = Settings(model_repository=args.repository)
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    version_dirs = [d for d in find_version_dirs(settings.model_repository) if _selected(d, wanted)]
    if not version_dirs:
        print(f"no models to benchmark in {settings.model_repository} (try --repository /path/to/models)",
              file=sys.stderr)
        return 2
    images = make_images(args.images)
    other = idle_check()
    print(f"{len(images)} images {WIDTH}x{HEIGHT} q{QUALITY} ({fingerprint(images)}); other processes use "
          f"{other:.2f} cores now" + ("  WARNING: the machine is busy" if other > BUSY_WARNING else ""))
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine_info(), "other_cores_at_start": other},
        "settings": {**settings.model_dump(mode="json"),
                     "ort_intra_op_threads": settings.ort_intra_op_threads},
        "images": {"count": len(images), "width": WIDTH, "height": HEIGHT, "jpeg_quality": QUALITY,
                   "fingerprint": fingerprint(images), "total_bytes": sum(len(i.data) for i in images)},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": [],
    }
    try:
        results = []
        for version_dir in version_dirs:
            try:
                results.append(measure_raw(args, settings, images, levels, version_dir))
            except ModelLoadError as exc:
                print(f"skipping {version_dir}: {exc}", file=sys.stderr)
        if not args.no_service:
            try:
                wrk_binary()
            except WrkMissing as exc:
                print(f"service: {exc}", file=sys.stderr)
                report["service_error"] = str(exc)
                args.no_service = True
        arms = [] if args.no_service else [("service", False)] + ([] if args.no_peer else [("peer", True)])
        for arm, peer in arms:
            try:
                server_env = dict(args.server_env)
                with running_server(settings.model_repository, env=server_env, peer=peer) as server:
                    if args.nice:  # BentoML's workers start sessions of their own: raise each session once
                        for pid in {os.getsid(pid): pid for pid in server.processes()}.values():
                            raise_priority(pid, args.nice)
                    if not peer:
                        status, body = get(server.port, "/models")
                        report["served_models"] = json.loads(body) if status == 200 else f"HTTP {status}"
                    for result in results:
                        measure_service(args, server, images, levels, result, arm)
            except RuntimeError as exc:  # the server did not start: keep the other numbers
                print(f"{arm}: {exc}", file=sys.stderr)
                report[f"{arm}_error"] = str(exc)[-4000:]
        for result in results:
            finish_levels(result, levels)
        report["models"] = results
    except KeyboardInterrupt:
        print("interrupted; the server is stopped", file=sys.stderr)
        return 130
    for result in results:
        print_model(result)
    path = write_json(report, args.output_dir)
    print(f"\nwrote {path} and {path.parent / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
