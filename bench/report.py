"""Summaries, the printed tables, the targets, and the JSON results file.

Targets (from the request-path issue), at concurrency 16 and 1: the classifier at >= 0.85 x raw throughput,
within 1.0 ms of raw's p50 alone, and at least the peer's throughput and at most its p50; every heavier
model at >= 0.9 x raw. A miss prints MISS; it never fails the run.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import BUSY_WARNING, CpuWindow
from bench.raw import RawLevel
from bench.wrk import WrkResult

# (concurrency, service / raw) by task: a tiny classifier is all request path; heavier models are not.
THROUGHPUT_TARGET = {"classification": (16, 0.85)}
THROUGHPUT_TARGET_HEAVY = (16, 0.9)
OVERHEAD_TARGET = (1, 1.0)  # (concurrency, p50 overhead in ms over raw): the classifier


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


def service_summary(result: WrkResult, probes: tuple[Any, Any], model_labels: str, endpoint: str) -> dict[str, Any]:
    """wrk's numbers (one image per request), plus the server's CPU and, for optic, its own histograms."""
    start, end = probes
    summary: dict[str, Any] = {
        "images_per_s": result.ok_per_s, "requests": result.ok, "seconds": result.seconds,
        "p50_ms": result.latency_us["p50"] / 1000, "p90_ms": result.latency_us["p90"] / 1000,
        "p99_ms": result.latency_us["p99"] / 1000, "errors": result.errors,
        "client_cores": result.client_cpu_s / result.seconds if result.seconds else 0.0,
    }
    if start is None or end is None:
        return summary
    elapsed = end["time"] - start["time"]
    server_s = end["server_cpu_s"] - start["server_cpu_s"]
    cpu = CpuWindow(elapsed, end["machine_s"] - start["machine_s"], server_s + result.client_cpu_s)
    summary.update(server_cores=server_s / elapsed, other_cores=cpu.other_cores,
                   server_cpu_ms_per_image=server_s / max(1, result.ok) * 1000)
    if not end["metrics"]:
        return summary

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


def level_row(concurrency: int, raw: dict[str, Any], service: dict[str, Any] | None,
              peer: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": concurrency, "raw": raw, "service": service, "peer": peer,
                           "throughput_ratio": None, "p50_overhead_ms": None, "peer_ratio": None,
                           "vs_peer": None}
    if service and raw["images_per_s"]:
        row["throughput_ratio"] = service["images_per_s"] / raw["images_per_s"]
        row["p50_overhead_ms"] = service["p50_ms"] - raw["p50_ms"]
    if peer and raw["images_per_s"]:
        row["peer_ratio"] = peer["images_per_s"] / raw["images_per_s"]
        if service and peer["images_per_s"]:
            row["vs_peer"] = service["images_per_s"] / peer["images_per_s"]
    return row


def targets(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    by_c = {r["concurrency"]: r for r in rows}
    tc, ratio = THROUGHPUT_TARGET.get(task, THROUGHPUT_TARGET_HEAVY)
    got_ratio = by_c.get(tc, {}).get("throughput_ratio")
    found: dict[str, Any] = {
        "throughput": {"concurrency": tc, "target": f">= {ratio} x raw", "value": got_ratio,
                       "status": _status(got_ratio, got_ratio is not None and got_ratio >= ratio)},
    }
    if task not in THROUGHPUT_TARGET:
        return found
    oc, overhead = OVERHEAD_TARGET
    got_overhead = by_c.get(oc, {}).get("p50_overhead_ms")
    found["p50_overhead"] = {"concurrency": oc, "target": f"<= {overhead} ms over raw", "value": got_overhead,
                             "status": _status(got_overhead, got_overhead is not None and got_overhead <= overhead)}
    vs_peer = by_c.get(tc, {}).get("vs_peer")
    found["vs_peer_throughput"] = {"concurrency": tc, "target": ">= 1.0 x peer", "value": vs_peer,
                                   "status": _status(vs_peer, vs_peer is not None and vs_peer >= 1.0)}
    one = by_c.get(oc, {})
    p50_gap = (one["service"]["p50_ms"] - one["peer"]["p50_ms"]) if one.get("service") and one.get("peer") else None
    found["vs_peer_p50"] = {"concurrency": oc, "target": "<= the peer's p50 (ms, optic - peer)", "value": p50_gap,
                            "status": _status(p50_gap, p50_gap is not None and p50_gap <= 0.0)}
    return found


def _status(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else "PASS" if ok else "MISS"


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _line(cells: tuple[str, ...], width: int) -> None:
    print(" | ".join(f"{c:>{width}}" for c in cells))


def print_model(result: dict[str, Any]) -> None:
    print(f"\n== {result['model']} ({result['task']}, {result['endpoint']}, provider {result['provider']}, "
          f"batch cap {result['batch_cap']}) ==")
    _line(("conc", "raw img/s", "optic", "optic/raw", "peer", "peer/raw", "optic/peer", "raw p50", "optic p50",
           "peer p50", "optic p99", "peer p99", "errors"), 9)
    for row in result["levels"]:
        raw, svc, peer = row["raw"], row["service"] or {}, row.get("peer") or {}
        errors = sum((svc.get("errors") or {}).values()) + sum((peer.get("errors") or {}).values())
        _line((str(row["concurrency"]), _f(raw["images_per_s"]), _f(svc.get("images_per_s")),
               _f(row["throughput_ratio"], 3), _f(peer.get("images_per_s")), _f(row.get("peer_ratio"), 3),
               _f(row.get("vs_peer"), 2), _f(raw["p50_ms"], 2), _f(svc.get("p50_ms"), 2), _f(peer.get("p50_ms"), 2),
               _f(svc.get("p99_ms"), 2), _f(peer.get("p99_ms"), 2), str(errors)), 9)
    print("where optic's time went (ms; means of its own histograms over the measured window):")
    _line(("conc", "batch", "prep", "infer", "in-app", "raw infer", "cpu/img", "raw cpu/img", "optic cores",
           "peer cores", "wrk cores", "other"), 11)
    for row in result["levels"]:
        raw, svc, peer = row["raw"], row["service"] or {}, row.get("peer") or {}
        server = svc.get("server") or {}
        _line((str(row["concurrency"]), _f(server.get("mean_batch_size"), 2),
               _f(server.get("preprocess_ms"), 2), _f(server.get("inference_ms"), 2),
               _f(server.get("in_app_ms"), 2), _f(raw["stage_ms"]["run_per_batch"], 2),
               _f(svc.get("server_cpu_ms_per_image"), 2), _f(raw["cpu_ms_per_image"], 2),
               _f(svc.get("server_cores"), 2), _f(peer.get("server_cores"), 2), _f(svc.get("client_cores"), 3),
               _f(max(raw["other_cores"], svc.get("other_cores") or 0.0, peer.get("other_cores") or 0.0), 2)), 11)
    for name, target in result["targets"].items():
        value = target["value"]
        shown = "-" if value is None else f"{value:.3f}" if "throughput" in name else f"{value:.2f} ms"
        print(f"target {name} at concurrency {target['concurrency']} ({target['target']}): {shown} "
              f"{target['status']}")
    for row in result["levels"]:
        for arm in ("service", "peer"):
            got = row.get(arm) or {}
            if got.get("errors"):
                print(f"ERRORS ({arm}) at concurrency {row['concurrency']}: {got['errors']}")
        other = max(row["raw"]["other_cores"], *((row.get(a) or {}).get("other_cores") or 0.0
                                                  for a in ("service", "peer")))
        if other > BUSY_WARNING:
            print(f"WARNING: other processes used {other:.2f} cores at concurrency {row['concurrency']}; "
                  "the numbers are contaminated")


def write_json(report: dict[str, Any], out_dir: Path, prefix: str = "") -> Path:
    """`out_dir/PREFIX<UTC stamp>.json`; the main bench (no prefix) also writes latest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, default=str) + "\n"
    path = out_dir / f"{prefix}{stamp}.json"
    path.write_text(text)
    if not prefix:
        (out_dir / "latest.json").write_text(text)
    return path
