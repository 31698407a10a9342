"""`python -m bench.soak`: optic for a long while at a share of its capacity: every answer a 200, memory flat.

1. Starts the real `bentoml serve` and measures capacity: wrk, 16 connections, one image per request.
2. Paces wrk to `--share` of it (each connection pauses between requests; the pause is calibrated).
3. Runs `--minutes` minutes in one-minute wrk runs, sampling the server's resident memory (every process of
   its tree) after each, and prints and writes (bench/results/soak-*.json) the errors and the RSS growth.

Targets: 0 errors, RSS growth under 10 % from the first minute (after warm-up) to the last.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.http_load import CONTENT_TYPE, multipart_body
from bench.images import make_images
from bench.machine import machine_info
from bench.report import write_json
from bench.server import HOST, Server, running_server
from bench.wrk import BodySet, run_wrk

RESULTS = Path(__file__).resolve().parent / "results"


def rss_bytes(server: Server) -> int:
    total = 0
    for pid in server.processes():
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits:1")
    parser.add_argument("--endpoint", default="/classify")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.7, help="of the measured capacity (default 0.7)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    images = make_images(32)
    with BodySet([multipart_body(i, args.model) for i in images]) as bodies, \
            running_server(args.repository) as server:
        url = f"http://{HOST}:{server.port}{args.endpoint}"
        run_wrk(url, bodies, CONTENT_TYPE, connections=args.connections, seconds=3)
        capacity = run_wrk(url, bodies, CONTENT_TYPE, connections=args.connections, seconds=10).ok_per_s
        target = args.share * capacity
        delay_ms = max(0.0, args.connections / target * 1000)
        for _ in range(6):  # calibrate the pause: a connection's cycle is its latency plus the pause
            got = run_wrk(url, bodies, CONTENT_TYPE, connections=args.connections, seconds=5, delay_ms=delay_ms)
            if abs(got.ok_per_s - target) / target < 0.02:
                break
            cycle_ms = args.connections / got.ok_per_s * 1000  # what one connection took per request
            delay_ms = max(0.0, delay_ms + args.connections / target * 1000 - cycle_ms)
        print(f"capacity {capacity:.1f} img/s; soaking at {target:.1f} img/s ({args.share:.0%}), "
              f"{args.connections} connections pausing {delay_ms:.1f} ms")
        minutes: list[dict[str, Any]] = []
        for minute in range(max(1, round(args.minutes))):
            result = run_wrk(url, bodies, CONTENT_TYPE, connections=args.connections, seconds=60, delay_ms=delay_ms)
            row = {"minute": minute + 1, "images_per_s": result.ok_per_s, "ok": result.ok, "errors": result.errors,
                   "p50_ms": result.latency_us["p50"] / 1000, "p99_ms": result.latency_us["p99"] / 1000,
                   "rss_bytes": rss_bytes(server), "server_alive": server.process.poll() is None}
            minutes.append(row)
            print(f"  minute {row['minute']:>2}: {row['images_per_s']:7.1f} img/s  p50 {row['p50_ms']:6.2f} ms  "
                  f"p99 {row['p99_ms']:7.2f} ms  errors {sum(result.errors.values())}  "
                  f"RSS {row['rss_bytes'] / 2**20:7.1f} MiB")
    errors = sum(sum(m["errors"].values()) for m in minutes)
    growth = (minutes[-1]["rss_bytes"] - minutes[0]["rss_bytes"]) / minutes[0]["rss_bytes"]
    report = {
        "command": "python -m bench.soak " + " ".join(argv or []), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(), "model": args.model, "capacity_images_per_s": capacity,
        "target_images_per_s": target, "share": args.share, "delay_ms": delay_ms, "minutes": minutes,
        "errors": errors, "rss_growth": growth,
        "targets": {"errors": "PASS" if errors == 0 else "MISS", "rss_growth_under_10pct": "PASS" if growth < 0.10
                    else "MISS"},
    }
    print(f"errors {errors} ({report['targets']['errors']}); RSS growth from minute 1 to {len(minutes)}: "
          f"{growth:+.1%} ({report['targets']['rss_growth_under_10pct']})")
    path = write_json(report, args.output_dir, prefix="soak-")
    print(f"wrote {path}")
    return 0 if errors == 0 and growth < 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
