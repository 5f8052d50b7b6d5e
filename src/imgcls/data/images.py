"""Decoding one image file into the uint8 C x H x W layout every imgcls model eats.

Training folders, `predict` and `serve` share this, so a file is preprocessed the same way in all three, and a file
that cannot be decoded is that one file's ImageReadError in all three.
"""

import ctypes
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from imgcls.options import MAX_PIXELS  # a small file can declare a huge image: refused from its header, before any pixel is decoded

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # 16/32-bit integer and float pixels
BAND_PIXELS = 1 << 20  # deep pixels are scaled to 8-bit this many at a time, so the float temporaries stay a few MB

# Pillow logs some hostile files' faults ("More samples per pixel than can be decoded") before raising; the exception
# is reported with the file's name, and without a handler Python would print the bare log line on stderr too.
logging.getLogger("PIL").addHandler(logging.NullHandler())
LOG = logging.getLogger(__name__)


def _libtiff_to_logging():
    """libtiff prints its warnings and errors ("ZIPDecode: ZLib error") straight to stderr, from C, with no file name;
    the failure they explain is already the file's ImageReadError. Its handlers are set to log them at debug level
    instead. The message is formatted by the C library's vsnprintf: a va_list goes through ctypes as a pointer on the
    ABIs Pillow ships for (x86-64, arm64, Windows). Without libtiff, or its symbols, nothing changes."""
    try:
        from PIL import _imaging

        imaging, libc = ctypes.CDLL(_imaging.__file__), ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        setters = imaging.TIFFSetWarningHandler, imaging.TIFFSetErrorHandler  # found in _imaging's dependencies
    except (ImportError, OSError, AttributeError):
        return None

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
    def handler(module, fmt, args):
        text = ctypes.create_string_buffer(1024)
        libc.vsnprintf(text, len(text), fmt, args)
        LOG.debug("libtiff: %s: %s", (module or b"").decode(errors="replace"), text.value.decode(errors="replace"))

    for setter in setters:
        setter.restype = ctypes.c_void_p
        setter(handler)
    return handler  # kept alive: libtiff calls it for the life of the process


_LIBTIFF_HANDLER = _libtiff_to_logging()


class ImageReadError(ValueError):
    """Why one image cannot be decoded ("TypeName: message"): the caller skips or reports that image and goes on."""


class ImageTooLarge(ImageReadError):
    """An image of more than MAX_PIXELS pixels."""


@contextmanager
def decoding() -> Iterator[None]:
    """Turns any exception while opening or decoding one image into that image's ImageReadError, whatever its type:
    fuzzed files make Pillow raise TypeError and OverflowError, not only OSError and ValueError.
    MemoryError too; KeyboardInterrupt is no Exception and still stops the program."""
    try:
        with warnings.catch_warnings():
            # Pillow's warnings name no file and ask nothing of the user: a DecompressionBombWarning is moot under
            # MAX_PIXELS, the palette-transparency one is harmless. (catch_warnings is not thread-safe: decoding
            # threads that interleave can at worst leave this filter installed.)
            warnings.filterwarnings("ignore", module=r"PIL\.")
            yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # Pillow's own check, at twice Image.MAX_IMAGE_PIXELS, fires inside Image.open
        raise ImageTooLarge(f"image too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, the limit is {MAX_PIXELS:,}") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ImageReadError(f"{type(e).__name__}: {e}") from e


def check_size(image: Image.Image) -> None:
    """Refuse an image over MAX_PIXELS from its header: an opened image has decoded no pixel yet."""
    if image.width * image.height > MAX_PIXELS:
        raise ImageTooLarge(f"image too large: {image.width}x{image.height} pixels, the limit is {MAX_PIXELS:,}")


def is_grey(mode: str) -> bool:
    return mode in GREY_MODES


