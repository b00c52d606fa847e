"""The one exception type for problems with the user's input, files or settings, and how a
failed write is put in its message."""

import errno


class SslpipeError(Exception):
    """A problem the user can fix; the message names the file, key or setting at fault.

    The command line prints the message without a traceback and exits with status 2.
    """


def describe_os_error(error: OSError, path) -> str:
    """A failed write in words, naming `path`: "no space left on out/run" for a full disk."""
    if error.errno == errno.ENOSPC:
        return f"no space left on {path}"
    if error.errno == errno.EDQUOT:
        return f"disk quota exceeded on {path}"
    return f"cannot write to {path}: {error.strerror or error}"
