"""`optic`: data, train, export (the `train` extra, torch) and eval, serve (serving only, no torch)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

TRAINING_COMMANDS = ("data", "train", "export")
# What the `train` extra brings (pyproject.toml); each is looked up, not imported, before training starts.
TRAINING_MODULES = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib", "skimage", "tqdm")


def _missing_training_modules() -> list[str]:
    import importlib.util

    missing = []
    for name in TRAINING_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module entry that is None (blocked)
            found = False
        if not found:
            missing.append(name)
    return missing


def settings_problems(overrides: dict[str, Any] | None = None) -> list[str]:
    """Every invalid OPTIC_* value, one line each: the variable, what it was given, and the rule it breaks."""
    from pydantic import ValidationError

    from service.auth import ApiKeyError, load_keys
    from service.settings import Settings

    try:
        settings = Settings(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if field:
                problems.append(f"OPTIC_{field.upper()}={error.get('input')!r}: {message}")
            else:
                problems.append(message)
        return problems
    try:
        load_keys(settings.api_keys, settings.api_keys_file)
    except ApiKeyError as exc:
        return [str(exc)]
    return []


def _eval(args: argparse.Namespace) -> int:
    from service.errors import OpticError
    from service.evaluation.archive import extract_archive
    from service.evaluation.runner import Shard, evaluate_offline, predictions_document, save_predictions
    from service.repository import ModelRepository
    from service.settings import Settings

    try:
        shard = Shard.parse(args.shard) if args.shard else Shard()
    except ValueError as exc:
        print(f"optic eval: {exc}", file=sys.stderr)
        return 2
    if shard.count > 1 and not args.save_predictions:
        print("optic eval: --shard needs --save-predictions FILE (then: optic eval merge FILES...)", file=sys.stderr)
        return 2
    overrides = {"model_repository": args.repository} if args.repository else {}
    settings = Settings(**overrides)
    data = Path(args.data)
    workdir = None
    try:
        only = args.model.partition(":")[0]  # that model's versions alone: the others are not loaded
        repository = ModelRepository.load(settings.model_copy(update={"warmup_runs": 0}), strict=False, only=only)
        model = repository.get(args.model)
        if data.is_file():
            workdir = Path(tempfile.mkdtemp(prefix="optic-eval-"))
            data = extract_archive(
                data, workdir, max_bytes=settings.max_archive_bytes, max_members=settings.max_archive_members
            )
        evaluation = evaluate_offline(
            model, data, max_pixels=settings.max_image_pixels, batch_size=settings.max_batch_size, shard=shard
        )
    except OpticError as exc:
        print(f"optic eval: {exc.message}", file=sys.stderr)
        return 2
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.save_predictions:
        save_predictions(Path(args.save_predictions), predictions_document(model, evaluation, shard))
    return _eval_output(args, evaluation.report, evaluation.images)


def _eval_output(args: argparse.Namespace, report: dict[str, Any], images: list[dict[str, Any]]) -> int:
    """The report: to --output, its HTML, plots and per-image results to --report, a summary printed."""
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.report:
        from service.evaluation.report import write_report

        written = write_report({"evaluations": [report], "comparison": None}, [images], Path(args.report))
        print(f"report: {Path(args.report) / written.get('report.html', 'report.html')}", file=sys.stderr)
    summary = report["metrics"].get("summary", {})
    brief = {"model": report["model"], "dataset": report["dataset"], "summary": summary}
    if "thresholds" in report:
        brief["thresholds"] = report["thresholds"]
    print(text if args.full else json.dumps(brief, indent=2))
    return 0


def _eval_merge(argv: list[str]) -> int:
    from service.evaluation.runner import merge_predictions

    parser = argparse.ArgumentParser(
        prog="optic eval merge", description="merge `optic eval --shard I/N --save-predictions` files into one report"
    )
    parser.add_argument("files", nargs="+", type=Path, help="every shard's predictions file")
    _eval_report_options(parser)
    args = parser.parse_args(argv)
    try:
        documents = [json.loads(path.read_text()) for path in args.files]
        evaluation = merge_predictions(documents)
    except (OSError, ValueError) as exc:
        print(f"optic eval merge: {exc}", file=sys.stderr)
        return 2
    return _eval_output(args, evaluation.report, evaluation.images)


def _eval_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="write the full JSON report here")
    parser.add_argument("--report", help="write the HTML report, plots and per-image results (JSON, CSV) here")
    parser.add_argument("--full", action="store_true", help="print the full report, not the summary")


def _export_thresholds(argv: list[str]) -> int:
    """`optic export --thresholds-from REPORT`: a new version with the report's per-class thresholds."""
    from service.evaluation.thresholds import publish_thresholds

    parser = argparse.ArgumentParser(
        prog="optic export --thresholds-from",
        description="publish the evaluated version again, as a new version whose model.json carries the report's "
        "per-class F1-maximizing score thresholds (used by /detect and /segment when a request names none)",
    )
    parser.add_argument("--thresholds-from", required=True, type=Path, dest="report",
                        help="optic eval --output JSON, or an evaluation job's JSON (GET /evaluations/ID)")  # fmt: skip
    parser.add_argument("--model", help="NAME:VERSION, where the report compares several models")
    parser.add_argument("--version", help="the new version (default: one more than the largest)")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("OPTIC_MODEL_REPOSITORY", "models")))
    args = parser.parse_args(argv)
    try:
        folder = publish_thresholds(args.report, args.repository, model=args.model, version=args.version)
    except (OSError, ValueError) as exc:
        print(f"optic export: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


def _preflight_provider(repository: Path) -> str | None:
    """An explicit GPU provider that cannot be had stops start-up here, with its message: inside
    `bentoml serve` a failing worker is only restarted, again and again."""
    from service.runtime import ProviderUnavailable, create_session
    from service.settings import Settings

    settings = Settings(model_repository=repository)
    if settings.provider not in ("cuda", "tensorrt"):
        return None
    first = next(iter(sorted(repository.glob("*/*/model.onnx"))), None)
    if first is None:
        return None
    try:
        create_session(first, settings)
    except ProviderUnavailable as exc:
        return str(exc)
    return None


def _serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.repository:
        env["OPTIC_MODEL_REPOSITORY"] = str(Path(args.repository).resolve())
    problems = settings_problems({"model_repository": env["OPTIC_MODEL_REPOSITORY"]} if args.repository else None)
    if problems:
        for problem in problems:
            print(f"optic serve: {problem}", file=sys.stderr)
        return 2
    provider_problem = _preflight_provider(Path(env.get("OPTIC_MODEL_REPOSITORY", "models")))
    if provider_problem:
        print(f"optic serve: {provider_problem}", file=sys.stderr)
        return 3
    env.setdefault("OPTIC_GRPC_HOST", args.host)  # gRPC listens where HTTP does, unless told otherwise
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    command = [bentoml, "serve", "service.service:Optic", "--host", args.host, "--port", str(args.port)]
    os.execvpe(command[0], command, env)
    return 0  # not reached


def _models(args: argparse.Namespace) -> int:
    """`optic models list|load|unload`: the repository index and Triton's load and unload calls, over HTTP."""
    import json
    import urllib.error
    import urllib.request

    if args.action != "list" and not args.name:
        print(f"optic models {args.action}: name the model", file=sys.stderr)
        return 2
    path = "/v2/repository/index" if args.action == "list" else f"/v2/repository/models/{args.name}/{args.action}"
    request = urllib.request.Request(args.url.rstrip("/") + path, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    key = args.api_key or os.environ.get("OPTIC_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        print(f"optic models {args.action}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"optic models {args.action}: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.action == "list":
        for entry in body:
            reason = f"  {entry['reason']}" if entry.get("reason") else ""
            print(f"{entry['name']:<32} {entry['version']:<10} {entry['state']}{reason}")
    else:
        print(f"{body['model']}: {body['state']} {' '.join(body['versions'])}".rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in TRAINING_COMMANDS:
        sub.add_parser(name, add_help=False, help=f"{name} (needs the 'train' extra; optic {name} --help)")
    ev = sub.add_parser(
        "eval",
        help="evaluate a repository model on a data set folder or archive (optic eval merge FILES: merge shards)",
    )
    ev.add_argument("--model", required=True, help="model name or name:version")
    ev.add_argument("--data", required=True, help="data set folder, or a zip / tar.gz of one")
    ev.add_argument("--repository", help="model repository (default: OPTIC_MODEL_REPOSITORY or ./models)")
    _eval_report_options(ev)
    ev.add_argument("--shard", help="I/N: evaluate images i with i %% N == I only (with --save-predictions)")
    ev.add_argument("--save-predictions", help="write this run's per-image predictions (for optic eval merge)")
    ev.set_defaults(func=_eval)
    sv = sub.add_parser("serve", help="serve the model repository over HTTP (bentoml serve)")
    sv.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    sv.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    sv.add_argument("--repository", help="model repository (default: OPTIC_MODEL_REPOSITORY or ./models)")
    sv.set_defaults(func=_serve)
    md = sub.add_parser("models", help="list, load or unload the models of a running optic (OPTIC_MODEL_CONTROL)")
    md.add_argument("action", choices=["list", "load", "unload"])
    md.add_argument("name", nargs="?", help="the model (load, unload)")
    md.add_argument("--url", default=os.environ.get("OPTIC_URL", "http://127.0.0.1:3000"))
    md.add_argument("--api-key", help="when the server needs one (default: OPTIC_API_KEY)")
    md.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a load")
    md.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "merge"]:
        return _eval_merge(argv[2:])
    if argv[:1] == ["export"] and any(a == "--thresholds-from" or a.startswith("--thresholds-from=") for a in argv):
        return _export_thresholds(argv[1:])  # needs no torch: the graph is copied as it is
    if argv and argv[0] in TRAINING_COMMANDS:
        missing = _missing_training_modules()
        if missing:
            print(
                f"optic {argv[0]} needs the training extra, which is not installed (missing: {', '.join(missing)}): "
                "pip install 'optic[train]' (or `make test`, which installs it in .venv)",
                file=sys.stderr,
            )
            return 2
        from training.cli import main as training_main

        return training_main(argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
