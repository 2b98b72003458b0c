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


class Unreadable(DataError):
    """Rows or files of the data that cannot be used, every one of them: `problems` holds (where, why) pairs (a
    table's data row and column, an image's path in its folder); the message names the first few and counts the
    rest, and the caller may write them all to a file (flows/preflight.py)."""

    SHOWN = 10  # problems named in the message

    def __init__(self, what: str, problems: list[tuple[str, str]], unit: str = "rows"):
        self.what, self.problems, self.unit = what, list(problems), unit
        super().__init__(self.describe())

    def describe(self, listed_in: str | None = None) -> str:
        """The message: how many, the first SHOWN, and where all of them are (`listed_in`, a file) when given."""
        n = len(self.problems)
        lines = [f"  - {where}: {why}" for where, why in self.problems[:self.SHOWN]]
        if n > self.SHOWN:
            lines.append(f"  ... and {n - self.SHOWN} more" + (f" (every one in {listed_in})" if listed_in else ""))
        elif listed_in:
            lines.append(f"  (listed in {listed_in})")
        return (f"{self.what}: {n} {self.unit if n != 1 else self.unit[:-1]} cannot be used (fix them, or set "
                f"data.skip_unreadable: true to train without them):\n" + "\n".join(lines))
