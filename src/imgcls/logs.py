"""What imgcls says while it works: the `logging` logger "imgcls" (and its children), never a bare print.

Lines at INFO (the run's description, one line per epoch, where files were saved) go to stdout, WARNING and above
(skipped files, fallbacks, interruptions) to stderr, as the message alone: the command line and a notebook show
the same lines. The console handler stands back once the program has configured logging itself (a handler on the
root logger), so nothing is said twice; the command line makes it speak regardless (`console()`).
"""

import contextlib
import logging
import sys
from collections.abc import Iterator

LOG = logging.getLogger("imgcls")


class Console(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.forced = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not self.forced and logging.getLogger().handlers:
            return
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must not raise; Handler.handleError reports it
            self.handleError(record)


CONSOLE = Console()
if not any(isinstance(h, Console) for h in LOG.handlers):  # importing twice (a reload) adds no second one
    LOG.addHandler(CONSOLE)
    LOG.setLevel(logging.INFO)


@contextlib.contextmanager
def console() -> Iterator[None]:
    """While inside, imgcls's lines are printed even where the program configured logging (the command line)."""
    CONSOLE.forced += 1
    try:
        yield
    finally:
        CONSOLE.forced -= 1
