"""Uploads that are small on the wire and huge once decoded, for measuring `dva serve`'s caps.

The caps in :mod:`dva.serve.limits` are set against such files; ``scripts/probe_serve_limits.py``
measures what they cost a real server and ``tests/test_serve_resources.py`` checks the targets
(docs/product.md, "Threat model and limits"). Both build their payloads here.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def handmade_png(width: int, height: int, color_type: int, bit_depth: int, row: bytes, *, level: int = 1) -> bytes:
    """A PNG whose every scanline is ``row``, written by hand.

    PIL takes seconds to encode a 1 x 40M image; this takes 0.2 s, and allows shapes and bit
    depths (16-bit gray, a 1-pixel-wide strip) that are the decoder's worst cases.
    ``color_type`` and ``bit_depth`` are the PNG header's (0 gray, 2 RGB, 6 RGBA).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = (b"\x00" + row) * height  # filter byte 0 (None) before every scanline
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """``image`` saved in ``fmt`` (PIL's name: "JPEG", "WEBP", ...) with PIL's save options, as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
