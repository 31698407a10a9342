"""optic's Prometheus metrics, beside BentoML's own on /metrics.

Built on first use, never at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in each worker after importing
the service module, and prometheus_client must see it to write the multiprocess files /metrics reads.
Labels stay bounded: model names and versions come from the repository, never from a request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.repository import LoadedModel

# Per-stage seconds: preprocessing a request of a few images, one batched session.run, postprocessing.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


@dataclass(frozen=True)
class Metrics:
    images: Any
    stage_seconds: Any
    batch_size: Any
    errors: Any
    model_info: Any
    evaluation_score: Any
    load_failures: Any
    api_key_requests: Any
    requests: Any
    load_seconds: Any
    switches: Any
    evaluation_jobs: Any

    def evaluation_scores(self, report: dict[str, Any]) -> None:
        """`optic_evaluation_score` of the evaluated version: its report's headline numbers."""
        model = report["model"]
        for metric, value in report["metrics"].get("summary", {}).items():
            self.evaluation_score.labels(model["name"], model["version"], metric).set(value)

    def model_live(self, model: LoadedModel, live: bool) -> None:
        """`optic_model_info` of a version: 1 while it serves (its load time observed as it starts), then 0."""
        meta = model.metadata
        self.model_info.labels(meta.name, meta.version, meta.task, model.provider, meta.sha256[:12]).set(int(live))
        if live:
            self.load_seconds.labels(meta.name).observe(model.load_seconds)


@functools.cache
def get_metrics() -> Metrics:
    import prometheus_client as prom

    return Metrics(
        images=prom.Counter("optic_images_total", "Images processed.", ["model", "version", "task"]),
        stage_seconds=prom.Histogram(
            "optic_stage_seconds",
            "Seconds spent per pipeline stage.",
            ["model", "version", "stage"],
            buckets=STAGE_BUCKETS,
        ),
        batch_size=prom.Histogram(
            "optic_batch_size", "Images per formed inference batch.", ["model", "version"], buckets=BATCH_BUCKETS
        ),
        errors=prom.Counter("optic_errors_total", "Refused or failed requests by reason.", ["endpoint", "reason"]),
        model_info=prom.Gauge(
            "optic_model_info",
            "A loaded model (value 1) and the execution provider it runs on.",
            ["model", "version", "task", "provider", "sha256"],
            multiprocess_mode="max",
        ),
        evaluation_score=prom.Gauge(
            "optic_evaluation_score",
            "Headline scores of the last evaluation of a model.",
            ["model", "version", "metric"],
            multiprocess_mode="mostrecent",
        ),
        load_failures=prom.Counter(
            "optic_model_load_failures_total",
            "Model versions found in the repository that could not be loaded.",
            ["model"],
        ),
        api_key_requests=prom.Counter(
            "optic_api_key_requests_total",
            "Requests let through by an API key, by the key's id (its name, or a hash prefix: never the key).",
            ["key_id"],
        ),
        requests=prom.Counter(
            "optic_requests_total",
            "Inference requests by protocol: http (optic's JSON routes), v2-http and v2-grpc (KServe v2).",
            ["model", "version", "protocol"],
        ),
        load_seconds=prom.Histogram(
            "optic_model_load_seconds",
            "Seconds to load a model version: read, verify its sha256, create and warm its sessions.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
        ),
        switches=prom.Counter(
            "optic_model_switches_total",
            "Version changes while serving (repository polling), by outcome: loaded, failed, retired.",
            ["model", "outcome"],
        ),
        evaluation_jobs=prom.Counter(
            "optic_evaluation_jobs_total",
            "Evaluation jobs by outcome: submitted, succeeded, failed, cancelled, interrupted.",
            ["outcome"],
        ),
    )
