"""The one exception type the CLI turns into a single clean line (no traceback)."""


class EndofuseError(Exception):
    """A user-facing error: bad input, missing file, unsupported option.

    The message must name the file / row / frame at fault; the CLI prints it as
    one line and exits non-zero.
    """

    exit_code = 1
