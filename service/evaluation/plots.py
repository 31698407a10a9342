"""Evaluation charts as PNG bytes, drawn with PIL alone (the serving image carries no matplotlib).

Every chart scales with the number of classes and stays under `MAX_SIDE` pixels: labels are abbreviated,
drawn for every k-th class where rows get too thin, and classes past `MAX_ROWS` are left out (the title says so).
"""

from __future__ import annotations

import colorsys
import io
import math
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Color = tuple[int, int, int]

MAX_SIDE = 4000  # px, the longest side of any chart
MAX_ROWS = 1000  # classes drawn in a bar chart; LVIS-size label sets still fit
MAX_LEGEND = 120  # entries in a PR-curve legend
MARGIN = 16
TITLE_HEIGHT = 44
BACKGROUND: Color = (255, 255, 255)
INK: Color = (33, 33, 33)
MUTED: Color = (140, 140, 140)
GRID: Color = (228, 228, 228)
BETTER: Color = (34, 139, 76)
WORSE: Color = (200, 48, 48)
SERIES: tuple[Color, ...] = ((49, 110, 180), (240, 150, 40), (120, 80, 170), (60, 160, 160))
HEAT_DARK = np.array([8, 48, 107], dtype=np.float64)  # the darkest heat-map cell: a whole row in one cell


@lru_cache(maxsize=32)
def font(size: int) -> Font:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1)
def _missing_glyph() -> bytes:
    return bytes(font(12).getmask("\ue000"))  # a private-use code point: no font maps it


@lru_cache(maxsize=4096)
def _has_glyph(char: str) -> bool:
    if " " <= char <= "~":
        return True
    return char.isprintable() and bytes(font(12).getmask(char)) != _missing_glyph()


def clean(text: str, max_chars: int = 28) -> str:
    """`text` in glyphs PIL's default font has (accents dropped, others as '?'), at most `max_chars` long:
    a longer one keeps its start and its end, where names that share a prefix differ."""
    text = "".join(c for c in unicodedata.normalize("NFKD", str(text)) if not unicodedata.combining(c))
    text = "".join(c if _has_glyph(c) else ("?" if c.isprintable() else " ") for c in text)
    if len(text) <= max_chars:
        return text
    head = (max_chars - 1) // 2
    return text[:head] + "…" + text[len(text) - (max_chars - 1 - head) :]


def series_color(index: int) -> Color:
    # Golden-ratio hue steps keep neighbouring classes apart; value 0.8 stays visible on white.
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.8, 0.8)
    return int(r * 255), int(g * 255), int(b * 255)


def compact(count: float) -> str:
    """1234 -> '1234', 12345 -> '12k', 3400000 -> '3.4M': counts that fit a heat-map cell."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if count >= limit:
            value = count / (limit if limit != 1e4 else 1e3)
            return f"{value:.3g}{suffix}"
    return f"{count:.0f}"


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def _title(draw: ImageDraw.ImageDraw, text: str, width: int) -> None:
    title_font = font(18)
    text = clean(text, 200)
    while len(text) > 10 and title_font.getlength(text) > width - 2 * MARGIN:
        text = text[:-2] + "…"
    draw.text((MARGIN, TITLE_HEIGHT // 2), text, fill=INK, font=title_font, anchor="lm")


def _nice_limit(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above `value` (a symmetric delta axis)."""
    if value <= 0:
        return 0.05
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * 10**exponent >= value * (1 - 1e-9):
            return float(step * 10**exponent)
    return float(10 ** (exponent + 1))


