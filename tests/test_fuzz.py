"""Fuzzing what strangers send (issue 13): mutated images of every format Pillow writes, through
the upload decoder, and mutated gallery lists through their readers.

Fixed seeds, a few hundred cases each, and a time cap: a failure reproduces, and a slow
machine runs fewer cases instead of timing out. Every case must end as a decoded RGB image or
as the one error type callers handle (``ImageDecodeError`` -> 413/415; ``DataError`` -> exit 2).
"""

from __future__ import annotations

import io
import random
import time

import pytest
from PIL import Image

from dva.data.images import ImageDecodeError, load_image
from dva.errors import DataError
from dva.index.gallery import read_gallery

#: Corrupt TIFF tags and the deprecated IM format make Pillow warn; only the outcome matters here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

CASES = 400
SECONDS = 20.0
#: Format -> the mode it is written in (Pillow's writers, not every mode suits every format).
FORMATS = {
    "PNG": "RGBA",
    "JPEG": "RGB",
    "GIF": "P",
    "BMP": "RGB",
    "TIFF": "RGB",
    "WEBP": "RGB",
    "ICO": "RGBA",
    "PPM": "RGB",
    "TGA": "RGB",
    "PCX": "RGB",
    "SGI": "RGB",
    "IM": "RGB",
    "JPEG2000": "RGB",
    "QOI": "RGB",
    "DDS": "RGBA",
    "EPS": "RGB",
    "PDF": "RGB",
    "XBM": "1",
    "MSP": "1",
    "SPIDER": "F",
    "BLP": "RGB",
}


def _seeds() -> dict[str, bytes]:
    seeds = {}
    base = Image.effect_mandelbrot((24, 16), (-2, -1, 1, 1), 30).convert("RGB")
    for fmt, mode in FORMATS.items():
        buffer = io.BytesIO()
        try:
            base.convert(mode).save(buffer, format=fmt)
        except (KeyError, OSError, ValueError):
            continue  # not writable in this Pillow build
        seeds[fmt] = buffer.getvalue()
    return seeds


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        at = rng.randrange(len(data)) if data else 0
        if kind < 0.4 and data:  # flip bytes, often in the header where sizes live
            at = rng.randrange(min(len(data), 64)) if rng.random() < 0.6 else at
            data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif kind < 0.6:  # truncate
            del data[at:]
        elif kind < 0.8:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 32))
        else:  # duplicate a chunk
            end = min(len(data), at + rng.randint(1, 256))
            data[at:at] = data[at:end] * rng.randint(1, 4)
    return bytes(data)


def test_mutated_images_decode_or_fail_cleanly():
    seeds = _seeds()
    assert {"PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"} <= set(seeds)
    rng = random.Random(13)
    start = time.monotonic()
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(CASES):
        if time.monotonic() - start > SECONDS:
            break
        fmt = list(seeds)[case % len(seeds)]
        data = _mutate(seeds[fmt], rng)
        case_start = time.monotonic()
        try:
            image = load_image(io.BytesIO(data), name=f"case {case} ({fmt})", max_pixels=40_000_000, shrink=True)
        except ImageDecodeError:
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case} ({fmt}): {type(e).__name__}: {e}")
        else:
            assert image.mode == "RGB" and max(image.size) <= 2048
            outcomes["decoded"] += 1
        assert time.monotonic() - case_start < 5, f"case {case} ({fmt}) took too long"
    assert sum(outcomes.values()) >= min(CASES, 100) and outcomes["decoded"] and outcomes["refused"]


LIST_SEEDS = {
    "list.csv": 'path,label,sku\nphotos/a.jpg,gull,A1\n"photos/b c.jpg","tern, arctic",B2\n',
    "list.tsv": "path\tlabel\nphotos/a.jpg\tgull\n",
    "list.jsonl": '{"path": "photos/a.jpg", "label": "gull", "tags": ["x", {"y": 1}]}\n{"path": "photos/b.jpg"}\n',
}
ODD = [
    "\x00",
    "\ufeff",
    "\u2028",
    "\x85",
    "\r",
    "\n",
    '"',
    ",",
    "\t",
    "{",
    "[" * 3000,
    "\\",
    "\\ud800",
    "\udcff",
    "é",
    "x" * 140_000,
    "..",
    "/",
    "~",
]


def test_mutated_gallery_lists_read_or_fail_with_one_data_error(tmp_path):
    rng = random.Random(2028)
    start = time.monotonic()
    cases = 0
    while cases < CASES and time.monotonic() - start < SECONDS:
        name, text = rng.choice(list(LIST_SEEDS.items()))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(ODD) + text[at + rng.randint(0, 3) :]
        path = tmp_path / name
        if rng.random() < 0.1:
            path.write_bytes(text.encode("utf-8", "surrogatepass")[: rng.randrange(1, 200)] + b"\xff\xfe")
        else:
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            read_gallery(path)
        except DataError as e:
            assert "\n" not in str(e).strip() or "\n" in name, str(e)
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name} {text[:200]!r}: {type(e).__name__}: {e}")
        cases += 1
    assert cases >= 100
