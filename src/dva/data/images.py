"""Decoding images robustly.

Real galleries hold truncated downloads, CMYK JPEGs, 16-bit grayscale, palette PNGs with
transparency and files that are not images at all. Every image becomes RGB here, and every
failure becomes an :class:`ImageDecodeError` that names the file, so callers can count and
skip it instead of crashing a long job.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from dva.errors import DataError

#: Refuse images above this many pixels (decompression bombs); PIL's own limit warns only.
MAX_IMAGE_PIXELS = 89_478_485


class ImageDecodeError(DataError):
    """An image file that cannot be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


def load_image(
    path: str | Path | BinaryIO, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None
) -> Image.Image:
    """Open, fully decode, orient (EXIF) and convert to RGB; raise :class:`ImageDecodeError`.

    ``path`` may also be a binary file object (an upload); ``name`` then names it in errors.
    """
    if name is None:
        name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {image.width}x{image.height} exceeds the {max_pixels:,} pixel limit"
                    )
                image.load()  # decode now: truncated files fail here, not later in a worker
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


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
