"""Live terminal progress: rich progress bars that listen to the events of tasks/events.py."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.events import Event

console = Console(stderr=True)  # progress and logs: stderr, so stdout stays clean for --json
# A finished command's summary goes to stdout (`trainflow run > log` keeps it); soft wrap keeps a long line
# (a URL) whole when stdout is not a terminal, where rich would otherwise cut it at 80 columns.
summary_console = Console(soft_wrap=True)


class EpochProgress:
    """A bar over the epochs of a training (its `epoch` events), with the last epoch's metrics beside it."""

    def __init__(self, epochs: int, description: str = "training"):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.task = self.progress.add_task(description, total=epochs, metrics="")

    def __enter__(self):
        return self  # the bar appears with the first finished epoch, not while data is prepared

    def __exit__(self, *exc):
        if self.progress.live.is_started:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind != "epoch":
            return
        epoch, metrics = event.data["epoch"], event.data["metrics"]
        self.progress.start()  # no-op once started
        shown = [f"loss {metrics['train_loss']:.4f}", f"acc {metrics['train_accuracy']:.3f}"]
        if "val_loss" in metrics:
            shown += [f"val_loss {metrics['val_loss']:.4f}", f"val_acc {metrics['val_accuracy']:.3f}"]
        shown.append(f"lr {metrics['lr']:.2e}")
        self.progress.update(self.task, completed=epoch, metrics="  ".join(shown))


class RunProgress:
    """A bar over the trials (variants, ensemble members) of a fan-out flow, advanced by each `finished`
    event."""

    def __init__(self, total: int | None, description: str):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(description, total=total, last="")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress.live.is_started:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind != "finished":
            return
        result = event.data["record"]
        self.progress.start()
        name = result.get("label") or f"trial {result.get('number')}"
        metrics = result.get("metrics", {})  # trials report a value; variants and ensemble members metrics
        value = metrics.get("best_val_accuracy", metrics.get("val_accuracy", result.get("value")))
        shown = f"{value:.4f}" if isinstance(value, float) else result.get("state", "done")
        self.progress.update(self.task, advance=1, last=f"last: {name} {shown}")
