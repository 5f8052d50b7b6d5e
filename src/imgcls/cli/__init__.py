"""The `imgcls` command line: it parses, calls imgcls's Python API, prints and sets the exit status.

Each command's module adds its parser; torch loads only once a command runs, so `imgcls --help` is quick."""

import argparse
import os
import sys

from imgcls import __version__
from imgcls.cli import autoencode, data, experiments, gan, models, train, tune, use
from imgcls.errors import ImgclsError
from imgcls.interrupt import describe, signal_of, stop_signals_raise
from imgcls.logs import console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Fast, batteries-included image classification on PyTorch.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (train, tune, use, data, models, gan, autoencode, experiments):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # File names need not be UTF-8 on Linux: printed as the bytes they are, as `ls` and `find` print them. Only the
    # process's own stdout: a caller's replacement (a notebook's, a test's capture) is not ours to change.
    if sys.stdout is sys.__stdout__ and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        with stop_signals_raise(), console():
            return args.func(args)
    except ImgclsError as e:
        from imgcls.distributed import errors

        print(f"imgcls: error: {e}", file=errors())
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP outside the phases that stop at a safe point
        print(f"\nimgcls: {describe(e)}", file=sys.stderr)
        return 128 + signal_of(e)
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(f"imgcls: error: out of memory ({str(e).splitlines()[0][:200] or type(e).__name__}): use a smaller --image-size, "
              "--batch-size or model", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the last resort for what no check foresaw: permissions, a full disk, a file in a folder's place
        where = " -> ".join(str(name) for name in (e.filename, e.filename2) if name is not None)
        print(
            f"imgcls: error: {where + ': ' if where else ''}{e.strerror or e}: check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's on a GPU (OutOfMemoryError), or its CPU allocator's RuntimeError."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(error)
