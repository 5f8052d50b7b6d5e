"""Progress bars: tqdm on a terminal, its widget in a notebook (where ipywidgets is installed), none in logs."""

import sys

from tqdm.auto import tqdm


def in_notebook() -> bool:
    """Inside a Jupyter kernel, whose stderr is no terminal but shows a bar."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and "IPKernelApp" in shell.get_ipython().config
    except AttributeError:
        return False


def progress_bar(**kwargs) -> tqdm:
    """tqdm's bar, on stderr and gone once done; shown on a terminal or in a notebook, not in a log file."""
    settings = {"file": sys.stderr, "leave": False, "dynamic_ncols": True, "disable": False if in_notebook() else None}
    return tqdm(**(settings | kwargs))
