"""The benchmark's images: a fixed, deterministic set of 640x480 JPEGs (quality 90), encoded once.

Photos are the scikit-image samples shipped inside the package (no download), cropped and resized a few
ways; the rest is seeded noise, smooth and harsh. The same bytes go to the raw runtime and to the service.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 640, 480
QUALITY = 90
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "coins", "moon", "brick", "grass")
NOISE_EVERY = 4  # one image in four is noise


@dataclass(frozen=True)
class BenchImage:
    name: str
    data: bytes  # the JPEG bytes


def _photo(name: str) -> np.ndarray:
    from skimage import data as samples

    array = np.asarray(getattr(samples, name)())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def _cover(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Crop `box` (fractions of the image), widened to 4:3, then resize to exactly WIDTH x HEIGHT."""
    w, h = image.size
    left, top, right, bottom = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    cw, ch = right - left, bottom - top
    if cw / ch > WIDTH / HEIGHT:  # too wide: trim the sides
        trim = (cw - ch * WIDTH / HEIGHT) / 2
        left, right = left + trim, right - trim
    else:  # too tall: trim top and bottom
        trim = (ch - cw * HEIGHT / WIDTH) / 2
        top, bottom = top + trim, bottom - trim
    return image.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR,
                        box=(round(left), round(top), round(right), round(bottom)))


# Crops of each photo: the whole frame, a zoom on the centre, a corner, a mirrored whole frame.
VARIANTS: tuple[Callable[[Image.Image], Image.Image], ...] = (
    lambda im: _cover(im, (0.0, 0.0, 1.0, 1.0)),
    lambda im: _cover(im, (0.2, 0.2, 0.8, 0.8)),
    lambda im: _cover(im, (0.0, 0.0, 0.6, 0.6)),
    lambda im: _cover(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0.0, 0.1, 1.0, 0.9)),
)


def _noise(rng: np.random.Generator, smooth: bool) -> Image.Image:
    if smooth:  # low-frequency blobs, like an out-of-focus scene
        small = rng.integers(0, 256, size=(HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    return Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def make_images(count: int = 32, seed: int = 0) -> list[BenchImage]:
    """`count` JPEGs; the same count and seed always give the same bytes (same Pillow and libjpeg)."""
    if count < 1:
        raise ValueError("count must be >= 1")
    rng = np.random.default_rng(seed)
    photos: dict[str, Image.Image] = {}
    images: list[BenchImage] = []
    photo_index = 0
    for i in range(count):
        if i % NOISE_EVERY == NOISE_EVERY - 1:
            smooth = (i // NOISE_EVERY) % 2 == 0
            image, name = _noise(rng, smooth), f"{i:02d}-noise-{'smooth' if smooth else 'harsh'}.jpg"
        else:
            source = PHOTOS[photo_index % len(PHOTOS)]
            variant = (photo_index // len(PHOTOS)) % len(VARIANTS)
            photo_index += 1
            if source not in photos:
                photos[source] = Image.fromarray(_photo(source))
            image, name = VARIANTS[variant](photos[source]), f"{i:02d}-{source}-{variant}.jpg"
        images.append(BenchImage(name, _encode(image)))
    return images


def fingerprint(images: list[BenchImage]) -> str:
    """A short digest of every byte, recorded in the results so runs can be compared like for like."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.name.encode())
        digest.update(image.data)
    return digest.hexdigest()[:16]
