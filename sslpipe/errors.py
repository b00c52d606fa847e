"""The one exception type for problems with the user's input, files or settings."""


class SslpipeError(Exception):
    """A problem the user can fix; the message names the file, key or setting at fault.

    The command line prints the message without a traceback and exits with status 2.
    """
