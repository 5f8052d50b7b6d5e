"""Ctrl-C as a request: long-running work stops at a safe point instead of wherever the signal lands."""

import signal
import threading
from collections.abc import Callable

# What stops a training run: Ctrl-C, and what containers, Kubernetes and SLURM send to stop a job
# (SIGTERM) or a closed terminal sends (SIGHUP; absent on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class CtrlC:
    """While active, the first Ctrl-C (or other signal in `signals`) sets `pressed` and `signum` and calls
    `on_press(signum)`; a second one acts as it would without this: Ctrl-C interrupts at once, SIGTERM ends the process.

    Without this, KeyboardInterrupt can surface inside library callbacks (a process pool's
    bookkeeping, an optimizer step) and be swallowed there or leave state half-updated."""

    def __init__(self, on_press: Callable[[int], None] | None = None, signals: tuple[int, ...] = (signal.SIGINT,)):
        self.on_press, self.signals = on_press, signals
        self.pressed = False
        self.signum: int | None = None

    def __enter__(self) -> "CtrlC":
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C keeps its default.
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum, frame) -> None:
        self.pressed, self.signum = True, signum
        for s in self.signals:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        if self.on_press:
            self.on_press(signum)

    def __exit__(self, *exc) -> bool:
        if self.active:
            for s, handler in self.previous.items():
                signal.signal(s, handler)
        return False
