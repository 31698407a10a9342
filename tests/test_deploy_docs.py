"""The operators' README stays true: its settings table is what deploy/settings_table.py generates from
`service.settings.Settings`, and the Dockerfile's defaults it quotes are the Dockerfile's.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.server import ROOT

SCRIPT = ROOT / "deploy" / "settings_table.py"
CANDIDATES = (ROOT / "README.md",)


def _settings_table_module() -> Any:
    spec = importlib.util.spec_from_file_location("settings_table", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents() -> list[Path]:
    begin = _settings_table_module().BEGIN
    found = [p for p in CANDIDATES if p.is_file() and begin in p.read_text()]
    assert found, f"no README holds the settings table markers ({', '.join(str(p) for p in CANDIDATES)})"
    return found


def test_settings_table_is_generated_from_settings() -> None:
    module = _settings_table_module()
    for document in _documents():
        text = document.read_text()
        assert module.with_table(text) == text, (
            f"{document.relative_to(ROOT)}'s settings table is stale: python deploy/settings_table.py --write "
            f"{document.relative_to(ROOT)}"
        )


def test_every_setting_is_documented() -> None:
    from service.settings import Settings

    table = _settings_table_module().settings_table()
    for name in Settings.model_fields:
        assert f"`OPTIC_{name.upper()}`" in table
    assert all(row.rstrip(" |").split("|")[-1].strip() for row in table.splitlines()[2:]), "a setting has no meaning"


def test_script_prints_the_table() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.startswith("| variable | default |")


def test_build_args_quoted_in_the_readme_match_the_dockerfile() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    for document in _documents():
        text = document.read_text()
        for name in ("BASE_IMAGE", "ORT_PACKAGE"):
            assert f"| `{name}` | `{args[name]}` |" in text, f"{document.name}: {name} default is {args[name]}"
