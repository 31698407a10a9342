"""Binary masks in the three wire formats: COCO compressed RLE, polygons, PNG."""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage  # scikit-learn's dependency: a serving one, unlike scikit-image

from service.imaging import Geometry

MaskFormat = Literal["rle", "polygon", "png"]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# Pixel sides as directed edges (dx, dy), image y pointing down, traversed with the pixel on the right:
# top side east, right side south, bottom side west, left side north. Turning right is index + 1.
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])


def _boundary_loops(mask: np.ndarray) -> list[tuple[np.ndarray, float, int]]:
    """Every closed boundary of the mask along pixel edges: (corner points [K, 2] as integer x, y, signed area,
    4-connected component). Outer boundaries have a positive area, holes a negative one; where two pixels of a
    region touch only at a corner the walk turns right, around its own pixel, so each loop stays in one
    4-connected component."""
    width = mask.shape[1]
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    sides = (  # (pixel whose side it is, start corner offset (x, y)) per direction
        (inner & ~padded[:-2, 1:-1], (0, 0)),
        (inner & ~padded[1:-1, 2:], (1, 0)),
        (inner & ~padded[2:, 1:-1], (1, 1)),
        (inner & ~padded[1:-1, :-2], (0, 1)),
    )
    xs, ys, steps, rows, cols = [], [], [], [], []
    for direction, (side, (ox, oy)) in enumerate(sides):
        r, c = np.nonzero(side)
        xs.append(c + ox)
        ys.append(r + oy)
        rows.append(r)
        cols.append(c)
        steps.append(np.full(len(r), direction))
    x, y, step, row, col = (np.concatenate(v) for v in (xs, ys, steps, rows, cols))
    if not len(x):
        return []
    start = y * (width + 1) + x
    end = (y + _STEPS[step, 1]) * (width + 1) + x + _STEPS[step, 0]
    order = np.argsort(start, kind="stable")
    first = np.searchsorted(start[order], end, "left")
    successor = order[first]
    # Two edges leave a corner where two pixels touch diagonally: take the right turn.
    pair = np.flatnonzero(np.searchsorted(start[order], end, "right") - first == 2)
    other = order[first[pair] + 1]
    use_other = step[other] == (step[pair] + 1) % 4
    successor[pair[use_other]] = other[use_other]
    components, _ = ndimage.label(mask)
    loops = []
    seen = np.zeros(len(x), dtype=bool)
    successor_list = successor.tolist()
    for begin in range(len(x)):
        if seen[begin]:
            continue
        walk, j = [], begin
        while not seen[j]:
            seen[j] = True
            walk.append(j)
            j = successor_list[j]
        edges = np.asarray(walk)
        corners = step[edges] != np.roll(step[edges], 1)
        points = np.stack([x[edges][corners], y[edges][corners]], axis=1)
        px, py = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
        area = float(np.dot(px, np.roll(py, -1)) - np.dot(np.roll(px, -1), py)) / 2
        loops.append((points, area, int(components[row[begin], col[begin]])))
    return loops


def encode_polygons(mask: np.ndarray) -> list[list[int]]:
    """COCO polygons ([x1, y1, x2, y2, ...] in pixel-edge coordinates) whose union pycocotools decodes to the
    mask exactly: one per 4-connected region, its outline along pixel edges, each hole joined to it by a cut
    walked both ways (pycocotools fills polygons by the even-odd rule, so the hole stays empty and the cut
    adds nothing). No extra dependency: the contour walk is numpy."""
    loops = _boundary_loops(mask.astype(bool))
    outlines = {component: points for points, area, component in loops if area > 0}
    holes: dict[int, list[np.ndarray]] = {}
    for points, area, component in loops:
        if area < 0:
            holes.setdefault(component, []).append(points)
    polygons = []
    for component, path in outlines.items():
        for hole in holes.get(component, []):
            # from the path's corner nearest the hole's first corner: cut in, round the hole, cut back
            k = int(np.argmin(((path - hole[0]) ** 2).sum(axis=1)))
            path = np.concatenate([path[: k + 1], hole, hole[:1], path[k:]])
        polygons.append(path.ravel().tolist())
    return polygons


def encode_png(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_mask(mask: np.ndarray, fmt: MaskFormat) -> Any:
    if fmt == "rle":
        return encode_rle(mask)
    if fmt == "polygon":
        return encode_polygons(mask)
    return encode_png(mask)


def input_to_image(plane: np.ndarray, geometry: Geometry, resample: Image.Resampling) -> np.ndarray:
    """A 2-D map in model-input pixels -> the original image's size (padding removed)."""
    height, width = plane.shape
    left, top = round(geometry.pad_x), round(geometry.pad_y)
    right = min(width, left + max(1, round(geometry.width * geometry.scale_x)))
    bottom = min(height, top + max(1, round(geometry.height * geometry.scale_y)))
    cropped = plane[top:bottom, left:right]
    if plane.dtype == np.float32:
        image = Image.fromarray(cropped, mode="F")
    else:
        image = Image.fromarray(cropped.astype(np.uint8))
    return np.asarray(image.resize((geometry.width, geometry.height), resample))
