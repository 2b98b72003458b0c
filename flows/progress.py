"""Live terminal progress for training: a rich progress bar per epoch with the current metrics."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)  # stdout stays clean for --json


class EpochProgress:
    """A trainlib callback showing one bar over the epochs, with the last epoch's metrics beside it."""

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

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.start()  # no-op once started
        shown = [f"loss {metrics['train_loss']:.4f}", f"acc {metrics['train_accuracy']:.3f}"]
        if "val_loss" in metrics:
            shown += [f"val_loss {metrics['val_loss']:.4f}", f"val_acc {metrics['val_accuracy']:.3f}"]
        shown.append(f"lr {metrics['lr']:.2e}")
        self.progress.update(self.task, completed=epoch, metrics="  ".join(shown))
