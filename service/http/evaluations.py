"""The evaluation jobs routes: submit (202 + Location), list, look at, cancel, and a job's report files.

Thin handlers over `service.evaluation.jobs.Jobs`; the shapes are the README's.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

from service.errors import InvalidParameter, OpticError, ShuttingDown, UnknownJob
from service.evaluation.jobs import STATES, Jobs, describe
from service.http.app import Answer, Call, Route, json_answer, upload_path
from service.http.forms import FileField, Form, text_field

if TYPE_CHECKING:
    from service.service import Optic

_ID = re.compile(r"^[0-9a-f]{16}$")
_TYPES = {".html": b"text/html; charset=utf-8", ".json": b"application/json", ".csv": b"text/csv; charset=utf-8",
          ".png": b"image/png"}  # fmt: skip


def _jobs(service: Optic) -> Jobs:
    jobs = getattr(service, "jobs", None)
    if jobs is None:
        problem = getattr(service, "jobs_problem", "evaluation jobs are not running")
        raise ShuttingDown(f"evaluation jobs are unavailable: {problem}", reason="unavailable")
    return jobs


def _row(jobs: Jobs, job_id: str) -> Any:
    row = jobs.store.get(job_id) if _ID.match(job_id) else None
    if row is None:
        raise UnknownJob(f"no evaluation job {job_id!r} (GET /evaluations lists them)")
    return row


async def submit(service: Optic, form: Form) -> Answer:
    jobs = _jobs(service)
    specs = [s.strip() for s in form.values.get("models", "").split(",") if s.strip()]
    if "model" in form.values:
        if specs:
            raise InvalidParameter("send `model` or `models`, not both")
        specs = [form.values["model"]]
    parts = form.parts("dataset")
    path_text = form.values.get("path")
    if bool(parts) == bool(path_text):
        raise InvalidParameter("send the data set as one archive in `dataset` or name a server folder in `path`")
    if len(parts) > 1:
        raise InvalidParameter(f"send exactly one archive in the field 'dataset' (got {len(parts)})")
    models = jobs.resolve_models(specs)
    path = jobs.resolve_path(path_text) if path_text else None
    doc = await jobs.submit(models, archive=upload_path(parts[0]) if parts else None, path=path)
    location = doc["links"]["self"].encode()
    return json_answer(doc, 202, headers=[(b"location", location)])


async def list_jobs(service: Optic, call: Call) -> Answer:
    jobs = _jobs(service)
    query = call.query
    state = query.get("state")
    if state is not None and state not in STATES:
        raise InvalidParameter(f"state: one of {', '.join(STATES)}, not {state!r}")
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise InvalidParameter(f"limit: a whole number from 1 to 1000, not {limit_text!r}")
    rows = await asyncio.to_thread(jobs.store.recent, state, int(limit_text))
    return json_answer({"evaluations": [describe(r, full=False) for r in rows]})


async def show(service: Optic, call: Call) -> Answer:
    jobs = _jobs(service)
    row = await asyncio.to_thread(_row, jobs, call.params["id"])
    return json_answer(describe(row))


async def cancel(service: Optic, call: Call) -> Answer:
    jobs = _jobs(service)
    job_id = call.params["id"]
    state = await asyncio.to_thread(jobs.store.cancel, job_id)
    if state == "cancelled":
        service.metrics.evaluation_jobs.labels("cancelled").inc()
    row = await asyncio.to_thread(_row, jobs, job_id)
    return json_answer(describe(row), 200 if state == "cancelled" else 202)


async def _artifact(service: Optic, job_id: str, name: str) -> Answer:
    jobs = _jobs(service)
    row = await asyncio.to_thread(_row, jobs, job_id)
    if row["state"] != "succeeded":
        raise OpticError(
            f"evaluation job {job_id} is {row['state']}: its report exists once it has succeeded",
            reason="not_finished", status_code=409,
        )  # fmt: skip
    artifacts = json.loads(row["artifacts"] or "{}")
    if name not in artifacts:
        raise OpticError(f"evaluation job {job_id} has no {name!r}", reason="not_found", status_code=404)
    path = jobs.job_dir(job_id) / "report" / artifacts[name]
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise OpticError(f"evaluation job {job_id}'s {name} is gone from the server", reason="not_found",
                         status_code=404) from None  # fmt: skip
    content_type = _TYPES.get(path.suffix, b"application/octet-stream")
    headers = [(b"cache-control", b"private, max-age=3600")]
    if path.suffix == ".csv":
        headers.append((b"content-disposition", f'attachment; filename="{job_id}-images.csv"'.encode()))
    return Answer(body, content_type=content_type, headers=headers)


async def report(service: Optic, call: Call) -> Answer:
    return await _artifact(service, call.params["id"], "report.html")


async def images_json(service: Optic, call: Call) -> Answer:
    return await _artifact(service, call.params["id"], "images.json")


async def images_csv(service: Optic, call: Call) -> Answer:
    return await _artifact(service, call.params["id"], "images.csv")


async def plot(service: Optic, call: Call) -> Answer:
    return await _artifact(service, call.params["id"], f"plots/{call.params['name']}")


DATASET = FileField("dataset", "zip, tar or tar.gz of a data set in the models' task format (or send `path`).",
                    many=False, required=False)  # fmt: skip
_JOB = {"200": {"description": "The job: state, progress, error, result, links."}}

EVALUATION_ROUTES = [
    Route("/evaluations", "POST", "Submit an evaluation job",
          "Evaluates one model, or several side by side, on an uploaded archive or a server folder, in the "
          "background (live requests first). 202 with the job and its Location.", submit,
          (DATASET,), (
              text_field("model", "Model name or name:version."),
              text_field("models", "Several models to compare on the same data: a,b (name or name:version).",
                         max_length=4096),
              text_field("path", "A data set folder under OPTIC_DATASETS_ROOT, instead of an upload.",
                         max_length=4096),
          ),
          {"202": {"description": "The job, queued; Location: /evaluations/ID."}},
          spool=frozenset({"dataset"}), large_body=True),
    Route("/evaluations", "GET", "List evaluation jobs", "Newest first; ?state=running&limit=100.", list_jobs,
          responses={"200": {"description": "evaluations: the jobs, without their results."}}),
    Route("/evaluations/{id}", "GET", "An evaluation job", "State, progress (done, total, images per second, ETA), "
          "error, and the result once it has succeeded.", show, responses=_JOB),
    Route("/evaluations/{id}", "DELETE", "Cancel an evaluation job",
          "A queued job is cancelled at once (200); a running one stops at its next chunk (202).", cancel,
          responses=_JOB),
    Route("/evaluations/{id}/report", "GET", "A job's HTML report",
          "One self-contained page: metrics, plots, errors to look at, comparisons.", report,
          responses={"200": {"description": "text/html", "content": {"text/html": {}}}}),
    Route("/evaluations/{id}/images.json", "GET", "A job's per-image results", "JSON, per model.", images_json,
          responses={"200": {"description": "per-image results"}}),
    Route("/evaluations/{id}/images.csv", "GET", "A job's per-image results as CSV", "One row per image or "
          "detection.", images_csv, responses={"200": {"description": "text/csv", "content": {"text/csv": {}}}}),
    Route("/evaluations/{id}/plots/{name}", "GET", "A job's plot", "PNG; the job's links list them.", plot,
          responses={"200": {"description": "image/png", "content": {"image/png": {}}}}),
]  # fmt: skip
