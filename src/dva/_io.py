"""Atomic file writes.

A crash (or a full disk) in the middle of writing a checkpoint, a config or an index must
never leave a broken file where a good one was: we write to a temporary file in the same
directory, flush it to disk, then ``os.replace`` it over the target, which POSIX makes atomic.
A write that fails (no space left, no permission) raises :class:`dva.errors.WriteError`
naming the file; the previous version stays in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dva.errors import DataError, WriteError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it over ``target`` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _write_error(target, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(target, e) from e
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def partial_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden sibling folder ``.NAME.partial-XXXX`` to build ``target`` in, then rename into place.

    It is locked (``flock`` on the folder) while this process builds in it, so the next build of
    ``target`` can tell a folder left by a killed process from one in use, and removes the
    former. On exit it is removed unless it was renamed. A parent that cannot be written is a
    :class:`WriteError`.
    """
    target = Path(target)
    remove_abandoned_partials(target)
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
    except OSError as e:
        raise WriteError(f"{target}: cannot create it ({e.strerror or e})") from e
    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.close(fd)


def remove_abandoned_partials(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.NAME.partial-*`` folders of ``target`` that no live process holds."""
    target = Path(target)
    removed = []
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        try:
            fd = os.open(partial, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # being built right now
        else:
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
        finally:
            os.close(fd)
    return removed


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and flush it, so a crash loses at most the line being written."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _write_error(Path(path), e) from e


def _write_error(target: Path, error: OSError) -> WriteError:
    return WriteError(f"{target}: cannot write ({error.strerror or error}); the previous version, if any, is unchanged")


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSON-lines text, split at ``\n`` only.

    ``str.splitlines`` also splits at U+2028, U+2029, U+0085 and other characters that JSON
    allows raw inside a string: one such character in a label broke an index for good.
    """
    return text.split("\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-blank line of the JSON-lines file ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return list(jsonl_objects(jsonl_lines(text), path))


def jsonl_objects(lines: Iterable[str], path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines text read from ``path``.

    A line that is not JSON, or not a JSON object, raises :class:`DataError` naming the file
    and line: a list of images or boxes with a broken line is a mistake to fix, not to skip.
    Split the text with :func:`jsonl_lines`, not ``str.splitlines``.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {line.strip()[:60]!r}")
        yield number, obj
