"""Binary masks in the three wire formats: COCO compressed RLE, polygons, PNG."""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from service.imaging import Geometry

MaskFormat = Literal["rle", "polygon", "png"]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours as flat [x1, y1, x2, y2, ...] lists (COCO's polygon layout), in pixel coordinates."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)  # closes contours that touch the border
    polygons = []
    for contour in find_contours(padded, 0.5):
        if len(contour) < 3:
            continue
        points = np.flip(contour - 1, axis=1).clip(0, None)  # (row, col) -> (x, y)
        polygons.append([round(float(v), 2) for v in points.ravel()])
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
