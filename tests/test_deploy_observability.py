"""deploy/prometheus and deploy/grafana against a real optic: promtool accepts the config and the rules
(and the rules' unit tests pass), every metric and label the dashboard and the alerts name exists on a
running optic's /metrics, and a real Prometheus scrapes optic, reads optic_model_info back and fires
the model-load-failure alert for a broken model version.

Prometheus and promtool come from apt (`apt-get install -y prometheus`); without them those tests skip.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_support import classify_and_check, digit_png, first_classifier
from tests.server import ROOT, Server, free_port, start_server

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "optic-dashboard.json"
METRIC = re.compile(r"\b((?:optic|bentoml)_[a-z0-9_]+)\b")
# Label names in `by (...)`, `without (...)`, `on (...)` and in selectors `{name="..."}`.
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
MATCHER = re.compile(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BROKEN_MODEL = "broken-for-alerts"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: apt-get install -y prometheus (the CI script does)")
    return path


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


# -- static checks ---------------------------------------------------------------------------------------
def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "model"}
    expressions = " ".join(dashboard_expressions())
    # What the dashboard promises to show.
    for metric in (
        "optic_images_total",
        "optic_stage_seconds_bucket",
        "optic_batch_size_bucket",
        "optic_errors_total",
        "optic_evaluation_score",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert metric in expressions, metric
    assert "by (stage, le)" in expressions and "by (endpoint, reason)" in expressions
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_promtool_checks_config_and_rules() -> None:
    promtool = _tool("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        result = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout + result.stderr


# -- against a running optic -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def optic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """optic on a copy of models/ plus a version that cannot load (for the load-failure metric)."""
    repository = tmp_path_factory.mktemp("observability") / "models"
    shutil.copytree(ROOT / "models", repository, ignore=shutil.ignore_patterns(".*"))
    broken = repository / BROKEN_MODEL / "1"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{}")
    server = start_server(repository, repository.parent / "serve.log")
    yield server
    server.stop()


def _dataset_zip(labels: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in labels[:2]:
            for i in range(2):
                archive.writestr(f"test/{label}/{i}.png", digit_png(i))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exercised(optic: Server) -> dict[str, set[str]]:
    """Drive every code path that makes a metric (a classification, a refused request, an evaluation),
    then return /metrics as {sample name: label names seen on it}."""
    model = first_classifier()
    classify_and_check(optic.url, model)
    refused = httpx.post(f"{optic.url}/classify", data={"model": model["name"]}, timeout=30)
    assert refused.status_code == 400, refused.text
    evaluated = httpx.post(
        f"{optic.url}/evaluate",
        data={"model": f"{model['name']}:{model['version']}"},
        files={"dataset": ("d.zip", _dataset_zip(model["labels"]), "application/zip")},
        timeout=120,
    )
    assert evaluated.status_code == 200, evaluated.text
    samples: dict[str, set[str]] = {}
    for line in httpx.get(f"{optic.url}/metrics", timeout=10).text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if match:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
            samples.setdefault(match.group(1), set()).update(labels)
    return samples


@pytest.mark.integration
@pytest.mark.parametrize("source", ["grafana", "alerts"])
def test_expressions_name_real_metrics_and_labels(source: str, exercised: dict[str, set[str]]) -> None:
    expressions = dashboard_expressions() if source == "grafana" else alert_expressions()
    problems = []
    for expr in expressions:
        names = set(METRIC.findall(expr))
        assert names or source == "alerts", f"no optic or bentoml metric in {expr}"
        missing = names - exercised.keys()
        if missing:
            problems.append(f"{sorted(missing)} not on /metrics: {expr}")
            continue
        known = set().union(*(exercised[n] for n in names)) | {"le", "job", "instance"}
        used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        used |= set(MATCHER.findall(expr))
        if used - known:
            problems.append(f"labels {sorted(used - known)} not on {sorted(names)}: {expr}")
    assert not problems, "\n".join(problems)


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(optic: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped prometheus.yml and alerts.yml, pointed at this optic, scraping and evaluating every second."""
    binary = _tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # 2 s: a busy 2-core CI machine can take over a second to answer /metrics.
    config["global"].update(scrape_interval="2s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.update(scrape_timeout="2s", static_configs=[{"targets": [optic.url.removeprefix("http://")]}])
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"prometheus exited:\n{log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _eventually(what: str, probe: Any, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout_s:.0f} s"
        time.sleep(1)


@pytest.mark.integration
def test_prometheus_scrapes_optic_and_fires_alerts(prometheus: str, optic: Server) -> None:
    model = first_classifier()
    series = _eventually("optic_model_info in Prometheus", lambda: _query(prometheus, "optic_model_info"))
    loaded = {(s["metric"]["model"], s["metric"]["version"]) for s in series}
    assert (model["name"], model["version"]) in loaded
    assert all(s["metric"]["job"] == "optic" and s["value"][1] == "1" for s in series)

    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert [r["health"] for g in groups for r in g["rules"]] == ["ok"] * sum(len(g["rules"]) for g in groups)

    def load_failure_alert() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "OpticModelLoadFailures"
            and a["labels"].get("model") == BROKEN_MODEL
            and a["state"] == "firing"
        ]

    _eventually("OpticModelLoadFailures firing for the broken model", load_failure_alert)
    firing = {a["labels"]["alertname"] for a in httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]}
    assert firing == {"OpticModelLoadFailures"}, f"a healthy optic raised {firing}"
