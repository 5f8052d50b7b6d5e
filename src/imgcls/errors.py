"""The one exception type that reaches users as a one-line message instead of a traceback."""


class ImgclsError(Exception):
    """Bad input or a state the user can fix; the message names the problem and the fix."""


def missing_extra(what: str, extra: str, error: ImportError) -> ImgclsError:
    """The error for a feature whose optional dependencies (an extra of the imgcls package) are not installed."""
    return ImgclsError(f"{what} needs a package that is not installed ({error.name or error}): pip install 'imgcls[{extra}]'")
