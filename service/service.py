"""The BentoML service: the process, its workers, probes and metrics; optic's own routes do the requests.

`bentoml serve service.service:Optic`. BentoML runs the workers and serves `/livez`, `/readyz`, `/metrics`
and the OpenAPI UI; the inference, evaluation and model routes are optic's own lean ASGI endpoints
(`service.http`), mounted into BentoML's app, and the guard middleware (API keys, drain, error shape) sits in
front of both. Requests carry a model name and parameters, so batching happens below the routes, per model,
in the pipeline's batcher.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

import bentoml

from service.auth import KeyChecker, load_keys
from service.http.app import OpticApp
from service.http.guard import Guard, GuardState
from service.http.openapi import build_spec
from service.http.routes import ROUTES
from service.metrics import get_metrics
from service.pipeline import Pipeline
from service.repository import ModelRepository
from service.settings import get_settings
from service.shutdown import Drain
from service.v2.rest import V2App

if TYPE_CHECKING:
    from service.evaluation.jobs import Jobs
    from service.v2.grpc_server import GrpcServer

log = logging.getLogger("bentoml.optic")  # under BentoML's logger: its handlers, format and level

ROUTES_APP = OpticApp(ROUTES)
GUARD = GuardState()
GUARD.optic_paths = ROUTES_APP.paths
GUARD.match = ROUTES_APP.match
V2 = V2App()  # the KServe v2 REST routes, under /v2
GUARD.v2 = V2


def optic_version() -> str:
    try:
        return package_version("optic")
    except PackageNotFoundError:
        return "unknown"


# Read here because BentoML takes them at class definition; documented with the other settings.
@bentoml.service(
    name="optic",
    workers=int(os.environ.get("OPTIC_WORKERS", "1")),
    # BentoML's timeout to a request's first answer byte. Its timer outlives the request (one per request, until it
    # fires): at 400 requests/s, 120 s of them hold ~17 MB; an hour's would hold ~0.5 GB.
    traffic={"timeout": float(os.environ.get("OPTIC_REQUEST_TIMEOUT_S", "120"))},
    # Per-request spans and access lines cost the event loop ~25% of its time on small models (bench/).
    tracing={"excluded_urls": [*sorted(p for p in ROUTES_APP.paths if "{" not in p), "/v2", "/evaluations"]},
    logging={"access": {"enabled": os.environ.get("OPTIC_ACCESS_LOG", "false").lower() in ("1", "true", "yes")}},
)
@bentoml.asgi_app(ROUTES_APP.starlette(), path="/")
class Optic:
    def __init__(self) -> None:
        self.settings = get_settings()
        self.metrics = get_metrics()
        self.ready = False
        self.repository = ModelRepository.load(self.settings)
        for failed in self.repository.failures:
            self.metrics.load_failures.labels(failed.split("/")[0]).inc()
        # Every model's switch counters from zero: increase() sees the first failure of a new version too.
        for name in {*self.repository.names(), *(f.split("/")[0] for f in self.repository.failures)}:
            for outcome in ("loaded", "failed", "retired"):
                self.metrics.switches.labels(name, outcome)
        for model in self.repository:
            meta = model.metadata
            self.metrics.model_live(model, True)
            log.info("serving %s (%s) on %s", model.key, meta.task, model.provider)
        self.pipeline = Pipeline(self.repository, self.settings, self.metrics)
        self.guard = GUARD
        self._arm_guard()
        ROUTES_APP.bind(self, GUARD.count_error)
        V2.bind(self)
        self.grpc = self._start_grpc()
        self.jobs = self._start_jobs()
        if self.settings.repository_poll_s > 0 or self.settings.model_control:
            from service.lifecycle import Lifecycle

            self.lifecycle = Lifecycle(self, self._swap)
            asyncio.get_running_loop().create_task(self.lifecycle.run())
        # Models, sessions and metadata live as long as the worker: out of the collector's sight, a full
        # collection stays short instead of pausing every request (and probe) while it walks them.
        gc.freeze()
        self.ready = True

    def _arm_guard(self) -> None:
        errors, by_key = self.metrics.errors, self.metrics.api_key_requests
        GUARD.count_error = lambda endpoint, reason: errors.labels(endpoint, reason).inc()
        GUARD.count_key = lambda key_id: by_key.labels(key_id).inc()
        GUARD.keys = KeyChecker(load_keys(self.settings.api_keys, self.settings.api_keys_file))
        GUARD.protect_metrics = self.settings.protect_metrics
        GUARD.drain = Drain(self.settings.shutdown_grace_s)
        GUARD.drain.install(asyncio.get_running_loop())
        names = self.repository.names() + [m.key for m in self.repository]
        base_spec = Optic.openapi_spec.asdict  # type: ignore[attr-defined]
        GUARD.docs = lambda: build_spec(base_spec(), ROUTES, optic_version(), names)
        if GUARD.keys.enabled:
            ids = ", ".join(k.key_id for k in GUARD.keys.keys)
            log.info("API keys required (%d keys: %s)", len(GUARD.keys.keys), ids)

    def _swap(self, repository: ModelRepository) -> None:
        """A new set of served versions, in one step: each request resolves its model against one set."""
        self.repository = repository
        self.pipeline.repository = repository
        V2.bind(self)

    def _start_grpc(self) -> GrpcServer | None:
        """The v2 gRPC server, bound now (a port that cannot be had stops the worker), serving on this loop."""
        if not self.settings.grpc_port:
            return None
        from service.v2.grpc_server import GrpcServer  # grpcio loads only where gRPC is served

        server = GrpcServer(self, V2, self.settings.grpc_host, self.settings.grpc_port, self.settings.max_body_bytes)
        asyncio.get_running_loop().create_task(server.start())
        GUARD.drain.before_exit.append(lambda: server.stop(1.0))
        return server

    def _start_jobs(self) -> Jobs | None:
        """Evaluation jobs, from OPTIC_DATA_DIR: a folder that cannot be used turns them off (503 naming it),
        not the server."""
        from service.evaluation.jobs import Jobs

        try:
            jobs = Jobs(self)
            jobs.start()
        except (OSError, sqlite3.Error) as exc:
            self.jobs_problem = f"OPTIC_DATA_DIR={self.settings.data_dir} cannot be used: {exc}"
            log.error("evaluation jobs are off: %s", self.jobs_problem)
            return None
        GUARD.drain.before_exit.append(jobs.stop)
        return jobs

    async def __is_ready__(self) -> bool:
        return self.ready and not GUARD.drain.draining and (self.grpc is None or self.grpc.started)

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.pipeline.shutdown()


Optic.add_asgi_middleware(Guard, state=GUARD)  # type: ignore[attr-defined]
