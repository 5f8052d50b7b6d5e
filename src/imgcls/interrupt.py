"""Stopping on request: Ctrl-C, and the SIGTERM and SIGHUP that schedulers and closed terminals send, stop work at a
safe point or unwind it like Ctrl-C does, so that workers are stopped, locks released and temporary files removed."""

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

# What stops a training run: Ctrl-C, and what containers, Kubernetes and SLURM send to stop a job
# (SIGTERM) or a closed terminal sends (SIGHUP; absent on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt: a KeyboardInterrupt, so
    that everything which cleans up after Ctrl-C cleans up after these too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stopped(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises: KeyboardInterrupt for Ctrl-C, Stopped for the others."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def signal_of(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "signum", signal.SIGINT)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM, SIGHUP, a callback); last.pt holds the exact position to resume from.
    `signum` is the signal's number, or the callback's reason."""

    def __init__(self, run_dir, signum: int | str = signal.SIGINT):
        super().__init__(str(run_dir))
        self.run_dir, self.signum = run_dir, signum

    @property
    def why(self) -> str:
        return signal.Signals(self.signum).name if isinstance(self.signum, int) else self.signum


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


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While active (the command line's whole run), SIGTERM and SIGHUP raise Stopped in the main thread, wherever it is,
    as Ctrl-C raises KeyboardInterrupt; a second one ends the process at once. Training and decoding install their own
    handlers (CtrlC) over these, to stop at a safe point instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        for s in others:
            signal.signal(s, signal.SIG_DFL)
        raise Stopped(signum)

    others = [s for s in STOP_SIGNALS if s != signal.SIGINT]
    previous = {s: signal.signal(s, handle) for s in others}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def during(what: str, kept: str) -> Iterator[None]:
    """Says, on an interruption that passes through, what it interrupted and what is kept (for its one line); the
    innermost `during` speaks."""
    try:
        yield
    except KeyboardInterrupt as e:
        if not hasattr(e, "during"):
            e.during = (what, kept)
        raise


def describe(interrupt: KeyboardInterrupt) -> str:
    """The one line that reports an interruption: the signal, and what it interrupted and kept where known."""
    what, kept = getattr(interrupt, "during", (None, None))
    return f"interrupted ({signal_name(signal_of(interrupt))})" + (f" while {what}: {kept}" if what else "")
