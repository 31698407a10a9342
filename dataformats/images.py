"""Image files as the readers find and size them: suffixes, hidden files, the upright (EXIF-rotated) size."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def is_hidden(path: Path, root: Path) -> bool:
    """Dot files and folders, and the `__MACOSX` copies macOS archives carry."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """The images in `folder` (and below it), sorted; hidden files (`._x.jpg`) left out."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image(p) and not is_hidden(p, folder) and p.is_file())


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is displayed: the header size, swapped by a rotating EXIF tag."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED:
            width, height = height, width
    return width, height