def _to_8bit(image: Image.Image) -> Image.Image:
    """A deep image as L, scaled (not clipped): 16-bit values by 255/65535 unless they all fit in 8 bits, float
    values by 255/max (at least 1). Band by band in float32, never a float64 copy of the whole image."""
    width, height = image.size
    step = max(1, BAND_PIXELS // max(width, 1))
    bands = [(y, min(y + step, height)) for y in range(0, height, step)]

    def band(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)))  # read-only

    def finite_max(top: int, bottom: int) -> float:
        pixels = band(top, bottom)
        return float(np.max(pixels, initial=0, where=np.isfinite(pixels)))  # a float image may hold NaN or infinity

    high = max((finite_max(*rows) for rows in bands), default=0.0)
    scale = np.float32(255 / (max(high, 1.0) if image.mode == "F" else 65535 if high > 255 else 255))
    out = np.empty((height, width), np.uint8)
    for top, bottom in bands:
        pixels = band(top, bottom).astype(np.float32)
        with np.errstate(all="ignore"):  # float images' extremes overflow to infinity: clipped below like the rest
            pixels *= scale
        np.nan_to_num(pixels, copy=False)  # NaN to 0, infinities to the float32 limits
        out[top:bottom] = np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels)
    return Image.fromarray(out)


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (1 channel) or RGB (3), scaling 16/32-bit pixels instead of clipping them."""
    if image.mode in DEEP_MODES:
        image = _to_8bit(image)
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)  # convert copies even to the same mode


def load_image(image: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """An opened PIL image to uint8 C x H x W: upright (EXIF), in the wanted mode, resized and centre-cropped to `size`
    (H, W). Refused over MAX_PIXELS; any failure is an ImageReadError."""
    with decoding():
        check_size(image)
        if size is not None and image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (size[1], size[0]))  # decode JPEGs at reduced scale: much faster
        if image.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even an upright image
            image = ImageOps.exif_transpose(image)
        # Deep images are grey: made RGB after the resize, not at full size (the same pixels, a third of the memory).
        image = to_mode(image, 1 if image.mode in DEEP_MODES else channels)
        if size is not None and image.size != (size[1], size[0]):
            image = ImageOps.fit(image, (size[1], size[0]), Image.Resampling.BILINEAR)
        image = to_mode(image, channels)
        array = np.asarray(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


SPECIAL_FILES = {
    stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}  # fmt: skip


def _regular_file(path: str | os.PathLike) -> IO[bytes]:
    """The file opened for reading, refused unless it is a regular file (or a link to one): opening a named pipe
    waits for a writer forever, and a device can be endless. Opened non-blocking, then checked on the open file, so
    nothing can swap the file in between."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        kind = SPECIAL_FILES.get(stat.S_IFMT(os.stat(path).st_mode)) if os.path.exists(path) else None
        if kind:  # a socket cannot be opened at all
            raise ImageReadError(f"not a regular file: {kind}") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageReadError(f"not a regular file: {SPECIAL_FILES.get(stat.S_IFMT(mode), 'a special file')}")
    return os.fdopen(fd, "rb")


@contextmanager
def open_image(source: str | os.PathLike | IO[bytes], formats: list[str] | None = None) -> Iterator[Image.Image]:
    """Image.open of a path, which must name a regular file (_regular_file), or of a binary file object. Failures
    are left to `decoding` to turn into the file's ImageReadError."""
    if isinstance(source, (str, os.PathLike)):
        with _regular_file(source) as f, Image.open(f, formats=formats) as image:
            yield image
    else:
        with Image.open(source, formats=formats) as image:
            yield image


def read_image(path: str | Path | IO[bytes], channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """A file (or binary file object) to uint8 C x H x W, as load_image; any failure is an ImageReadError."""
    with decoding(), open_image(path) as image:
        return load_image(image, channels, size)


def upright(path: str | Path | IO[bytes]) -> Image.Image:
    """A file's whole image, decoded and turned upright by its EXIF orientation (what an overlay is drawn on); any
    failure is an ImageReadError."""
    with decoding(), open_image(path) as image:
        check_size(image)
        image = ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image
        image.load()
        return image


def peek(path: str | Path | IO[bytes]) -> tuple[str, tuple[int, int]]:
    """Mode and (H, W) from the file header, without decoding the pixels; refused over MAX_PIXELS, any failure an ImageReadError."""
    with decoding(), open_image(path) as image:
        check_size(image)
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations that swap width and height
            width, height = height, width
        return image.mode, (height, width)
