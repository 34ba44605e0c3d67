"""Decoding images robustly.

Real galleries hold truncated downloads, CMYK JPEGs, 16-bit grayscale, palette PNGs with
transparency and files that are not images at all. Every image becomes RGB here, and every
failure becomes an :class:`ImageDecodeError` that names the file, so callers can count and
skip it instead of crashing a long job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from dva.errors import DataError

#: Refuse images above this many pixels (decompression bombs); PIL's own limit warns only.
MAX_IMAGE_PIXELS = 89_478_485
#: Refuse images with a side above this, or longer than ``MAX_ASPECT`` times their other side:
#: a 1 x 39,999,999 PNG is 76 KB and under every pixel cap, yet resizing it cost 10 GB.
MAX_SIDE = 20_000
MAX_ASPECT = 16
#: Larger images are shrunk (box filter, by an integer factor) until their longest side is at
#: most this before any tensor is built: every model's resize (at most ~600 px) sees 3x more.
WORK_SIDE = 2048
#: Formats whose decoders hold several full-size buffers (bytes a pixel, measured: libwebp ~15,
#: OpenJPEG ~16, libavif ~8), and the decode memory an untrusted image (``shrink=True``) may
#: cost: a 40 MP WebP cost 580 MB, so these are capped at about 17, 16 and 33 MP.
DECODE_BYTES_PER_PIXEL = {"WEBP": 15, "JPEG2000": 16, "AVIF": 8}
MAX_DECODE_BYTES = 256 * 1024 * 1024
#: Bytes of one strip when an image is shrunk (see :func:`shrink_large`).
_STRIP_BYTES = 16 * 1024 * 1024
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"}


class ImageDecodeError(DataError):
    """An image file that cannot be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


def load_image(
    path: str | Path | BinaryIO,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    name: str | None = None,
    shrink: bool = False,
) -> Image.Image:
    """Open, fully decode, orient (EXIF) and convert to RGB; raise :class:`ImageDecodeError`.

    ``path`` may also be a binary file object (an upload); ``name`` then names it in errors.
    With ``shrink``, an image larger than :data:`WORK_SIDE` is shrunk while it is decoded
    (JPEG's DCT scaling) or right after, before any colour conversion, so a query costs
    about its decoded size once, not three times. Training keeps the full size (its boxes
    are in the original pixels); its transform shrinks the same way (:func:`shrink_large`).
    """
    if name is None:
        name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_size(image.width, image.height, max_pixels=max_pixels, name=name)
                if shrink:
                    _check_decode_cost(image, name)
                if shrink and image.format == "JPEG":
                    factor = work_factor(image.size)
                    if factor > 1:
                        image.draft(image.mode, (-(-image.width // factor), -(-image.height // factor)))
                image.load()  # decode now: truncated files fail here, not later in a worker
                if shrink:
                    image = shrink_large(image)
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data (a fuzz test found AttributeError, ...)
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def check_size(width: int, height: int, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str = "image") -> None:
    """Refuse, from the header alone, what would cost more to decode or resize than it is worth."""
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width}x{height} exceeds the {max_pixels:,} pixel limit")
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(f"{name}: {width}x{height} has a side over the {MAX_SIDE:,} pixel limit")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageTooLargeError(
            f"{name}: {width}x{height} is more elongated than the 1:{MAX_ASPECT} aspect ratio limit"
        )


def _check_decode_cost(image: Image.Image, name: str) -> None:
    cost = DECODE_BYTES_PER_PIXEL.get(image.format or "")
    if cost and image.width * image.height * cost > MAX_DECODE_BYTES:
        limit = MAX_DECODE_BYTES // cost
        raise ImageTooLargeError(
            f"{name}: {image.width}x{image.height} exceeds the {limit:,} pixel limit of {image.format} images "
            "(their decoder needs several full-size buffers)"
        )


def work_factor(size: tuple[int, int]) -> int:
    """The integer factor that brings the longest side to at most :data:`WORK_SIDE`."""
    return max(1, math.ceil(max(size) / WORK_SIDE))


def shrink_large(image: Image.Image) -> Image.Image:
    """``image`` with its longest side brought to at most :data:`WORK_SIDE` (box filter); small images unchanged.

    Done a strip of rows at a time: ``reduce`` copies RGBA images whole (premultiplied), and
    palette, 1-bit and 16-bit images need converting first; a strip bounds both copies.
    """
    factor = work_factor(image.size)
    if factor == 1:
        return image
    rows = max(1, _STRIP_BYTES // (image.width * 4 * factor)) * factor
    strips = []
    for top in range(0, image.height, rows):
        strip = image.crop((0, top, image.width, min(top + rows, image.height)))
        strips.append((strip if strip.mode in _REDUCIBLE else _reducible(strip)).reduce(factor))
    out = Image.new(strips[0].mode, (strips[0].width, sum(s.height for s in strips)))
    out.info = {k: v for k, v in image.info.items() if k != "transparency"}  # keeps EXIF orientation
    top = 0
    for strip in strips:
        out.paste(strip, (0, top))
        top += strip.height
    return out


def _reducible(image: Image.Image) -> Image.Image:
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image.convert("RGBA")


def release_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise, and a server's
    resident size would only ever grow with the largest images it has seen)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (dropping alpha would reveal hidden pixels)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255.
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray((values / peak * 255).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")
