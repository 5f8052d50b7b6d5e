"""The one exception type that reaches users as a one-line message instead of a traceback."""


class ImgclsError(Exception):
    """Bad input or a state the user can fix; the message names the problem and the fix."""
