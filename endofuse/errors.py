"""The exceptions the CLI turns into a single clean line (no traceback): `EndofuseError` and its subclasses.

Anything else raised under `endofuse COMMAND` is a bug and shows its traceback.
"""


class EndofuseError(Exception):
    """A user-facing error: bad input, missing file, unsupported option.

    The message must name the file / row / frame at fault; the CLI prints it as
    one line and exits non-zero.
    """

    exit_code = 1


class MissingFileError(EndofuseError, FileNotFoundError):
    """A file or folder the user named (or that a dataset lists) does not exist."""


class InvalidOptionError(EndofuseError, ValueError):
    """An option or argument value outside what it accepts; the message names the option and the valid values."""


class InvalidInputError(EndofuseError, ValueError):
    """An input that exists but cannot be used: a corrupt or foreign file, a frame of the wrong kind."""
