"""The detection demo: coloured shapes composited onto crops of the photographs scikit-image ships.

Every object is rendered (4x supersampled) into its own coverage mask, so its box is exact: the bounding box
of the pixels it covers at least half. Objects never overlap and never cross the border, so no box is
occluded or truncated. Each split gets COCO `annotations.json` and YOLO `labels/*.txt` for the same images,
so both readers are exercised on real files. `crops/{train,val,test}/<class>/` holds the same objects cut
out (plus object-free "background" patches) as an image-folder classification set: a backbone pretrained
on it is what lets the demo detector train on a CPU without downloaded weights.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from training.data.demo import register_demo

CLASSES = ("circle", "square", "triangle", "star")
# Photographs that load offline (some skimage.data images need a download and are left out).
BACKGROUNDS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "moon",
    "page",
    "clock",
    "retina",
)
IMAGE_SIZES = ((320, 240), (240, 320), (320, 320), (288, 224))  # (width, height): the letterbox has work to do
SPLIT_IMAGES = {"train": 320, "val": 64, "test": 64}
OBJECT_PIXELS = (36, 104)  # side range: SSDlite's smallest default boxes are ~0.1 x the input
OBJECTS_PER_IMAGE = (1, 5)
CROP_PIXELS = 64  # crops/: the objects cut out, for pretraining a backbone by classification
BACKGROUND_CROPS = 1  # per image, class "background"
_SUPERSAMPLE = 4
_GAP = 4  # pixels kept free between objects


def load_backgrounds(max_side: int = 640) -> list[np.ndarray]:
    """The photographs as RGB uint8, larger ones reduced so crops show scene structure, not noise."""
    import skimage.data

    photos = []
    for name in BACKGROUNDS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8:
            array = (array.astype(np.float64) / max(1.0, float(array.max())) * 255).astype(np.uint8)
        image = Image.fromarray(array).convert("RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        photos.append(np.asarray(image))
    return photos


def background(photos: list[np.ndarray], size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of a random photograph at a random zoom, resized to `size` = (width, height)."""
    photo = photos[rng.integers(len(photos))]
    width, height = size
    fit = min(photo.shape[1] / width, photo.shape[0] / height)
    zoom = rng.uniform(0.35, 1.0) * fit  # crop size in photo pixels per output pixel
    crop_w, crop_h = max(8, int(width * zoom)), max(8, int(height * zoom))
    x0 = int(rng.integers(0, photo.shape[1] - crop_w + 1))
    y0 = int(rng.integers(0, photo.shape[0] - crop_h + 1))
    crop = Image.fromarray(photo[y0 : y0 + crop_h, x0 : x0 + crop_w]).resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(crop)
    return array[:, ::-1] if rng.random() < 0.5 else array


