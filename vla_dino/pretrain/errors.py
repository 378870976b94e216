"""The pretraining run's expected failures, each with its own exit code.

`python -m vla_dino.pretrain` prints these as one `error: <message>` line on stderr and exits
with `exit_code` (no traceback unless `--debug`); anything else is a bug and keeps its traceback
(exit 1). The classes also derive from the builtin a caller would expect (ValueError for bad
values, FileExistsError for an occupied run folder), so `except ValueError` keeps working.
"""

from __future__ import annotations

EXIT_UNEXPECTED = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class PretrainError(Exception):
    """An expected failure with a message that says what to do."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(PretrainError, ValueError):
    """A bad flag, override or config value (nothing was run)."""

    exit_code = 2


class DataError(PretrainError, ValueError):
    """The frames cannot feed the run: none readable, too few for a batch, or the run ran out of
    readable frames (a checkpoint was saved first)."""

    exit_code = 3


class ResumeError(PretrainError, RuntimeError):
    """A checkpoint cannot be used: missing, damaged, incompatible with the config, or already
    past the requested step."""

    exit_code = 4


class OutputExistsError(ResumeError, FileExistsError):
    """The output folder already holds a run and --resume was not given."""


class CheckpointWriteError(ResumeError, OSError):
    """A checkpoint could not be written (disk full, permissions); the previous ones are intact."""


class DeviceError(PretrainError, RuntimeError):
    """The requested device is not available on this machine."""

    exit_code = 5


class NonFiniteLossError(PretrainError, RuntimeError):
    """Raised after `train.max_nonfinite_steps` consecutive NaN/inf steps (state already saved)."""

    exit_code = 6


EXIT_CODES = {
    "config": ConfigError.exit_code,
    "data": DataError.exit_code,
    "checkpoint / resume / output folder": ResumeError.exit_code,
    "device": DeviceError.exit_code,
    "non-finite loss": NonFiniteLossError.exit_code,
    "SIGINT": EXIT_SIGINT,
    "SIGTERM": EXIT_SIGTERM,
}


class CheckpointMissingError(ResumeError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class CheckpointDamagedError(ResumeError, ValueError):
    """A checkpoint file that is empty, truncated, fails its checksum or does not load."""
