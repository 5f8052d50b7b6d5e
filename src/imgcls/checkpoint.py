"""Checkpoints: written atomically, read back with weights_only=True, checked against what they are loaded into."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError
from imgcls.models import create_model

FORMAT = "imgcls-checkpoint-v1"
KEYS = ("model", "in_shape", "classes", "mean", "std", "config", "state_dict")  # what every reader of a checkpoint uses
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng")  # what last.pt adds to its "progress" for --resume


def _file_mode() -> int:
    """What open() would give a new file under the process umask (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class WriteFailed(ImgclsError):
    """A file could not be written (a full disk, a size limit, no permission); the previous version is kept."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """write(file) into a temporary file in the same folder, then rename: a crash or a full disk never leaves half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    return WriteFailed(f"cannot write {path.name} in {path.parent} ({reason}); {kept}: free some space there or make it writable")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def resolve(path: str | os.PathLike, which: str = "best") -> Path:
    """A run folder means its best.pt (or last.pt); a file means itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt", "best.pt"):
            if (path / name).is_file():
                return path / name
        raise ImgclsError(f"{path} holds no checkpoint (best.pt or last.pt): pass a run folder made by `imgcls train` or a .pt file")
    if not path.exists():
        raise ImgclsError(f"checkpoint {path} does not exist: pass a run folder (runs/NAME) or a .pt file")
    return path


def read_file(path: Path, what: str):
    """What torch.save wrote to path, loaded with weights_only=True; a file it cannot read is one line: damaged or not `what`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or foreign files all get the same advice
        raise ImgclsError(f"cannot read {path} ({type(e).__name__}): it is damaged or not {what}") from None


def read_tagged(path: Path, fmt: str, what: str, fix: str) -> dict:
    """A dict saved with {"format": fmt} (read_file); anything else is one line saying it is not `what`, and `fix`."""
    ckpt = read_file(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ImgclsError(f"{path} is not {what}: {fix}")
    return ckpt


def load(path: str | os.PathLike, which: str = "best") -> dict:
    path = resolve(path, which)
    ckpt = read_tagged(path, FORMAT, "an imgcls checkpoint", "pass a run folder or a best.pt/last.pt written by `imgcls train`")
    missing = [key for key in (*KEYS, *(RESUME_KEYS if "progress" in ckpt else ())) if key not in ckpt]
    if missing:
        raise ImgclsError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it was edited or written by another version; retrain or use the run's own best.pt"
        )
    ckpt["path"] = str(path)
    return ckpt


def load_model(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode on `device`."""
    model = create_model(ckpt["model"], tuple(ckpt["in_shape"]), len(ckpt["classes"]), **ckpt.get("model_options", {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ImgclsError(
            f"{ckpt['path']} does not match model '{ckpt['model']}' with {len(ckpt['classes'])} classes ({str(e).splitlines()[0]}): "
            "the file was edited or written by another version; retrain or use the run's own best.pt"
        ) from None
    return model.to(device).eval()


def normalisation(ckpt: dict, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's mean and std as C x 1 x 1 tensors, ready to normalise a batch."""
    return (
        torch.tensor(ckpt["mean"], device=device).view(-1, 1, 1),
        torch.tensor(ckpt["std"], device=device).view(-1, 1, 1),
    )
