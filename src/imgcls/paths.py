"""Where imgcls keeps datasets and caches on this machine."""

import os
from pathlib import Path

import platformdirs


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $IMGCLS_DATA, else a per-user cache folder."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("IMGCLS_DATA"):
        return Path(os.environ["IMGCLS_DATA"]).expanduser()
    return Path(platformdirs.user_cache_dir("imgcls")) / "data"


def cache_dir() -> Path:
    """Decoded image folders live here: $IMGCLS_CACHE, else a per-user cache folder."""
    if os.environ.get("IMGCLS_CACHE"):
        return Path(os.environ["IMGCLS_CACHE"]).expanduser()
    return Path(platformdirs.user_cache_dir("imgcls")) / "folders"


def offline() -> bool:
    """IMGCLS_OFFLINE=1 forbids downloads (the test suite sets it)."""
    return os.environ.get("IMGCLS_OFFLINE", "") not in ("", "0")
