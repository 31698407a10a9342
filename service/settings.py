"""The one settings object for the service and the offline evaluation.

Built, not imported: construct `Settings(...)` in tests, call `get_settings()` in the app.
Every field is read from the environment with the `OPTIC_` prefix (e.g. `OPTIC_MAX_BATCH_SIZE=32`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["auto", "cuda", "tensorrt", "cpu"]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTIC_", extra="ignore")

    model_repository: Path = Field(Path("models"), description="Folder of NAME/VERSION/model.{onnx,json}.")
    provider: Provider = Field("auto", description="ONNX Runtime execution provider; GPU ones never fall back.")
    workers: int = Field(1, ge=1, description="BentoML worker processes; each loads every model.")
    # 0 means "cores / workers", so the default never oversubscribes the machine.
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(1, ge=1)
    intra_op_spinning: Literal["auto", "true", "false"] = Field(
        "auto",
        description=(
            "ORT threads spin-wait for work: lower latency, but the cores stay busy. auto (CPU): models under 2 ms an "
            "image get a second, one-thread, non-spinning session for batches, so decoding gets the cores under load."
        ),
    )

    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch the batcher forms.")
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="Longest an image waits for company.")

    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused (decompression bombs).")
    max_images_per_request: int = Field(64, ge=1)
    max_archive_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="Largest uncompressed archive.")
    max_archive_members: int = Field(100_000, ge=1)
    # Multipart forms are parsed in memory; these bound what one body may make the parser hold.
    max_form_parts: int = Field(128, ge=1, le=100_000, description="Most parts (files and fields) one form may hold.")
    max_field_bytes: int = Field(
        64 * 1024, ge=64, description="Largest text field value (model, top_k, classes, ...) in bytes."
    )
    max_filename_length: int = Field(255, ge=1, le=4096, description="Longest uploaded file name, in UTF-8 bytes.")

    # Overload: a request is refused with 503 before any work when its images would wait too long.
    max_queue_images: int = Field(
        256, ge=1, description="Most images admitted per model and worker (waiting, decoding or running)."
    )
    latency_budget_ms: float = Field(
        2000.0,
        ge=1,
        description=(
            "What accepted requests' p99 should stay within: a request the backlog would keep waiting past half "
            "of it is refused at once (503 overloaded, Retry-After)."
        ),
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="Longest a request may go without an answer (504 after): bounds a synchronous /evaluate.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM: how long requests already accepted may take to finish."
    )

    api_keys: str = Field(
        "", description="Comma-separated API keys (NAME:KEY names a key in metrics); empty: no key needed."
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line (NAME:KEY or KEY).")
    protect_metrics: bool = Field(False, description="/metrics needs an API key too (when keys are set).")
    repository_poll_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="Poll the model repository this often and switch versions without a restart; 0: read it once.",
    )
    model_control: bool = Field(
        False,
        description="Load and unload models by calls (POST /v2/repository/models/NAME/load|unload, optic models).",
    )
    version_policy: str = Field(
        "all",
        pattern=r"^(all|latest(:[1-9][0-9]*)?|specific:[^,\s]+(,[^,\s]+)*)$",
        description="Versions served while polling: all, latest:N (the N newest that load) or specific:V1,V2.",
    )
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="The KServe v2 gRPC port (inference.GRPCInferenceService); 0: no gRPC."
    )
    grpc_host: str = Field(
        "0.0.0.0", description="The address gRPC listens on (`optic serve` sets it to its --host unless it is set)."
    )
    data_dir: Path = Field(
        Path("optic-data"), description="Evaluation jobs' SQLite state, uploads and reports (a volume in containers)."
    )
    datasets_root: Path | None = Field(
        None, description="Server folder that POST /evaluations `path` jobs may read under; unset: uploads only."
    )
    evaluation_concurrency: int = Field(1, ge=1, le=64, description="Evaluation jobs running at once (all workers).")
    evaluation_queue_length: int = Field(
        16, ge=0, le=100_000, description="Evaluation jobs waiting beyond those running; more are refused (503)."
    )
    default_top_k: int = Field(5, ge=1)
    warmup_runs: int = Field(1, ge=0)
    verify_sha256: bool = True

    @field_validator("model_repository", "data_dir", "datasets_root")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _refuse_oversubscription(self) -> Settings:
        cores = _cpu_count()
        if self.intra_op_threads and self.workers * self.intra_op_threads > cores:
            raise ValueError(
                f"OPTIC_WORKERS x OPTIC_INTRA_OP_THREADS = {self.workers} x {self.intra_op_threads} exceeds the "
                f"{cores} cores available; lower one of them (0 threads means cores / workers)"
            )
        return self

    @property
    def ort_intra_op_threads(self) -> int:
        return self.intra_op_threads or max(1, _cpu_count() // self.workers)


@functools.cache
def get_settings() -> Settings:
    return Settings()
