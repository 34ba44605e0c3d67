"""Stop training cleanly on Ctrl-C or SIGTERM.

The first signal only raises a flag; the trainer checks it between optimizer steps, writes a
resume checkpoint at that exact position and stops. A second signal interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

#: What ``signal.signal`` accepts and returns (typeshed's private ``_HANDLER``).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class GracefulInterrupt:
    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, SignalHandler] = {}

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second signal: give up on the clean stop
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
