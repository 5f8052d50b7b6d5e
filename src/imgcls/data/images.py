"""Decoding one image file into the uint8 C x H x W layout every imgcls model eats.

Training folders and `predict` share this, so a file is preprocessed the same way in both.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError)


def is_grey(mode: str) -> bool:
    return mode in GREY_MODES


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (1 channel) or RGB (3), scaling 16/32-bit pixels instead of clipping them."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and pixels.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(pixels.max(initial=0)), 1.0)
        image = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    return image.convert("L" if channels == 1 else "RGB")


def load_image(image: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image to uint8 C x H x W: upright (EXIF), in the wanted mode, resized and centre-cropped to `size` (H, W)."""
    if size is not None and image.format == "JPEG":
        image.draft("L" if channels == 1 else "RGB", (size[1], size[0]))  # decode JPEGs at reduced scale: much faster
    image = ImageOps.exif_transpose(image)
    image = to_mode(image, channels)
    if size is not None and image.size != (size[1], size[0]):
        image = ImageOps.fit(image, (size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image(path: str | Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    with Image.open(path) as image:
        return load_image(image, channels, size)


def peek(path: str | Path) -> tuple[str, tuple[int, int]]:
    """Mode and (H, W) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations that swap width and height
            width, height = height, width
        return image.mode, (height, width)
