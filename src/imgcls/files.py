"""Writing files so that nothing is lost: atomic writes, text that keeps any file name, locks that die with their
process, and the removal of what a killed process left half-written.

It imports nothing else of imgcls, so that data/, runs and reports can write files without loading models."""

import contextlib
import errno
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; what they guard is then unguarded, and writes stay atomic
    fcntl = None

from imgcls.errors import ImgclsError

# Temporary files are named .<name>.<pid>-<anything>.tmp, so that the process that wrote one can be told from its name.
TEMPORARY = re.compile(r"^\..+\.(\d+)-[^.]*\.tmp$")
UNOWNED = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # mkstemp's names, as imgcls wrote them before they held the pid


def _file_mode() -> int:
    """What open() would give a new file under the process umask (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class WriteFailed(ImgclsError):
    """A file could not be written (a full disk, a size limit, no permission); the previous version is kept."""


def temporary_name(name: str, tag: str = "") -> str:
    """The name of a temporary file of this process beside `name` (see TEMPORARY)."""
    return f".{name}.{os.getpid()}-{tag}.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """write(file) into a temporary file in the same folder, then rename: a crash or a full disk never leaves half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_name(path.name).removesuffix(".tmp"), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_failed(path, e) from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError of its zip writer, with the OSError as its context.
        if isinstance(e, (OSError, RuntimeError)):
            raise _write_failed(path, e) from None
        raise


def _write_failed(path: Path, error: BaseException) -> WriteFailed:
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__
    reason = (cause.strerror or str(cause)) if cause is not None else str(error).splitlines()[0]
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    return WriteFailed(
        f"cannot write {printable(path.name)} in {printable(path.parent)} ({reason}); {kept}: free some space there or make it writable"
    )


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` whose process is gone (a `kill -9` in the middle of an atomic write),
    and those of older versions, which name no process; another live process's are left alone. Returns those removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = TEMPORARY.match(name)
        if (match and not _alive(int(match.group(1)))) or (not match and UNOWNED.match(name)):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
                removed.append(folder / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: not ours to judge
    return True


def printable(text: str | os.PathLike) -> str:
    """Text that any UTF-8 consumer takes (a plot, a web page): a file name's bytes that are not UTF-8 (Linux allows
    any) shown escaped, as \\xff, instead of the surrogates Python keeps them as."""
    text = os.fspath(text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_text(path: Path, text: str) -> None:
    """Atomic text write, so a reader never sees half a file. File names that are not UTF-8 are written back as the
    bytes they were (surrogateescape), so a list of skipped files names them exactly."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def write_json(path: Path, data) -> None:
    """JSON in ASCII: a name that is not UTF-8 is kept as its \\udcXX escapes, which read back as the same name."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked_file(path: Path, block: bool = True, on_wait: Callable[[IO[str] | None], None] | None = None) -> Iterator[IO[str]]:
    """An exclusive lock on `path` (created if need be) while inside, yielding the open file.

    Across processes a POSIX record lock (lockf), not flock: the kernel drops it when its process ends, however it
    ends, and unlike an flock a forked child (a decode worker) does not share it, so a worker that outlives its parent
    cannot hold it. Record locks are per process, so threads of one process also take a lock of their own first;
    it also keeps a second thread from opening and closing the file, which would drop the process's record lock.
    When another holds it: on_wait(the open file, or None when the holder is a thread of this process) is called,
    then this waits if `block`, else raises BlockingIOError. Without fcntl (Windows) only threads are locked out."""
    path = Path(path)
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())
    if not in_process.acquire(blocking=False):
        if on_wait is not None:
            on_wait(None)
        if not block:
            raise BlockingIOError(errno.EAGAIN, "locked by another thread")
        in_process.acquire()
    try:
        with open(path, "a+") as f:
            if fcntl is not None:
                _lock(f, block, on_wait)
            try:
                yield f
            finally:
                if fcntl is not None:
                    fcntl.lockf(f, fcntl.LOCK_UN)
    finally:
        in_process.release()


def _lock(f: IO[str], block: bool, on_wait) -> None:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        if on_wait is not None:
            on_wait(f)
        if not block:
            raise BlockingIOError(e.errno, "locked by another process") from None
        fcntl.lockf(f, fcntl.LOCK_EX)
