"""Stream the items of a large JSON file's top-level arrays without loading the whole file.

iNaturalist 2021's ``train.json`` describes 2.7M images in about a gigabyte of COCO-style
JSON; ``json.load`` would build several gigabytes of Python objects to keep the 27,105 that
the paper uses. This reads the file a chunk at a time and decodes one array item at a time
with the standard library's C decoder (``JSONDecoder.raw_decode``), so memory stays at one
chunk plus what the caller keeps. The standard decoder also accepts the bare ``NaN`` that
iNat's location fields hold (its README: they "can be nan"), which strict streaming parsers
such as ijson reject.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TextIO

from dva.errors import DataError

_DECODER = json.JSONDecoder()
_NON_SPACE = re.compile(r"[^ \t\n\r]")


def iter_array_items(path: Path, keys: Collection[str], *, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, item)`` for every item of the top-level arrays named in ``keys``, in file order.

    Other members are decoded item by item and dropped. A malformed file raises
    :class:`DataError` with the character offset of the fault.
    """
    try:
        with path.open(encoding="utf-8") as f:
            yield from _Scanner(f, path, chunk_chars).arrays(keys)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None


class _Scanner:
    def __init__(self, f: TextIO, path: Path, chunk_chars: int) -> None:
        self.f, self.path, self.chunk_chars = f, path, chunk_chars
        self.buf, self.pos, self.dropped, self.eof = "", 0, 0, False

    def arrays(self, keys: Collection[str]) -> Iterator[tuple[str, Any]]:
        self._expect("{")
        if self._peek() == "}":
            return
        while True:
            key = self._value()
            if not isinstance(key, str):
                raise self._error("expected a member name")
            self._expect(":")
            if self._peek() == "[":
                self.pos += 1
                for item in self._items():
                    if key in keys:
                        yield key, item
            else:
                self._value()  # a small member such as "info"
            if self._next_of(",}") == "}":
                return

    def _items(self) -> Iterator[Any]:
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            yield self._value()
            if self._next_of(",]") == "]":
                return

    def _value(self) -> Any:
        """Decode the value at the cursor, reading more of the file until it is complete."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                # A number cut by the chunk boundary decodes fine but short: want a char after it.
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    raise self._error(e.msg, self.dropped + e.pos) from None
            self._read_more()

    def _peek(self) -> str:
        """The next non-space character ('' at the end of the file), without consuming it."""
        while True:
            match = _NON_SPACE.search(self.buf, self.pos)
            if match:
                self.pos = match.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._read_more():
                return ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise self._error(f"expected {char!r}")
        self.pos += 1

    def _next_of(self, chars: str) -> str:
        char = self._peek()
        if not char or char not in chars:
            raise self._error(f"expected one of {' '.join(repr(c) for c in chars)}")
        self.pos += 1
        return char

    def _read_more(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk_chars)
        if not data:
            self.eof = True
            return True  # one more attempt, now knowing nothing follows
        self.dropped += self.pos
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def _error(self, message: str, offset: int | None = None) -> DataError:
        where = self.dropped + self.pos if offset is None else offset
        return DataError(f"{self.path}: invalid JSON at character {where}: {message} (truncated download?)")