def _number(value: float | None) -> float | None:
    """A plottable score: None, NaN and COCO's -1 (no ground truth) are not."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, *, unit: str) -> bytes:
    """A heat map of a confusion matrix (rows: truth, columns: prediction), shaded by share of its row.

    Counts are printed in cells wide enough for them; shading is the square root of the row share, so a
    few stray predictions show up next to a full diagonal (the colour bar is labelled in real shares).
    """
    counts = np.asarray(matrix, dtype=np.float64).reshape(len(labels), len(labels))
    n = max(1, len(labels))
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    cell = max(1, min(56, 1800 // n))
    side = min(n * cell, 1800)
    shade = np.sqrt(share)
    heat = 255 - shade[..., None] * (255 - HEAT_DARK)
    heat_image = Image.fromarray(heat.round().astype(np.uint8), "RGB")
    heat_image = heat_image.resize((side, side), Image.Resampling.NEAREST if n * cell == side else Image.Resampling.BOX)
    pitch = side / n

    step = max(1, math.ceil(11 / pitch))  # every step-th label, so labels never overlap
    label_font = font(int(min(14, max(9, pitch - 3))))
    shown = [(i, clean(labels[i])) for i in range(0, len(labels), step)]
    label_width = int(max((label_font.getlength(t) for _, t in shown), default=0)) + 10

    axis_font = font(14)
    left = MARGIN + 22 + label_width
    top = TITLE_HEIGHT + 8
    bar_x = left + side + 24
    caption = f"share of row ({clean(unit)})"
    width = max(bar_x + 16 + 40 + MARGIN, bar_x + int(font(11).getlength(caption)) + MARGIN, 560)
    height = top + side + label_width + 30 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _title(draw, title, width)
    image.paste(heat_image, (left, top))
    draw.rectangle((left - 1, top - 1, left + side, top + side), outline=MUTED)

    for i, text in shown:
        draw.text((left - 6, top + (i + 0.5) * pitch), text, fill=INK, font=label_font, anchor="rm")
    strip = Image.new("RGB", (label_width, side), BACKGROUND)  # column labels, drawn flat then turned upright
    strip_draw = ImageDraw.Draw(strip)
    half = label_font.size / 2 if isinstance(label_font, ImageFont.FreeTypeFont) else 6
    for i, text in shown:
        y = min(max((i + 0.5) * pitch, half), side - half)  # the end labels stay on the strip
        strip_draw.text((label_width - 6, y), text, fill=INK, font=label_font, anchor="rm")
    image.paste(strip.transpose(Image.Transpose.ROTATE_90), (left, top + side))
    draw.text((left + side / 2, top + side + label_width + 14), "predicted", fill=INK, font=axis_font, anchor="mm")
    true_label = Image.new("RGB", (side, 20), BACKGROUND)
    ImageDraw.Draw(true_label).text((side / 2, 10), "true", fill=INK, font=axis_font, anchor="mm")
    image.paste(true_label.transpose(Image.Transpose.ROTATE_90), (MARGIN, top))

    if pitch >= 16:
        for r in range(len(labels)):
            for c in range(len(labels)):
                if counts[r, c] <= 0:
                    continue
                text = compact(counts[r, c])
                count_font = font(int(min(14, max(9, pitch / 3 + 3))))
                if count_font.getlength(text) > pitch - 4:
                    continue
                fill = BACKGROUND if shade[r, c] > 0.6 else INK
                center = (left + (c + 0.5) * pitch, top + (r + 0.5) * pitch)
                draw.text(center, text, fill=fill, font=count_font, anchor="mm")

    bar_height = min(side, 300)
    ramp = np.linspace(1, 0, bar_height)[:, None].repeat(16, axis=1)  # top: a whole row, bottom: none
    ramp_rgb = 255 - np.sqrt(ramp)[..., None] * (255 - HEAT_DARK)
    image.paste(Image.fromarray(ramp_rgb.round().astype(np.uint8), "RGB"), (bar_x, top))
    draw.rectangle((bar_x - 1, top - 1, bar_x + 16, top + bar_height), outline=MUTED)
    tick_font = font(11)
    for tick in (0.0, 0.1, 0.25, 0.5, 1.0):
        y = top + (1 - math.sqrt(tick)) * (bar_height - 1)
        draw.line((bar_x + 16, y, bar_x + 20, y), fill=INK)
        draw.text((bar_x + 23, y), f"{tick:g}", fill=INK, font=tick_font, anchor="lm")
    draw.text((bar_x, top + bar_height + 14), caption, fill=MUTED, font=tick_font, anchor="lm")
    return to_png(_fit(image))


def _fit(image: Image.Image) -> Image.Image:
    if max(image.size) <= MAX_SIDE:
        return image
    scale = MAX_SIDE / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX)


class _Rows:
    """Row geometry of a horizontal bar chart: one row per class, labels at the left."""

    def __init__(self, labels: Sequence[str], *, bars_per_row: int) -> None:
        self.total = len(labels)
        self.labels = [clean(label) for label in labels[:MAX_ROWS]]
        n = max(1, len(self.labels))
        self.height = max(2, min(14 + 12 * bars_per_row, 2400 // n))
        self.font = font(int(min(14, max(9, self.height - 4))))
        self.step = max(1, math.ceil(11 / self.height))
        widths = (self.font.getlength(label) for label in self.labels[:: self.step])
        self.label_width = int(max(widths, default=0)) + 12
        self.bar = max(1, (self.height - 2 * max(1, self.height // 6)) // bars_per_row)
        self.pad = (self.height - self.bar * bars_per_row) // 2

    def title(self, text: str) -> str:
        if self.total > len(self.labels):
            return f"{text} (first {len(self.labels)} of {self.total} classes)"
        return text

    def draw_labels(self, draw: ImageDraw.ImageDraw, right: float, top: float) -> None:
        for i in range(0, len(self.labels), self.step):
            y = top + (i + 0.5) * self.height
            draw.text((right, y), self.labels[i], fill=INK, font=self.font, anchor="rm")


def _x_axis(
    draw: ImageDraw.ImageDraw,
    ticks: Sequence[float],
    to_x: float | None,
    box: tuple[float, float, float, float],
    label: str,
    *,
    scale: tuple[float, float],
) -> None:
    """Vertical grid lines at `ticks`, tick labels above and below the plot box, the axis label under it."""
    left, top, right, bottom = box
    low, high = scale
    tick_font = font(11)
    for tick in ticks:
        x = left + (tick - low) / (high - low) * (right - left)
        draw.line((x, top, x, bottom), fill=GRID if tick != to_x else MUTED, width=1)
        text = f"{tick:+g}" if low < 0 and tick else f"{tick:g}"
        draw.text((x, top - 4), text, fill=INK, font=tick_font, anchor="mb")
        draw.text((x, bottom + 4), text, fill=INK, font=tick_font, anchor="mt")
    draw.text(((left + right) / 2, bottom + 22), label, fill=INK, font=font(13), anchor="mt")


def bar_png(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], title: str, *, axis_label: str
) -> bytes:
    """Horizontal bars in [0, 1], one row per class and one bar per series (e.g. AP and AP50); a missing
    value (None, or COCO's -1 for a class without ground truth) reads 'n/a'."""
    rows = _Rows(labels, bars_per_row=len(series))
    plot_width = 560
    legend_height = 24 if len(series) > 1 else 0
    left = MARGIN + rows.label_width
    top = TITLE_HEIGHT + legend_height + 22
    bottom = top + rows.height * len(rows.labels)
    width = left + plot_width + 56 + MARGIN
    height = bottom + 48 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _title(draw, rows.title(title), width)
    x = float(left)
    for s, (name, _) in enumerate(series if len(series) > 1 else []):
        color = SERIES[s % len(SERIES)]
        draw.rectangle((x, TITLE_HEIGHT + 4, x + 12, TITLE_HEIGHT + 16), fill=color)
        draw.text((x + 17, TITLE_HEIGHT + 10), clean(name), fill=INK, font=font(13), anchor="lm")
        x += 17 + font(13).getlength(clean(name)) + 20
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    _x_axis(draw, ticks, 0.0, (left, top, left + plot_width, bottom), axis_label, scale=(0.0, 1.0))
    rows.draw_labels(draw, left - 6, top)
    value_font = font(int(min(12, max(9, rows.bar))))
    for i in range(len(rows.labels)):
        for s, (_, values) in enumerate(series):
            value = _number(values[i]) if i < len(values) else None
            y0 = top + i * rows.height + rows.pad + s * rows.bar
            if value is None:
                if rows.bar >= 9:
                    draw.text((left + 4, y0 + rows.bar / 2), "n/a", fill=MUTED, font=value_font, anchor="lm")
                continue
            end = left + min(value, 1.0) * plot_width
            if end > left:
                draw.rectangle((left, y0, end, y0 + max(0, rows.bar - 2)), fill=SERIES[s % len(SERIES)])
            if rows.bar >= 9:
                draw.text((end + 4, y0 + rows.bar / 2 - 1), f"{value:.2f}", fill=INK, font=value_font, anchor="lm")
    return to_png(_fit(image))


def delta_png(
    labels: Sequence[str],
    deltas: Sequence[float | None],
    title: str,
    *,
    axis_label: str,
    higher_is_better: bool = True,
) -> bytes:
    """Diverging horizontal bars around zero, one per class: green where the value got better, red where
    it got worse."""
    rows = _Rows(labels, bars_per_row=1)
    finite = [abs(d) for d in deltas if d is not None and math.isfinite(d)]
    limit = _nice_limit(max(finite, default=0.0))
    plot_width = 600
    left = MARGIN + rows.label_width + 8
    top = TITLE_HEIGHT + 22
    bottom = top + rows.height * len(rows.labels)
    width = left + plot_width + MARGIN + 8
    height = bottom + 48 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _title(draw, rows.title(title), width)
    inner = (left + 48, left + plot_width - 48)  # room for the value text at either end
    ticks = [-limit, -limit / 2, 0.0, limit / 2, limit]
    _x_axis(draw, ticks, 0.0, (inner[0], top, inner[1], bottom), axis_label, scale=(-limit, limit))
    rows.draw_labels(draw, left - 6, top)
    zero = (inner[0] + inner[1]) / 2
    half = (inner[1] - inner[0]) / 2
    value_font = font(int(min(12, max(9, rows.bar))))
    for i in range(len(rows.labels)):
        delta = deltas[i] if i < len(deltas) else None
        y0 = top + i * rows.height + rows.pad
        middle = y0 + rows.bar / 2 - 1
        if delta is None or not math.isfinite(delta):
            if rows.bar >= 9:
                draw.text((zero + 4, middle), "n/a", fill=MUTED, font=value_font, anchor="lm")
            continue
        end = zero + max(-1.0, min(1.0, delta / limit)) * half
        color = BETTER if (delta > 0) == higher_is_better else WORSE
        if abs(end - zero) >= 1:
            draw.rectangle((min(zero, end), y0, max(zero, end), y0 + max(0, rows.bar - 2)), fill=color)
        if rows.bar >= 9:
            anchor, x = ("lm", end + 4) if delta >= 0 else ("rm", end - 4)
            draw.text((x, middle), f"{delta:+.3f}", fill=INK if delta == 0 else color, font=value_font, anchor=anchor)
    return to_png(_fit(image))


def pr_png(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float | None]], title: str) -> bytes:
    """Precision-recall curves, one per (label, recall, precision, AP50), the mean over classes in black,
    and a legend under the plot with each class's AP50."""
    plot = 560
    left, top = MARGIN + 50, TITLE_HEIGHT + 16
    right, bottom = left + plot, top + plot
    legend_font = font(12)
    entries = [(clean(label, 24), ap) for label, _, _, ap in curves[:MAX_LEGEND]]
    if len(curves) > 1:
        entries.insert(0, ("mean", _mean_ap(curves)))
    texts = [f"{label}  {ap:.2f}" if ap is not None else f"{label}  n/a" for label, ap in entries]
    column = int(max((legend_font.getlength(t) for t in texts), default=0)) + 28
    width = right + MARGIN + 20
    columns = max(1, (width - 2 * MARGIN) // max(column, 1))
    legend_rows = math.ceil(len(texts) / columns) + (1 if len(curves) > MAX_LEGEND else 0)
    legend_top = bottom + 56
    height = legend_top + legend_rows * 18 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _title(draw, title, width)
    tick_font = font(11)
    for k in range(6):
        tick = k / 5
        x, y = left + tick * plot, bottom - tick * plot
        draw.line((x, top, x, bottom), fill=GRID)
        draw.line((left, y, right, y), fill=GRID)
        draw.text((x, bottom + 4), f"{tick:g}", fill=INK, font=tick_font, anchor="mt")
        draw.text((left - 6, y), f"{tick:g}", fill=INK, font=tick_font, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline=MUTED)
    draw.text(((left + right) / 2, bottom + 24), "recall", fill=INK, font=font(13), anchor="mt")
    precision_label = Image.new("RGB", (plot, 18), BACKGROUND)
    ImageDraw.Draw(precision_label).text((plot / 2, 9), "precision", fill=INK, font=font(13), anchor="mm")
    image.paste(precision_label.transpose(Image.Transpose.ROTATE_90), (MARGIN, top))

    def points(recall: Sequence[float], precision: Sequence[float]) -> list[tuple[float, float]]:
        return [(left + r * plot, bottom - p * plot) for r, p in zip(recall, precision, strict=False)]

    drawn = [(k, r, p) for k, (_, r, p, ap) in enumerate(curves) if ap is not None and len(r) and len(p) == len(r)]
    if len(drawn) > 1 and all(len(r) == len(drawn[0][1]) for _, r, _ in drawn):
        mean = np.mean([np.asarray(p, dtype=np.float64) for _, _, p in drawn], axis=0)  # under the classes
        draw.line(points(drawn[0][1], mean.tolist()), fill=INK, width=4)
    for k, recall, precision in drawn:
        draw.line(points(recall, precision), fill=series_color(k), width=2)

    for n, text in enumerate(texts):
        x = MARGIN + (n % columns) * column
        y = legend_top + (n // columns) * 18
        is_mean = len(curves) > 1 and n == 0
        color = INK if is_mean else series_color(n - (1 if len(curves) > 1 else 0))
        draw.rectangle((x, y + 5, x + 16, y + 9), fill=color)
        draw.text((x + 22, y + 7), text, fill=INK, font=legend_font, anchor="lm")
    if len(curves) > MAX_LEGEND:
        note = f"+{len(curves) - MAX_LEGEND} more classes (curves drawn, not listed)"
        draw.text((MARGIN, legend_top + (legend_rows - 1) * 18 + 7), note, fill=MUTED, font=legend_font, anchor="lm")
    return to_png(_fit(image))


def _mean_ap(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float | None]]) -> float | None:
    values = [ap for _, _, _, ap in curves if ap is not None]
    return float(np.mean(values)) if values else None
