"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with 2."""


class TrainflowError(Exception):
    """A problem with the user's input (config, data, files): one readable message, exit code 2."""


class ConfigError(TrainflowError, ValueError):
    """A config value is wrong. Also a ValueError so pydantic validators can raise it."""


class DataError(TrainflowError):
    """A dataset, file or column is missing or unusable."""


class Interrupted(RuntimeError):
    """The training was told to stop before its end (trainlib.loop.stoppable)."""


class TrainingError(RuntimeError):
    """Training itself failed (for example the loss became NaN): exit code 1, not bad input."""
