"""Draw results onto the original image, for people who would rather look than read."""

from __future__ import annotations

import colorsys
import io
from typing import Any

from PIL import Image, ImageDraw, ImageFont


def class_color(class_id: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps keep neighbouring class ids apart.
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: list[dict[str, Any]]) -> Image.Image:
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=max(10, round(max(canvas.size) / 50)))
    for det in detections:
        color = class_color(det["class_id"])
        x1, y1, x2, y2 = det["box"]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        top_y = max(0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, top_y, x1 + (right - left) + 4, top_y + (bottom - top) + 2), fill=color)
        draw.text((x1 + 2, top_y), text, fill=(0, 0, 0), font=font)
    return canvas


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=3)
    return buffer.getvalue()


def draw_masks(image: Image.Image, entries: list[dict[str, Any]], alpha: float = 0.5) -> Image.Image:
    """Overlay RLE masks (semantic classes or instances) in their class colors; instances get their box."""
    import numpy as np
    from pycocotools import mask as mask_utils

    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for entry in entries:
        rle = entry["mask"]
        region = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        color = np.array(class_color(entry["class_id"]), dtype=np.float32)
        canvas[region] = canvas[region] * (1 - alpha) + color * alpha
    overlaid = Image.fromarray(canvas.clip(0, 255).astype("uint8"))
    boxed = [e for e in entries if "box" in e]
    return draw_detections(overlaid, boxed) if boxed else overlaid
