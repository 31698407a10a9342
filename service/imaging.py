"""Decode untrusted image bytes safely and resize them the way the model was trained.

Decoding refuses, with a message naming the file: empty bodies, bytes that are not an image, corrupt or
truncated files, and images over a pixel limit (checked from the header, before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage
from service.metadata import InputSpec, Preprocessing

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright, possibly reduced by JPEG draft decoding
    width: int  # original size, in the coordinates results are reported in
    height: int
    filename: str


@dataclass(frozen=True)
class Geometry:
    """Maps model-input pixels back to original-image pixels: x_orig = (x_in - pad_x) / scale_x."""

    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0


def decode_image(
    data: bytes, *, filename: str, max_pixels: int, draft_size: tuple[int, int] | None = None
) -> DecodedImage:
    """Decode bytes to an upright RGB image. `draft_size` lets JPEG decoding skip detail the model
    cannot use: DCT scaling keeps at least twice the requested size, like Pillow's `reducing_gap`."""
    if not data:
        raise InvalidImage(f"{filename}: the file is empty")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's process-global one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{filename}: {width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} (OPTIC_MAX_IMAGE_PIXELS)"
                )
            orientation = image.getexif().get(0x0112, 1)
            if draft_size is not None and image.format == "JPEG" and orientation == 1:
                image.draft("RGB", (draft_size[0] * 2, draft_size[1] * 2))
            image.load()
    except (ImageTooLarge, InvalidImage):
        raise
    except UnidentifiedImageError:
        raise InvalidImage(f"{filename}: not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{filename}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{filename}: corrupt or truncated image ({exc})") from None
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        width, height = image.size
    if image.mode != "RGB":
        image = image.convert("RGB")
    return DecodedImage(image=image, width=width, height=height, filename=filename)


def to_model_input(decoded: DecodedImage, spec: InputSpec, prep: Preprocessing) -> tuple[np.ndarray, Geometry]:
    """Resize to the graph's input size: uint8 CHW plus the geometry to map outputs back."""
    target_w, target_h = spec.width, spec.height
    image = decoded.image
    resample = _RESAMPLE[prep.interpolation]
    if prep.resize == "stretch":
        resized = image.resize((target_w, target_h), resample)
        geometry = Geometry(decoded.width, decoded.height, target_w / decoded.width, target_h / decoded.height)
    else:
        scale = min(target_w / decoded.width, target_h / decoded.height)
        new_w = max(1, round(decoded.width * scale))
        new_h = max(1, round(decoded.height * scale))
        pad_x, pad_y = (target_w - new_w) // 2, (target_h - new_h) // 2
        resized = Image.new("RGB", (target_w, target_h), (prep.pad_value,) * 3)
        resized.paste(image.resize((new_w, new_h), resample), (pad_x, pad_y))
        geometry = Geometry(decoded.width, decoded.height, new_w / decoded.width, new_h / decoded.height, pad_x, pad_y)
    array = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(array), geometry