def shape_polygon(kind: str, radius: float, angle: float, center: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners, radii = 4, [radius]
    elif kind == "triangle":
        corners, radii = 3, [radius]
    elif kind == "star":
        corners, radii = 10, [radius, radius * 0.45]
    else:
        raise ValueError(f"no polygon for {kind!r}")
    return [
        (
            center + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
            center + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def render_mask(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """float32 coverage in 0..1 of one shape, drawn 4x larger and box-filtered down (antialiased)."""
    canvas = side * _SUPERSAMPLE
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    radius = canvas / 2 - 1
    outline = None if rng.random() < 0.7 else max(_SUPERSAMPLE * 2, int(canvas * rng.uniform(0.08, 0.14)))
    if kind == "circle":
        squash = rng.uniform(0.8, 1.0)  # a slightly elliptic disc, axis-aligned
        ry = radius * squash
        xy = (1, canvas / 2 - ry, canvas - 2, canvas / 2 + ry)
        draw.ellipse(xy, fill=None if outline else 255, outline=255 if outline else None, width=outline or 1)
    else:
        points = shape_polygon(kind, radius, rng.uniform(0, 2 * math.pi), canvas / 2)
        if outline:
            draw.line([*points, points[0], points[1]], fill=255, width=outline, joint="curve")
        else:
            draw.polygon(points, fill=255)
    small = mask.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def object_color(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A saturated colour whose brightness differs clearly from the background it lands on."""
    luminance = float(patch.mean())
    for _ in range(20):
        rgb = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.25, 1.0))) * 255
        if abs(float(rgb.mean()) - luminance) > 60:
            break
    return rgb.astype(np.float32)


def place_objects(image: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Composite 1-5 non-overlapping shapes into `image` (in place); returns their exact boxes."""
    height, width = image.shape[:2]
    objects: list[dict[str, Any]] = []
    wanted = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    for _ in range(wanted * 30):
        if len(objects) == wanted:
            break
        side = int(rng.integers(OBJECT_PIXELS[0], min(OBJECT_PIXELS[1], width, height) + 1))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if any(
            x0 < o["_x1"] + _GAP
            and o["_x0"] < x0 + side + _GAP
            and y0 < o["_y1"] + _GAP
            and o["_y0"] < y0 + side + _GAP
            for o in objects
        ):
            continue
        label = int(rng.integers(len(CLASSES)))
        alpha = render_mask(CLASSES[label], side, rng)
        covered = np.argwhere(alpha >= 0.5)
        if len(covered) < 16:
            continue
        region = image[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
        color = object_color(region, rng)
        # A soft light gradient across the object, so the fill is not one flat value.
        ramp = np.linspace(rng.uniform(0.75, 0.95), rng.uniform(1.0, 1.15), side, dtype=np.float32)
        shade = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        blended = region * (1 - alpha[..., None]) + np.clip(color * shade, 0, 255) * alpha[..., None]
        image[y0 : y0 + side, x0 : x0 + side] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        (top, left), (bottom, right) = covered.min(axis=0), covered.max(axis=0)
        objects.append({
            "label": label,
            "bbox": [int(x0 + left), int(y0 + top), int(right - left + 1), int(bottom - top + 1)],
            "area": len(covered),
            "_x0": x0, "_y0": y0, "_x1": x0 + side, "_y1": y0 + side,
        })  # fmt: skip
    return objects


def square_crop(pixels: np.ndarray, center: tuple[float, float], side: float) -> Image.Image:
    """A square around `center`, shifted (not cut) to stay inside the image, resized to CROP_PIXELS."""
    height, width = pixels.shape[:2]
    side = int(min(side, width, height))
    x0 = int(np.clip(round(center[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(center[1] - side / 2), 0, height - side))
    crop = Image.fromarray(pixels[y0 : y0 + side, x0 : x0 + side])
    return crop.resize((CROP_PIXELS, CROP_PIXELS), Image.Resampling.BILINEAR)


def write_crops(
    folder: Path, stem: str, pixels: np.ndarray, objects: list[dict[str, Any]], rng: np.random.Generator
) -> None:
    """Each object, loosely framed, under its class; and patches free of objects under "background"."""
    for k, obj in enumerate(objects):
        x, y, w, h = obj["bbox"]
        side = max(w, h) * rng.uniform(1.15, 1.5)
        center = (x + w / 2 + rng.uniform(-0.1, 0.1) * side, y + h / 2 + rng.uniform(-0.1, 0.1) * side)
        square_crop(pixels, center, side).save(folder / CLASSES[obj["label"]] / f"{stem}_{k}.png")
    height, width = pixels.shape[:2]
    for k in range(BACKGROUND_CROPS):
        for _ in range(20):
            side = int(rng.integers(OBJECT_PIXELS[0], min(OBJECT_PIXELS[1], width, height) + 1))
            x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            if not any(x0 < o["_x1"] and o["_x0"] < x0 + side and y0 < o["_y1"] and o["_y0"] < y0 + side
                       for o in objects):  # fmt: skip
                square_crop(pixels, (x0 + side / 2, y0 + side / 2), side).save(
                    folder / "background" / f"{stem}_{k}.png"
                )
                break


def write_split(out: Path, split: str, count: int, photos: list[np.ndarray], rng: np.random.Generator) -> int:
    (out / split / "images").mkdir(parents=True)
    (out / split / "labels").mkdir()
    crops = out / "crops" / split
    for name in (*CLASSES, "background"):
        (crops / name).mkdir(parents=True)
    crop_rng = rng.spawn(1)[0]  # its own stream: the detection images do not depend on the crops
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        size = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        pixels = background(photos, size, rng).copy()
        objects = place_objects(pixels, rng)
        noise = rng.normal(0.0, 3.0, pixels.shape)  # sensor noise, so flat fills are not perfectly flat
        pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
        name = f"{split}_{image_id:04d}.jpg"
        Image.fromarray(pixels).save(out / split / "images" / name, quality=92)
        write_crops(crops, Path(name).stem, pixels, objects, crop_rng)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        lines = []
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["label"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
            lines.append(
                f"{obj['label']} {(x + w / 2) / size[0]:.6f} {(y + h / 2) / size[1]:.6f} "
                f"{w / size[0]:.6f} {h / size[1]:.6f}"
            )
        (out / split / "labels" / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    coco = {
        "info": {"description": f"optic shapes demo, {split} split"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    (out / split / "annotations.json").write_text(json.dumps(coco) + "\n")
    return count


def write_shapes(out: Path, seed: int, images: dict[str, int] | None = None) -> dict[str, int]:
    """`images`: images per split (default SPLIT_IMAGES); tests write a handful."""
    photos = load_backgrounds()
    counts = {}
    for offset, (split, count) in enumerate((images or SPLIT_IMAGES).items()):
        counts[split] = write_split(out, split, count, photos, np.random.default_rng([seed, offset]))
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    (out / "data.yaml").write_text(f"path: .\ntrain: train/images\nval: val/images\ntest: test/images\nnames:\n{names}")
    return counts


register_demo("detection")(write_shapes)  # registered apart, so the function keeps its own signature
