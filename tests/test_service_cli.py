"""`optic serve` and the training verbs fail early with one line a person can act on, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.server import ROOT

OPTIC = str(Path(sys.executable).parent / "optic")


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPTIC_")}
    return subprocess.run([OPTIC, "serve", "--port", "1"], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_bad_settings_stop_optic_serve_with_one_line_each() -> None:
    result = _serve({"OPTIC_MAX_BATCH_SIZE": "abc", "OPTIC_LATENCY_BUDGET_MS": "0", "OPTIC_PROVIDER": "tpu"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == sorted([
        "optic serve: OPTIC_MAX_BATCH_SIZE='abc': Input should be a valid integer, unable to parse string as an "
        "integer",
        "optic serve: OPTIC_LATENCY_BUDGET_MS='0': Input should be greater than or equal to 1",
        "optic serve: OPTIC_PROVIDER='tpu': Input should be 'auto', 'cuda', 'tensorrt' or 'cpu'",
    ])  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout


def test_oversubscription_and_short_keys_are_named() -> None:
    result = _serve({"OPTIC_WORKERS": str(os.cpu_count() or 1), "OPTIC_INTRA_OP_THREADS": "64"})
    assert result.returncode == 2 and "OPTIC_WORKERS x OPTIC_INTRA_OP_THREADS" in result.stderr
    result = _serve({"OPTIC_API_KEYS": "tooshort"})
    assert result.returncode == 2
    assert result.stderr.strip() == "optic serve: OPTIC_API_KEYS: an API key is shorter than 16 characters"


def test_training_verbs_name_the_extra_when_it_is_missing() -> None:
    # torch and torchvision hidden from this interpreter, as on a serving-only install.
    code = "import sys; sys.modules['torch'] = sys.modules['torchvision'] = None; " \
           "from service.cli import main; raise SystemExit(main(sys.argv[1:]))"
    for verb in ("data", "train", "export"):
        result = subprocess.run([sys.executable, "-c", code, verb, "--help"], capture_output=True, text=True,
                                timeout=60, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert f"optic {verb} needs the training extra" in result.stderr
        assert "pip install 'optic[train]'" in result.stderr and "torch, torchvision" in result.stderr
        assert "Traceback" not in result.stderr


def test_make_serve_honours_the_model_repository_setting(tmp_path: Path) -> None:
    def serve_line(env: dict[str, str]) -> str:
        env = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
        result = subprocess.run(["make", "--no-print-directory", "-n", "serve"], env=env, capture_output=True,
                                text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if " serve --host " in line)

    assert serve_line({**os.environ, "OPTIC_MODEL_REPOSITORY": str(tmp_path)}).endswith(f"--repository {tmp_path}")
    assert serve_line({k: v for k, v in os.environ.items() if k != "OPTIC_MODEL_REPOSITORY"}).endswith(
        "--repository models"
    )
