"""A finished job's report: one self-contained HTML page, its PNG charts, and the per-image results.

The page embeds its charts as data: URIs and fetches nothing, so it can be mailed or opened offline; a
Content-Security-Policy forbids scripts and remote resources besides. Every string that came with the data
(file names, labels, model names) is HTML-escaped: archives come from users.
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from service.evaluation import plots

TASKS = ("classification", "detection", "instance-segmentation", "segmentation")
ERROR_ROWS = 100  # rows of each error-analysis table; images.csv holds them all
Plot = tuple[str, str, bytes]  # artifact name, caption, PNG bytes


def write_report(result: dict[str, Any], images: list[list[dict[str, Any]]], folder: Path) -> dict[str, str]:
    """Write `folder`/report.html, plots/*.png, images.json and images.csv; {artifact name: path relative to
    `folder`} for every file written. `images[i]` is the per-image list of `result["evaluations"][i]`."""
    evaluations = result["evaluations"]
    if len(images) != len(evaluations):
        raise ValueError(f"{len(evaluations)} evaluations but {len(images)} per-image lists")
    for evaluation in evaluations:
        if evaluation["model"]["task"] not in TASKS:
            raise ValueError(f"no report for task {evaluation['model']['task']!r}; known: {', '.join(TASKS)}")
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    evaluation_charts = [list(evaluation_plots(i, e)) for i, e in enumerate(evaluations)]
    comparison = result.get("comparison")
    comparison_charts = list(comparison_plots(comparison)) if comparison else []
    written = {}
    for name, _, png in [*(p for charts in evaluation_charts for p in charts), *comparison_charts]:
        (folder / name).write_bytes(png)
        written[name] = name
    write_images_json(evaluations, images, folder / "images.json")
    write_images_csv(evaluations, images, folder / "images.csv")
    page = render_html(result, images, evaluation_charts, comparison_charts)
    (folder / "report.html").write_text(page, encoding="utf-8")
    return {"report.html": "report.html", "images.json": "images.json", "images.csv": "images.csv", **written}


def model_name(evaluation: dict[str, Any]) -> str:
    return f"{evaluation['model']['name']}:{evaluation['model']['version']}"


def _score(value: Any) -> float | None:
    """A metric value that can be shown: None, NaN and COCO's -1 (a class without ground truth) cannot."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _labels(per_class: Sequence[dict[str, Any]], size: int) -> list[str]:
    by_id = {c.get("class_id", k): str(c["label"]) for k, c in enumerate(per_class)}
    return [by_id.get(k, str(k)) for k in range(size)]


# --- charts -------------------------------------------------------------------------------------------


def evaluation_plots(index: int, evaluation: dict[str, Any]) -> Iterator[Plot]:
    task, metrics, who = evaluation["model"]["task"], evaluation["metrics"], model_name(evaluation)
    if task in ("classification", "segmentation") and metrics.get("confusion_matrix"):
        matrix = metrics["confusion_matrix"]
        unit = "images" if task == "classification" else "pixels"
        labels = _labels(metrics.get("per_class", []), len(matrix))
        png = plots.confusion_png(matrix, labels, f"{who} - confusion matrix ({unit})", unit=unit)
        yield f"plots/{index}-confusion.png", f"Confusion matrix ({unit}; rows: truth, shading: share of row)", png
    if task == "segmentation" and metrics.get("per_class"):
        per_class = metrics["per_class"]
        series = [("IoU", [c.get("IoU") for c in per_class])]
        png = plots.bar_png([c["label"] for c in per_class], series, f"{who} - per-class IoU", axis_label="IoU")
        yield f"plots/{index}-iou.png", "Per-class IoU", png
    if task == "detection":
        yield from _detection_plots(index, who, metrics, "")
    if task == "instance-segmentation":
        for kind in ("segm", "bbox"):
            yield from _detection_plots(index, who, metrics.get(kind) or {}, kind)


def _detection_plots(index: int, who: str, metrics: dict[str, Any], kind: str) -> Iterator[Plot]:
    per_class = metrics.get("per_class") or []
    if not per_class:
        return
    prefix = f"{kind}-" if kind else ""
    what = {"segm": " (masks)", "bbox": " (boxes)"}.get(kind, "")
    labels = [c["label"] for c in per_class]
    series = [("AP (IoU .50:.95)", [c.get("AP") for c in per_class]), ("AP50", [c.get("AP50") for c in per_class])]
    png = plots.bar_png(labels, series, f"{who} - per-class AP{what}", axis_label="average precision")
    yield f"plots/{index}-{prefix}ap.png", f"Per-class AP and AP50{what}", png
    curves = [
        (c["label"], c["pr_curve"]["recall"], c["pr_curve"]["precision"], _score(c.get("AP50")))
        for c in per_class
        if c.get("pr_curve")
    ]
    if curves:
        png = plots.pr_png(curves, f"{who} - precision-recall at IoU 0.5{what}")
        yield f"plots/{index}-{prefix}pr.png", f"Precision-recall curves at IoU 0.5{what}", png


def _baseline_index(comparison: dict[str, Any]) -> int:
    models = comparison["models"]
    return models.index(comparison["baseline"]) if comparison.get("baseline") in models else 0


def _delta(entry: dict[str, Any], k: int, baseline: int) -> float | None:
    deltas = entry.get("delta")
    if deltas is not None and k < len(deltas):
        return None if deltas[k] is None else float(deltas[k])
    values = entry.get("values") or []
    if max(k, baseline) >= len(values):
        return None
    a, b = _score(values[k]), _score(values[baseline])
    return None if a is None or b is None else a - b


def higher_is_better(metric: str) -> bool:
    return not any(word in metric.lower() for word in ("seconds", "loss", "error", "latency"))


def comparison_plots(comparison: dict[str, Any]) -> Iterator[Plot]:
    """One per-class delta chart per metric and per model other than the baseline."""
    models, baseline = comparison["models"], _baseline_index(comparison)
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for entry in comparison.get("per_class") or []:
        by_metric.setdefault(str(entry["metric"]), []).append(entry)
    for metric, entries in by_metric.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", metric)[:40]
        for k, model in enumerate(models):
            if k == baseline:
                continue
            deltas = [_delta(e, k, baseline) for e in entries]
            title = f"{model} vs {models[baseline]} - per-class {metric} delta"
            png = plots.delta_png(
                [str(e["label"]) for e in entries], deltas, title, axis_label=f"{metric} minus baseline",
                higher_is_better=higher_is_better(metric),
            )  # fmt: skip
            yield f"plots/compare-{safe}-{k}.png", f"{model} against {models[baseline]}: per-class {metric}", png


# --- per-image results --------------------------------------------------------------------------------


def write_images_json(evaluations: list[dict[str, Any]], images: list[list[dict[str, Any]]], path: Path) -> None:
    """[{"model": "name:version", "images": [...]}, ...], written entry by entry."""
    with path.open("w", encoding="utf-8") as out:
        out.write("[")
        for k, (evaluation, entries) in enumerate(zip(evaluations, images, strict=True)):
            out.write(("," if k else "") + '\n{"model": ' + json.dumps(model_name(evaluation)) + ', "images": [')
            for j, entry in enumerate(entries):
                out.write(("," if j else "") + "\n" + json.dumps(entry))
            out.write("\n]}")
        out.write("\n]\n")


CLASSIFICATION_COLUMNS = ["file", "label", "predicted", "score", "correct"]
DETECTION_COLUMNS = ["file", "ground_truth", "tp", "fp", "fn", "label", "score", "x1", "y1", "x2", "y2", "match", "iou"]


def _columns(evaluation: dict[str, Any]) -> list[str]:
    task = evaluation["model"]["task"]
    if task == "classification":
        return CLASSIFICATION_COLUMNS
    if task == "segmentation":
        return ["file", "pixel_accuracy", "mIoU"] + [f"IoU_{c['label']}" for c in evaluation["metrics"]["per_class"]]
    return DETECTION_COLUMNS


def _text(value: Any) -> str:
    """A data string as a CSV cell; one that a spreadsheet would run as a formula gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _float(value: Any, digits: int = 6) -> Any:
    return "" if value is None else round(float(value), digits)


def _rows(evaluation: dict[str, Any], entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    model, task = _text(model_name(evaluation)), evaluation["model"]["task"]
    if task == "classification":
        for e in entries:
            yield {"model": model, "file": _text(e["file"]), "label": _text(e["label"]),
                   "predicted": _text(e["predicted"]), "score": _float(e["score"]),
                   "correct": "true" if e["correct"] else "false"}  # fmt: skip
    elif task == "segmentation":
        for e in entries:
            row = {"model": model, "file": _text(e["file"]), "pixel_accuracy": _float(e.get("pixel_accuracy")),
                   "mIoU": _float(e.get("mIoU"))}  # fmt: skip
            for label, iou in (e.get("IoU") or {}).items():
                row[f"IoU_{label}"] = _float(iou)
            yield row
    else:
        for e in entries:
            base = {"model": model, "file": _text(e["file"]), "ground_truth": e.get("ground_truth", ""),
                    "tp": e.get("tp", ""), "fp": e.get("fp", ""), "fn": e.get("fn", "")}  # fmt: skip
            detections = e.get("detections") or []
            if not detections:
                yield base
            for d in detections:
                x1, y1, x2, y2 = (_float(v, 2) for v in d["box"])
                yield {**base, "label": _text(d["label"]), "score": _float(d["score"]), "x1": x1, "y1": y1,
                       "x2": x2, "y2": y2, "match": "" if d.get("match") is None else d["match"],
                       "iou": _float(d.get("iou"))}  # fmt: skip


def write_images_csv(evaluations: list[dict[str, Any]], images: list[list[dict[str, Any]]], path: Path) -> None:
    """One flat table, `model` first: a row per image (per listed detection for detection tasks)."""
    header = ["model"]
    for evaluation in evaluations:
        header += [c for c in _columns(evaluation) if c not in header]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for evaluation, entries in zip(evaluations, images, strict=True):
            writer.writerows([row.get(c, "") for c in header] for row in _rows(evaluation, entries))


# --- the page -----------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#f4f5f7}
main{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:20px;margin:0 0 8px}h3{font-size:16px;margin:22px 0 6px}
.sub,.note,figcaption{color:#5f6368}.note{font-size:13px}
section{background:#fff;border:1px solid #e1e3e8;border-radius:8px;padding:16px 20px;margin:18px 0}
nav a{margin-right:14px;color:#1a5fb4}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e1e3e8;border-radius:6px;padding:6px 14px;min-width:96px}
.card b{display:block;font-size:22px;font-variant-numeric:tabular-nums}.card span{color:#5f6368;font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th{background:#fafbfc;font-weight:600}thead th{position:sticky;top:0}
.l{text-align:left}.w{text-align:left;white-space:normal;word-break:break-all;max-width:520px}
.scroll{max-height:560px;overflow:auto;display:inline-block;border:1px solid #eceef1}
.bar{background:linear-gradient(90deg,#d9e6f7 var(--v),transparent var(--v))}
.up{color:#1b7a3a;font-weight:600}.down{color:#c0262d;font-weight:600}.same{color:#80868b}
td.up{background:#e6f4ea}td.down{background:#fce8e6}
.ok{color:#1b7a3a}.bad{color:#c0262d}
figure{margin:14px 0}img{max-width:100%;height:auto;border:1px solid #eceef1}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return _e(value)


def _score_cell(value: Any) -> str:
    score = _score(value)
    if score is None:
        return '<td class="same">n/a</td>'
    if score <= 1:
        return f'<td class="bar" style="--v:{score * 100:.1f}%">{score:.3f}</td>'
    return f"<td>{_fmt(value)}</td>"


def _table(head: Sequence[str], rows: Iterable[str], *, scroll: bool = False) -> str:
    cells = "".join(f'<th class="l">{h}</th>' if k == 0 else f"<th>{h}</th>" for k, h in enumerate(head))
    body = "\n".join(rows)
    table = f"<table><thead><tr>{cells}</tr></thead><tbody>\n{body}\n</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def _figures(charts: Sequence[Plot]) -> str:
    return "\n".join(
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for _, caption, png in charts
    )


def _cards(summary: dict[str, Any]) -> str:
    cards = "".join(f"<div class=card><b>{_fmt(v)}</b><span>{_e(k)}</span></div>" for k, v in summary.items())
    return f'<div class="cards">{cards}</div>'


def _delta_html(delta: float | None, metric: str) -> tuple[str, str]:
    """(CSS class, text) of a delta against the baseline: green where better, red where worse."""
    if delta is None or not math.isfinite(delta):
        return "same", "n/a"
    if abs(delta) < 0.0005:
        return "same", "±0.000"
    better = (delta > 0) == higher_is_better(metric)
    return ("up", f"▲ {delta:+.3f}") if better else ("down", f"▼ {delta:+.3f}")


def render_html(
    result: dict[str, Any],
    images: list[list[dict[str, Any]]],
    evaluation_charts: Sequence[Sequence[Plot]],
    comparison_charts: Sequence[Plot],
) -> str:
    evaluations = result["evaluations"]
    names = [model_name(e) for e in evaluations]
    tasks = sorted({e["model"]["task"] for e in evaluations})
    num_images = evaluations[0]["dataset"].get("num_images") if evaluations else None
    title = f"Evaluation of {' vs '.join(names)} ({', '.join(tasks)})"
    links = ['<a href="#comparison">comparison</a>'] if result.get("comparison") else []
    links += [f'<a href="#eval-{i}">{_e(n)}</a>' for i, n in enumerate(names)]
    parts = [
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>Evaluation report</h1><p class=sub>{_e(', '.join(names))} &middot; {_e(', '.join(tasks))}"
        f" &middot; {_fmt(num_images)} images</p><nav>{''.join(links)}</nav>",
    ]
    if result.get("comparison"):
        parts.append(_comparison_section(result["comparison"], comparison_charts))
    for i, (evaluation, entries) in enumerate(zip(evaluations, images, strict=True)):
        parts.append(_evaluation_section(i, evaluation, entries, evaluation_charts[i]))
    parts.append(
        "<p class=note>Per-image results of every model: <code>images.csv</code> (one row per image, or per "
        "detection) and <code>images.json</code>, beside this report.</p></main></body></html>\n"
    )
    return "\n".join(parts)


def _comparison_section(comparison: dict[str, Any], charts: Sequence[Plot]) -> str:
    models, baseline = [str(m) for m in comparison["models"]], _baseline_index(comparison)
    head = ["metric"] + [_e(m) + (" (baseline)" if k == baseline else "") for k, m in enumerate(models)]

    def cells(entry: dict[str, Any]) -> str:
        values, metric, out = entry.get("values") or [], str(entry["metric"]), []
        for k in range(len(models)):
            value = _fmt(_score(values[k])) if k < len(values) else "n/a"
            if k == baseline:
                out.append(f"<td>{value}</td>")
                continue
            css, text = _delta_html(_delta(entry, k, baseline), metric)
            out.append(f'<td class="{css}">{value} <span class="{css}">{text}</span></td>')
        return "".join(out)

    summary = [f'<tr><td class="l">{_e(e["metric"])}</td>{cells(e)}</tr>' for e in comparison.get("summary") or []]
    per_class = [
        f'<tr><td class="w">{_e(e["label"])}</td><td class="l">{_e(e["metric"])}</td>{cells(e)}</tr>'
        for e in comparison.get("per_class") or []
    ]
    return (
        '<section id="comparison"><h2>Comparison</h2>'
        f"<p class=note>The same data through every model. Deltas are against the baseline "
        f"<b>{_e(models[baseline])}</b>: <span class=up>green is better</span>, <span class=down>red is worse"
        "</span>.</p><h3>Summary</h3>"
        + _table(head, summary)
        + ("<h3>Per class</h3>" + _table(["class", "metric", *head[1:]], per_class, scroll=True) if per_class else "")
        + _figures(charts)
        + "</section>"
    )


def _evaluation_section(
    index: int, evaluation: dict[str, Any], entries: list[dict[str, Any]], charts: Sequence[Plot]
) -> str:
    task, metrics = evaluation["model"]["task"], evaluation["metrics"]
    dataset = evaluation.get("dataset") or {}
    speed = [
        f"{float(evaluation[key]):,.1f} {unit}"
        for key, unit in (("seconds", "s"), ("images_per_second", "images/s"))
        if isinstance(evaluation.get(key), (int, float))
    ]
    info = [f'<tr><td class="l">{_e(k)}</td><td class="w">{_e(_info_value(v))}</td></tr>' for k, v in dataset.items()]
    parts = [
        f'<section id="eval-{index}"><h2>{_e(model_name(evaluation))}</h2>',
        f"<p class=sub>{_e(task)}{''.join(' &middot; ' + s for s in speed)}</p>",
        "<h3>Summary</h3>" + _cards(metrics.get("summary") or {}),
        "<h3>Data set</h3>" + _table(["field", "value"], info),
    ]
    if task == "classification":
        parts.append(_classification_tables(metrics))
    elif task == "detection":
        parts.append(_detection_tables(metrics, metrics, ""))
    elif task == "instance-segmentation":
        parts.append(_instance_tables(metrics))
    else:
        parts.append(_segmentation_tables(metrics))
    if charts:
        parts.append("<h3>Plots</h3>" + _figures(charts))
    parts.append("<h3>Error analysis</h3>" + _error_analysis(task, entries))
    parts.append("</section>")
    return "\n".join(parts)


def _info_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 300 else text[:299] + "…"


def _classification_tables(metrics: dict[str, Any]) -> str:
    rows = [
        f'<tr><td class="w">{_e(c["label"])}</td>{_score_cell(c["precision"])}{_score_cell(c["recall"])}'
        f"{_score_cell(c['f1'])}<td>{_fmt(c['support'])}</td></tr>"
        for c in metrics.get("per_class") or []
    ]
    for name in ("macro_avg", "weighted_avg"):
        if avg := metrics.get(name):
            rows.append(
                f'<tr><th class="l">{name.replace("_", " ")}</th>{_score_cell(avg.get("precision"))}'
                f"{_score_cell(avg.get('recall'))}{_score_cell(avg.get('f1'))}<td></td></tr>"
            )
    return "<h3>Per class</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows, scroll=True)


def _detection_tables(metrics: dict[str, Any], thresholds_from: dict[str, Any], what: str) -> str:
    per_class = metrics.get("per_class") or []
    rows = [
        f'<tr><td class="w">{_e(c["label"])}</td>{_score_cell(c.get("AP"))}{_score_cell(c.get("AP50"))}</tr>'
        for c in per_class
    ]
    count = (
        f"<p class=note>{_fmt(metrics['num_detections'])} detections scored.</p>" if "num_detections" in metrics else ""
    )
    return (
        "<h3>Per class</h3>"
        + count
        + _table(["class", "AP", "AP50"], rows, scroll=True)
        + _thresholds(thresholds_from.get("per_class") or [], what)
    )


def _thresholds(per_class: Sequence[dict[str, Any]], what: str) -> str:
    rows = []
    for c in per_class:
        best, label = c.get("f1_threshold"), f'<td class="w">{_e(c["label"])}</td>'
        if not best:
            rows.append(f'<tr>{label}<td class="same" colspan=4>no detections or no ground truth</td></tr>')
            continue
        scores = "".join(_score_cell(best.get(k)) for k in ("precision", "recall", "f1"))
        rows.append(f"<tr>{label}<td>{_fmt(best.get('score'))}</td>{scores}</tr>")
    return (
        f"<h3>Score thresholds{what}</h3><p class=note>Per class, the score threshold that maximizes F1 at "
        "IoU 0.5 (keep detections scoring at least it), with its precision and recall.</p>"
        + _table(["class", "threshold", "precision", "recall", "F1"], rows, scroll=True)
    )


def _instance_tables(metrics: dict[str, Any]) -> str:
    segm, bbox = metrics.get("segm") or {}, metrics.get("bbox") or {}
    boxes = {c["label"]: c for c in bbox.get("per_class") or []}
    rows = []
    for c in segm.get("per_class") or []:
        b = boxes.get(c["label"], {})
        rows.append(
            f'<tr><td class="w">{_e(c["label"])}</td>{_score_cell(c.get("AP"))}{_score_cell(c.get("AP50"))}'
            f"{_score_cell(b.get('AP'))}{_score_cell(b.get('AP50'))}</tr>"
        )
    head = ["class", "mask AP", "mask AP50", "box AP", "box AP50"]
    return "<h3>Per class</h3>" + _table(head, rows, scroll=True) + _thresholds(segm.get("per_class") or [], " (masks)")


def _segmentation_tables(metrics: dict[str, Any]) -> str:
    rows = [
        f'<tr><td class="w">{_e(c["label"])}</td>{_score_cell(c.get("IoU"))}{_score_cell(c.get("dice"))}'
        f"<td>{_fmt(c.get('pixels'))}</td></tr>"
        for c in metrics.get("per_class") or []
    ]
    return "<h3>Per class</h3>" + _table(["class", "IoU", "Dice", "pixels (truth)"], rows, scroll=True)


def _error_analysis(task: str, entries: list[dict[str, Any]]) -> str:
    """The images most worth a look (at most ERROR_ROWS), worst first."""
    total = f"{len(entries):,}"
    if task == "classification":
        wrong = [e for e in entries if not e.get("correct")]
        worst = heapq.nlargest(ERROR_ROWS, wrong, key=lambda e: e.get("score") or 0.0)
        note = f"{len(wrong):,} of {total} images misclassified"
        note += f"; below, the {len(worst):,} most confident mistakes." if worst else "."
        head = ["file", "true label", "predicted", "score"]
        rows = [
            f'<tr><td class="w">{_e(e["file"])}</td><td class="l">{_e(e["label"])}</td>'
            f'<td class="l bad">{_e(e["predicted"])}</td><td>{_fmt(e.get("score"))}</td></tr>'
            for e in worst
        ]
    elif task == "segmentation":
        scored = [e for e in entries if _score(e.get("mIoU")) is not None]
        worst = heapq.nsmallest(ERROR_ROWS, scored, key=lambda e: e["mIoU"])
        note = (
            f"Below, the {len(worst):,} images (of {total}) with the lowest mIoU." if worst else "No image has an mIoU."
        )
        head = ["file", "pixel accuracy", "mIoU", "lowest IoU classes"]
        rows = [
            f'<tr><td class="w">{_e(e["file"])}</td>{_score_cell(e.get("pixel_accuracy"))}{_score_cell(e["mIoU"])}'
            f'<td class="w">{_worst_classes(e.get("IoU") or {})}</td></tr>'
            for e in worst
        ]
    else:
        errors = [e for e in entries if (e.get("fp") or 0) + (e.get("fn") or 0) > 0]
        worst = heapq.nlargest(ERROR_ROWS, errors, key=lambda e: (e.get("fp") or 0) + (e.get("fn") or 0))
        note = (
            f"{len(errors):,} of {total} images have false positives or missed objects (detections at their "
            "class's F1 threshold, matched at IoU 0.5)"
        )
        note += f"; below, the {len(worst):,} with the most FP + FN." if worst else "."
        head = ["file", "ground truth", "TP", "FP", "FN", "detections (✓ matched, ✗ false positive)"]
        rows = [
            f'<tr><td class="w">{_e(e["file"])}</td><td>{_fmt(e.get("ground_truth"))}</td><td>{_fmt(e.get("tp"))}'
            f'</td><td>{_fmt(e.get("fp"))}</td><td>{_fmt(e.get("fn"))}</td><td class="w">{_detections(e)}</td></tr>'
            for e in worst
        ]
    tail = " Every image, with all its fields, is in <code>images.csv</code>."
    return f"<p class=note>{note}{tail}</p>" + (_table(head, rows) if rows else "")


def _worst_classes(ious: dict[str, Any], count: int = 3) -> str:
    present = sorted(((v, k) for k, v in ious.items() if _score(v) is not None), key=lambda p: p[0])[:count]
    return ", ".join(f"{_e(k)} {v:.2f}" for v, k in present)


def _detections(entry: dict[str, Any], count: int = 8) -> str:
    detections = entry.get("detections") or []
    shown = [
        f'<span class="{"ok" if d.get("match") is not None else "bad"}">{"✓" if d.get("match") is not None else "✗"} '
        f"{_e(d.get('label'))} {_fmt(d.get('score'))}</span>"
        for d in detections[:count]
    ]
    if len(detections) > count:
        shown.append(f"+{len(detections) - count} more")
    return ", ".join(shown)
