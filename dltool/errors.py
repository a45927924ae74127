"""The errors a user can see. Each carries a one-line message and the exit code the CLI uses."""

from __future__ import annotations


class DltoolError(Exception):
    """Base of every error caused by the user's input or by a failed run (never by a bug).

    `everywhere` is True on an error that every process of a distributed run raises at once, after
    agreeing on it (a stop request, a non-finite loss): rank 0 alone reports it.
    """

    exit_code = 2
    everywhere = False


class ConfigError(DltoolError):
    """A config file, key, value or override is wrong."""


class RegistryError(ConfigError):
    """A component name or one of its arguments is unknown or invalid."""


class Unwritable(ConfigError):
    """A place dltool must write (a run folder, a report folder, a file in them) refuses writes:
    read-only, full, no permission, or a name too long. A run that meets it once started says so as
    a RunFailed instead."""


class RunBusy(ConfigError):
    """Another live process is training this run folder."""


class CodeError(ConfigError):
    """The user's own code (a `--code` file or an installed plugin) failed while loading.

    `details` holds the traceback of the user's frames, shown above the one-line message.
    """

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class CodeChanged(UserWarning):
    """A `--code` file differs from the one a run was trained with (the run goes on)."""


class TtaWarning(UserWarning):
    """Test-time augmentation shows the model views it never saw in training (the command goes on)."""


class ShapeError(DltoolError):
    """A layer cannot take the shape that arrives at it.

    `rows` holds the shape rows of the layers built before the failing one, so the CLI can print
    the table up to it.
    """

    def __init__(self, message: str, rows: list | None = None):
        super().__init__(message)
        self.rows = rows or []


class DataError(DltoolError):
    """A dataset is missing, empty or unusable."""


class ImageError(DltoolError):
    """An image file cannot be read."""


class CheckpointError(DltoolError):
    """A checkpoint file is missing, unsafe, damaged, or does not fit its model."""


class MissingExtra(DltoolError):
    """An optional package a command needs is not installed; the message names the extra."""


class ExportError(DltoolError):
    """`dltool export` could not write a file that computes what the checkpoint computes: a layer
    the exporter cannot translate, or outputs that differ."""

    exit_code = 1


class RunFailed(DltoolError):
    """Training started but could not go on (a non-finite loss, a device out of memory)."""

    exit_code = 1


class Interrupted(DltoolError):
    """Training was interrupted by a signal after saving its state."""

    exit_code = 130


def with_location(message: str, file: str | None = None, key: str | None = None,
                  line: int | None = None, column: int | None = None) -> str:
    """Prefix `message` with `file:line:column: key:` as far as those are known."""
    place = ""
    if file:
        place = str(file)
        if line is not None:
            place += f":{line}"
            if column is not None:
                place += f":{column}"
    prefix = ": ".join(part for part in (place, key) if part)
    return f"{prefix}: {message}" if prefix else message


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its type's name when the message is empty: what a
    library's (often multi-line) error says, in the one line a dltool message has room for."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
