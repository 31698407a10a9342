"""Summaries, the printed tables, the targets, and the JSON results file.

Targets (from the issue): service throughput >= 0.85 x raw at concurrency 16, and p50 overhead <= 3 ms at
concurrency 1. A miss prints MISS; it never fails the run.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.http_load import LoadResult
from bench.machine import BUSY_WARNING, CpuWindow
from bench.raw import RawLevel

THROUGHPUT_TARGET = (16, 0.85)  # (concurrency, service / raw)
OVERHEAD_TARGET = (1, 3.0)  # (concurrency, p50 overhead in ms)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def raw_summary(level: RawLevel) -> dict[str, Any]:
    return {
        "images_per_s": level.throughput, "images": level.images, "seconds": level.seconds,
        "batch_size": level.batch_size, "p50_ms": _pct(level.latencies_ms, 50),
        "p99_ms": _pct(level.latencies_ms, 99), "stage_ms": level.stage_ms,
        "cpu_ms_per_image": level.cpu_ms_per_image, "other_cores": level.other_cores,
        "repeat_images_per_s": level.repeat_throughputs,
    }


def service_summary(result: LoadResult, model_labels: str, endpoint: str) -> dict[str, Any]:
    """Client-side numbers, plus the server's own histograms and CPU over the same window."""
    start, end = result.probes
    summary: dict[str, Any] = {
        "images_per_s": result.throughput, "requests": result.completed, "seconds": result.seconds,
        "p50_ms": _pct(result.latencies_ms, 50), "p99_ms": _pct(result.latencies_ms, 99),
        "errors": result.errors, "error_samples": result.error_samples,
        "client_cores": result.client_cpu_s / result.seconds,
    }
    if start is None or end is None:
        return summary
    elapsed = end["time"] - start["time"]
    server_s = end["server_cpu_s"] - start["server_cpu_s"]
    client_s = end["client_cpu_s"] - start["client_cpu_s"]
    cpu = CpuWindow(elapsed, end["machine_s"] - start["machine_s"], server_s + client_s)
    summary.update(server_cores=server_s / elapsed, other_cores=cpu.other_cores,
                   server_cpu_ms_per_image=server_s / max(1, result.completed) * 1000)

    def mean(name: str, labels: str, scale: float = 1.0) -> float | None:
        def delta(key: str) -> float:
            return float(end["metrics"].get(key, 0) - start["metrics"].get(key, 0))

        sums, count = delta(f"{name}_sum{{{labels}}}"), delta(f"{name}_count{{{labels}}}")
        return sums / count * scale if count else None

    model, version = model_labels.split(":")
    summary["server"] = {
        "mean_batch_size": mean("optic_batch_size", f"model={model},version={version}"),
        **{f"{stage}_ms": mean("optic_stage_seconds", f"model={model},stage={stage},version={version}", 1000)
           for stage in ("preprocess", "inference", "postprocess")},
        "in_app_ms": mean("bentoml_service_request_duration_seconds",
                          f"endpoint={endpoint},http_response_code=200", 1000),
    }
    return summary


def level_row(concurrency: int, raw: dict[str, Any], service: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": concurrency, "raw": raw, "service": service,
                           "throughput_ratio": None, "p50_overhead_ms": None}
    if service and raw["images_per_s"]:
        row["throughput_ratio"] = service["images_per_s"] / raw["images_per_s"]
        if service["p50_ms"] is not None and raw["p50_ms"] is not None:
            row["p50_overhead_ms"] = service["p50_ms"] - raw["p50_ms"]
    return row


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_c = {r["concurrency"]: r for r in rows}
    (tc, ratio), (oc, overhead) = THROUGHPUT_TARGET, OVERHEAD_TARGET
    got_ratio = by_c.get(tc, {}).get("throughput_ratio")
    got_overhead = by_c.get(oc, {}).get("p50_overhead_ms")
    ratio_ok = got_ratio is not None and got_ratio >= ratio
    overhead_ok = got_overhead is not None and got_overhead <= overhead
    return {
        "throughput": {"concurrency": tc, "target": f">= {ratio} x raw", "value": got_ratio,
                       "status": _status(got_ratio, ratio_ok)},
        "p50_overhead": {"concurrency": oc, "target": f"<= {overhead} ms", "value": got_overhead,
                         "status": _status(got_overhead, overhead_ok)},
    }


def _status(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else "PASS" if ok else "MISS"


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _line(cells: tuple[str, ...], width: int) -> None:
    print(" | ".join(f"{c:>{width}}" for c in cells))


def print_model(result: dict[str, Any]) -> None:
    print(f"\n== {result['model']} ({result['task']}, {result['endpoint']}, provider {result['provider']}, "
          f"batch cap {result['batch_cap']}) ==")
    _line(("conc", "raw img/s", "svc img/s", "svc/raw", "raw p50", "svc p50", "p50 ovh", "raw p99", "svc p99",
           "errors"), 9)
    for row in result["levels"]:
        raw, svc = row["raw"], row["service"] or {}
        errors = sum((svc.get("errors") or {}).values())
        _line((str(row["concurrency"]), _f(raw["images_per_s"]), _f(svc.get("images_per_s")),
               _f(row["throughput_ratio"], 3), _f(raw["p50_ms"], 2), _f(svc.get("p50_ms"), 2),
               _f(row["p50_overhead_ms"], 2), _f(raw["p99_ms"], 2), _f(svc.get("p99_ms"), 2), str(errors)), 9)
    print("where the time went (ms; service: means of its own histograms over the measured window):")
    _line(("conc", "svc batch", "svc prep", "svc infer", "svc in-app", "raw infer", "svc cpu/img",
           "raw cpu/img", "svc cores", "cli cores", "other"), 11)
    for row in result["levels"]:
        raw, svc = row["raw"], row["service"] or {}
        server = svc.get("server") or {}
        _line((str(row["concurrency"]), _f(server.get("mean_batch_size"), 2),
               _f(server.get("preprocess_ms"), 2), _f(server.get("inference_ms"), 2),
               _f(server.get("in_app_ms"), 2),
               _f(raw["stage_ms"]["run_per_batch"], 2), _f(svc.get("server_cpu_ms_per_image"), 2),
               _f(raw["cpu_ms_per_image"], 2), _f(svc.get("server_cores"), 2), _f(svc.get("client_cores"), 2),
               _f(max(raw["other_cores"], svc.get("other_cores") or 0.0), 2)), 11)
    for name, target in result["targets"].items():
        value = target["value"]
        shown = "-" if value is None else f"{value:.3f}" if name == "throughput" else f"{value:.2f} ms"
        print(f"target {name} at concurrency {target['concurrency']} ({target['target']}): {shown} "
              f"{target['status']}")
    for row in result["levels"]:
        svc = row["service"] or {}
        if svc.get("errors"):
            print(f"ERRORS at concurrency {row['concurrency']}: {svc['errors']}, e.g. "
                  f"{svc['error_samples'][:2]}")
        other = max(row["raw"]["other_cores"], svc.get("other_cores") or 0.0)
        if other > BUSY_WARNING:
            print(f"WARNING: other processes used {other:.2f} cores at concurrency {row['concurrency']}; "
                  "the numbers are contaminated")


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, default=str) + "\n"
    path = out_dir / f"{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path
