"""The segmentation demos: the detection demo's shapes, now with exact masks, polygons and RLE.

Every object is an analytic polygon (a 64-gon for the discs). Its ground truth is that polygon rasterized by
pycocotools, the library every COCO tool decodes with, so a PNG mask, the COCO polygon and the mask that
`optic eval` rebuilds from it are the same pixels. The photograph is blended with the polygon's 4x
supersampled coverage (antialiased edges). About a third of the objects are outlines, rings with a hole a
COCO polygon cannot express: those are written as compressed RLE. Objects never overlap, so every instance
is fully visible.

`segmentation`: per split `images/*.jpg`, `masks/*.png` (class index per pixel, 0 = background) and the same
labels as COCO polygons/RLE in `annotations.json`; `classes.txt` lists the classes, background first.
`instance-segmentation`: per split `images/*.jpg` and `annotations.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from training.data.demo import register_demo
from training.data.demo_detection import CLASSES, background, load_backgrounds, object_color

IMAGE_SIZES = ((256, 192), (192, 256), (224, 224), (256, 256))  # (width, height)
SPLIT_IMAGES = {"train": 320, "val": 64, "test": 64}
OBJECT_PIXELS = (44, 112)  # side range; large enough that a 1/8-resolution head still draws clean edges
OBJECTS_PER_IMAGE = (1, 4)
OUTLINE_SHARE = 0.3
_SUPERSAMPLE = 4
_GAP = 4  # pixels kept free between objects
_DISC_POINTS = 64
# corners and the radii they alternate between, per polygon class
_POLYGONS = {
    "square": lambda r: (4, [r]),
    "triangle": lambda r: (3, [r]),
    "star": lambda r: (10, [r, r * 0.45]),
}


@dataclass(frozen=True)
class Shape:
    """One object: `rings` are polygons as flat [x1, y1, ...] in pixel-centre coordinates (COCO's), the first
    the outline, an optional second the hole."""

    label: int
    rings: tuple[list[float], ...]

    @property
    def has_hole(self) -> bool:
        return len(self.rings) > 1


def _outline(kind: str, cx: float, cy: float, radius: float, angle: float, squash: float) -> list[float]:
    if kind == "circle":  # an ellipse, rotated
        angles = np.linspace(0, 2 * math.pi, _DISC_POINTS, endpoint=False)
        points = [(radius * math.cos(t), radius * squash * math.sin(t)) for t in angles]
    else:
        corners, radii = _POLYGONS[kind](radius)
        points = [
            (radii[i % len(radii)] * math.cos(2 * math.pi * i / corners),
             radii[i % len(radii)] * math.sin(2 * math.pi * i / corners))
            for i in range(corners)
        ]  # fmt: skip
    cos, sin = math.cos(angle), math.sin(angle)
    flat = []
    for x, y in points:
        flat += [round(cx + x * cos - y * sin, 2), round(cy + x * sin + y * cos, 2)]
    return flat


def make_shape(label: int, x0: int, y0: int, side: int, rng: np.random.Generator) -> Shape:
    radius = side / 2 - 1
    cx, cy = x0 + (side - 1) / 2, y0 + (side - 1) / 2
    angle, squash = rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.0)
    kind = CLASSES[label]
    outer = _outline(kind, cx, cy, radius, angle, squash)
    if rng.random() >= OUTLINE_SHARE:
        return Shape(label, (outer,))
    # A star's arms are thin: its hole must stay small for the ring to remain one piece.
    keep = rng.uniform(0.45, 0.6) if kind != "star" else rng.uniform(0.35, 0.45)
    return Shape(label, (outer, _outline(kind, cx, cy, radius * keep, angle, squash)))


def rasterize(rings: list[list[float]] | tuple[list[float], ...], height: int, width: int) -> np.ndarray:
    """bool [H, W]: the first polygon minus the others, rasterized by pycocotools."""
    outer = mask_utils.decode(mask_utils.frPyObjects([rings[0]], height, width))[..., 0].astype(bool)
    for hole in rings[1:]:
        outer &= ~mask_utils.decode(mask_utils.frPyObjects([hole], height, width))[..., 0].astype(bool)
    return outer


def coverage(shape: Shape, x0: int, y0: int, side: int) -> np.ndarray:
    """float32 [side, side] in 0..1 over the window at (x0, y0): the share of each pixel the shape covers, from
    a 4x supersampled drawing."""
    canvas = Image.new("L", (side * _SUPERSAMPLE, side * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for i, ring in enumerate(shape.rings):
        # Pixel centres sit on integer coordinates, so pixel i spans [i - 0.5, i + 0.5]; in the 4x canvas
        # (whose own centres are integers too) the point x lands at 4x + 1.5.
        xs = [(x - x0) * _SUPERSAMPLE + 1.5 for x in ring[0::2]]
        ys = [(y - y0) * _SUPERSAMPLE + 1.5 for y in ring[1::2]]
        draw.polygon(list(zip(xs, ys, strict=True)), fill=255 if i == 0 else 0)
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def place_shapes(image: np.ndarray, rng: np.random.Generator) -> list[tuple[Shape, np.ndarray]]:
    """Composite 1-4 non-overlapping shapes into `image` (in place); returns each with its exact mask."""
    height, width = image.shape[:2]
    wanted = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    placed: list[tuple[Shape, np.ndarray]] = []
    taken: list[tuple[int, int, int]] = []
    for _ in range(wanted * 30):
        if len(placed) == wanted:
            break
        side = int(rng.integers(OBJECT_PIXELS[0], min(OBJECT_PIXELS[1], width, height) + 1))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if any(
            x0 < x + s + _GAP and x < x0 + side + _GAP and y0 < y + s + _GAP and y < y0 + side + _GAP
            for x, y, s in taken
        ):
            continue
        shape = make_shape(int(rng.integers(len(CLASSES))), x0, y0, side, rng)
        mask = rasterize(shape.rings, height, width)
        if mask.sum() < 64:
            continue
        alpha = coverage(shape, x0, y0, side)[..., None]
        region = image[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
        color = object_color(region, rng)
        # A soft light gradient across the object, so the fill is not one flat value.
        ramp = np.linspace(rng.uniform(0.75, 0.95), rng.uniform(1.0, 1.15), side, dtype=np.float32)
        shade = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        blended = region * (1 - alpha) + np.clip(color * shade, 0, 255) * alpha
        image[y0 : y0 + side, x0 : x0 + side] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        placed.append((shape, mask))
        taken.append((x0, y0, side))
    return placed


def coco_annotation(shape: Shape, mask: np.ndarray, ann_id: int, image_id: int) -> dict[str, Any]:
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    if shape.has_hole:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation: Any = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [shape.rings[0]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": shape.label + 1,
        "segmentation": segmentation,
        "bbox": [x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1],
        "area": int(mask.sum()),
        "iscrowd": 0,
    }


def write_split(
    out: Path, split: str, count: int, photos: list[np.ndarray], rng: np.random.Generator, *, png_masks: bool
) -> int:
    (out / split / "images").mkdir(parents=True)
    if png_masks:
        (out / split / "masks").mkdir()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        pixels = background(photos, (width, height), rng).copy()
        shapes = place_shapes(pixels, rng)
        noise = rng.normal(0.0, 3.0, pixels.shape)  # sensor noise, so flat fills are not perfectly flat
        pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
        name = f"{split}_{image_id:04d}"
        Image.fromarray(pixels).save(out / split / "images" / f"{name}.jpg", quality=92)
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height})
        class_map = np.zeros((height, width), dtype=np.uint8)
        for shape, mask in shapes:
            class_map[mask] = shape.label + 1
            annotations.append(coco_annotation(shape, mask, len(annotations) + 1, image_id))
        if png_masks:
            Image.fromarray(class_map, mode="L").save(out / split / "masks" / f"{name}.png")
    coco = {
        "info": {"description": f"optic shapes segmentation demo, {split} split"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    (out / split / "annotations.json").write_text(json.dumps(coco) + "\n")
    return count


def _write(out: Path, seed: int, *, png_masks: bool) -> dict[str, int]:
    photos = load_backgrounds()
    counts = {}
    for offset, (split, count) in enumerate(SPLIT_IMAGES.items()):
        rng = np.random.default_rng([seed, 17, offset])  # 17: other images than the detection demo's
        counts[split] = write_split(out, split, count, photos, rng, png_masks=png_masks)
    return counts


@register_demo("segmentation")
def write_semantic(out: Path, seed: int) -> dict[str, int]:
    counts = _write(out, seed, png_masks=True)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in ("background", *CLASSES)))
    return counts


@register_demo("instance-segmentation")
def write_instances(out: Path, seed: int) -> dict[str, int]:
    return _write(out, seed, png_masks=False)
