"""Progress that listens to the events of tasks/events.py: in a terminal a live bar; in a log (stderr is not a
terminal: a file, a pipe, a supervisor) one plain line per epoch or finished run, so the log keeps the history."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.events import Claimed, Epoch, Event, Finished, RowsRead

# Progress and logs: stderr, so stdout stays clean for --json. Soft wrap: a long line (a URL) stays whole in a log.
console = Console(stderr=True, soft_wrap=True)
# A finished command's summary goes to stdout (`trainflow run > log` keeps it); soft wrap keeps a long line
# (a URL) whole when stdout is not a terminal, where rich would otherwise cut it at 80 columns.
# Its tables are 120 columns wide in a log (rich would make them 80), as wide as the terminal in one.
summary_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)


class _Bar:
    """A rich bar in a terminal, started by the first event (not while data is prepared); elsewhere nothing
    live: `show` prints each event as one line instead."""

    def __init__(self, description: str, total: int | None, field: str):
        self.live = console.is_terminal
        self.description, self.total, self.done = description, total, 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(f"{{task.fields[{field}]}}"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(description, total=total, **{field: ""})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress.live.is_started:
            self.progress.stop()

    def show(self, done: int, text: str, **fields) -> None:
        self.done = done
        if self.live:
            self.progress.start()  # no-op once started
            self.progress.update(self.task, completed=done, **fields)
        else:
            console.print(f"{self.description} {done}/{self.total or '?'}  {text}", highlight=False)


class EpochProgress(_Bar):
    """Over the epochs of a training (its `epoch` events), with the last epoch's metrics."""

    def __init__(self, epochs: int, description: str = "training"):
        super().__init__(description, epochs, "metrics")

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Epoch):
            return
        epoch, metrics = event.epoch, event.metrics
        shown = [f"loss {metrics['train_loss']:.4f}", f"acc {metrics['train_accuracy']:.4f}"]
        if "val_loss" in metrics:
            shown += [f"val_loss {metrics['val_loss']:.4f}", f"val_acc {metrics['val_accuracy']:.4f}"]
        shown.append(f"lr {metrics['lr']:.3g}")
        if not self.live and "epoch_seconds" in metrics:
            shown.append(f"{metrics['epoch_seconds']:.1f} s")
        text = "  ".join(shown)
        self.show(epoch, text, metrics=text)


class RunProgress(_Bar):
    """Over the trials (variants, ensemble members) of a fan-out flow, advanced by each `finished` event."""

    def __init__(self, total: int | None, description: str):
        super().__init__(description, total, "last")

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Finished):
            return
        done = event
        shown = f"{done.value:.4f}" if isinstance(done.value, float) else done.state
        self.show(self.done + 1, f"{done.name}: {shown}", last=f"last: {done.name} {shown}")


class StudyProgress(_Bar):
    """Over the claims of the technique study (`claim` events), with each training of their comparisons
    (`finished` events) as the last thing done."""

    def __init__(self, total: int):
        super().__init__("study", total, "last")

    def __call__(self, event: Event) -> None:
        if isinstance(event, Claimed):
            row = event.result
            text = f"{row.name}: {row.verdict} ({row.seconds:.0f} s)"
            self.show(self.done + 1, text, last=text)
        elif isinstance(event, Finished):
            done = event
            text = f"  {done.name}: " + (f"{done.value:.4f}" if isinstance(done.value, float) else done.state)
            self.show(self.done, text, last=text.strip())


class RowProgress(_Bar):
    """Over the rows of a batch scoring (`rows` events); in a log, a line per tenth."""

    def __init__(self, total: int):
        super().__init__("scoring", total, "last")
        self.tenth = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RowsRead):
            return
        done, total = event.done, event.total
        tenth = done * 10 // max(total, 1)
        if self.live or tenth > self.tenth:
            self.tenth = tenth
            self.show(done, "rows read", last="")
