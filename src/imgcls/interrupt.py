"""Ctrl-C as a request: long-running work stops at a safe point instead of wherever the signal lands."""

import signal
import threading
from collections.abc import Callable


class CtrlC:
    """While active, the first Ctrl-C sets `pressed` (and calls `on_press`); a second one interrupts at once.

    Without this, KeyboardInterrupt can surface inside library callbacks (a process pool's
    bookkeeping, an optimizer step) and be swallowed there or leave state half-updated."""

    def __init__(self, on_press: Callable[[], None] | None = None):
        self.on_press = on_press
        self.pressed = False

    def __enter__(self) -> "CtrlC":
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C keeps its default.
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.on_press:
            self.on_press()

    def __exit__(self, *exc) -> bool:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
        return False
