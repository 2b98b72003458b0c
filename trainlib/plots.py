"""Matplotlib figures: learning curves, LR schedule, confusion matrix, augmentation grid, comparisons, ensembles,
drift.

Figures are built with matplotlib.figure.Figure (no pyplot state), so they are safe in threads and
need no display. Save them with `fig.savefig(path)`.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure

from trainlib.evidence import Group

LABEL_WRAP = 40  # characters on a line of a variant's label beside a chart


def learning_curves(history: list[dict[str, float]], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, train and validation."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], marker=".", label=split)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def lr_schedule(lrs: list[float], updates_per_epoch: int) -> Figure:
    """The LR of every update, on an epoch axis."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(lrs)) / max(updates_per_epoch, 1), lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule")
    ax.grid(alpha=0.3)
    return fig


def confusion(matrix: np.ndarray, classes: list[str]) -> Figure:
    """Confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    k = len(classes)
    fig = Figure(figsize=(1.5 + 0.5 * k, 1.2 + 0.5 * k), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title="confusion matrix")
    ax.set_xticklabels(classes, rotation=90 if k > 12 else 0)
    ax.set_yticklabels(classes)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")
    return fig


def reliability(bins: list[tuple[float, float, int]]) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin (trainlib.card.reliability), the
    diagonal where they are equal; the marker's area grows with the bin's samples."""
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="as often right as confident")
    if bins:
        confidence, accuracy, count = (np.array(x, dtype=float) for x in zip(*bins, strict=True))
        ax.plot(confidence, accuracy, color="tab:blue", linewidth=1)
        ax.scatter(confidence, accuracy, s=10 + 200 * count / count.max(), color="tab:blue", label="test samples")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def augmentation_grid(grid: torch.Tensor, value_max: float) -> Figure:
    """Grid of (rows, samples, C, H, W) images: first row originals, then augmented versions."""
    rows, cols = grid.shape[:2]
    fig = Figure(figsize=(1.2 * cols, 1.2 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    images = (grid.detach().float().cpu() / value_max).clamp(0, 1)
    for r in range(rows):
        for c in range(cols):
            img = images[r, c].permute(1, 2, 0).numpy()
            axes[r, c].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
        axes[r, 0].set_title("original" if r == 0 else f"augmented {r}", fontsize=8, loc="left")
    return fig


def signal_traces(grid: torch.Tensor) -> Figure:
    """Traces of (rows, samples, C, L) signals, one panel per sample: the original (first row) in black, each
    augmented version over it in colour; several channels one above another."""
    rows, samples, channels, length = grid.shape
    grid = grid.detach().float().cpu().numpy()
    cols = min(samples, 3)
    fig = Figure(figsize=(4 * cols, 2.2 * math.ceil(samples / cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(samples / cols), cols, squeeze=False)).reshape(-1)
    step = 3 * float(grid[0].std()) or 1.0  # vertical offset between channels
    for s, ax in enumerate(axes):
        if s >= samples:
            ax.set_axis_off()
            continue
        for r in range(rows):
            for c in range(channels):
                ax.plot(grid[r, s, c] - c * step, color="black" if r == 0 else f"C{r - 1}",
                        lw=1.4 if r == 0 else 0.9, alpha=1 if r == 0 else 0.75,
                        label=("original" if r == 0 else f"augmented {r}") if c == 0 else None)
        ax.set(xlim=(0, length - 1), yticks=[])
    axes[0].legend(fontsize=7, loc="upper right")
    fig.supxlabel("time step", fontsize=9)
    return fig


def compare_curves(histories: dict[str, list[list[dict[str, float]]]]) -> Figure:
    """Validation loss and accuracy per epoch of several variants, overlaid: each the mean over its repeats'
    histories (name -> [history, ...]) with a band of one standard deviation where there are several. A repeat
    that stopped early counts up to its last epoch."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("val_loss", "val_accuracy"), strict=True):
        for name, repeats in histories.items():
            by_epoch: dict[int, list[float]] = {}
            for history in repeats:
                for h in history:
                    if metric in h:
                        by_epoch.setdefault(h["epoch"], []).append(h[metric])
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            mean = np.array([np.mean(by_epoch[e]) for e in epochs])
            line, = ax.plot(epochs, mean, marker=".", label=f"{name} (mean of {len(repeats)})" if len(repeats) > 1
                            else name)
            if len(repeats) > 1:
                std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(histories), 4),
               fontsize=8)
    return fig


def compare_means(summary: list[Group], measures: tuple[str, ...]) -> Figure:
    """Each variant's mean of every measure with its 95% interval as an error bar (rows of
    trainlib.evidence.summarize); a variant with one repeat has a dot and no bar."""
    labels = _wrapped([s.label for s in summary])
    fig = Figure(figsize=(5 * len(measures) + _label_room(labels), _height(labels)), layout="constrained")
    for ax, m in zip(np.atleast_1d(fig.subplots(1, len(measures))), measures, strict=True):
        _means(ax, summary, m, labels if ax is fig.axes[0] else [])
    return fig


Row = tuple[str, float | None, float | None, float | None, str]  # label, difference, its 95% interval, verdict


def forest(rows: list[Row], measure: str, margin: float | None, baseline: str) -> Figure:
    """The paired difference of every treatment to the baseline with its 95% interval, against zero and the
    equivalence margin (shaded), its verdict beside it: one row per treatment."""
    labels = _wrapped([r[0] for r in rows])
    fig = Figure(figsize=(6 + _label_room(labels), _height(labels)), layout="constrained")
    _forest(fig.subplots(), rows, measure, margin, baseline, labels)
    return fig


def claim(summary: list[Group], rows: list[Row], measure: str, margin: float | None, baseline: str,
          title: str) -> Figure:
    """A claim of the technique study: each variant's mean (left) and each treatment's paired difference to the
    baseline (right: what the verdict is on), under the claim's text wrapped to the figure's width."""
    labels = _wrapped([s.label for s in summary])
    width = 11 + _label_room(labels)
    fig = Figure(figsize=(width, _height(labels) + 0.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _means(left, summary, measure, labels)
    _forest(right, rows, measure, margin, baseline, _wrapped([r[0] for r in rows]))
    fig.suptitle(textwrap.fill(title, int(width * 12)), fontsize=9)  # about 12 characters an inch at 9 points
    return fig


def _wrapped(labels: list[str]) -> list[str]:
    return [textwrap.fill(label, LABEL_WRAP, break_on_hyphens=False) for label in labels]


def _label_room(labels: list[str]) -> float:
    """Inches for the labels beside the first axes: long ones collapsed the axes to nothing before."""
    return 0.065 * max((len(line) for label in labels for line in label.splitlines()), default=0)


def _height(labels: list[str]) -> float:
    row_height = max(0.45, 0.16 * max((label.count("\n") + 1 for label in labels), default=1))
    return max(3.0, row_height * len(labels) + 1.5)


def _means(ax, summary: list[Group], measure: str, labels: list[str]) -> None:
    for y, row in enumerate(summary):
        e = row.estimates.get(measure)
        if not e:
            continue
        err = None if e.ci_low is None else [[e.mean - e.ci_low], [e.ci_high - e.mean]]
        ax.errorbar([e.mean], [y], xerr=err, fmt="o", capsize=4, color="C0")
    ax.set(yticks=range(len(summary)), title=f"{measure}: mean, 95% interval", xlabel=measure)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")


def _forest(ax, rows: list[Row], measure: str, margin: float | None, baseline: str, labels: list[str]) -> None:
    if margin:
        ax.axvspan(-margin, margin, color="C2", alpha=0.15, label=f"equivalence margin ±{margin:g}")
    ax.axvline(0, color="black", linewidth=0.8)
    for y, (_, diff, low, high, verdict) in enumerate(rows):
        if diff is None:
            continue
        err = None if low is None else [[diff - low], [high - diff]]
        ax.errorbar([diff], [y], xerr=err, fmt="o", capsize=4, color="C1")
        ax.annotate(verdict, (1.01, y), xycoords=("axes fraction", "data"), fontsize=8, va="center")
    ax.set(yticks=range(len(rows)), xlabel="difference")
    ax.set_title(textwrap.fill(f"{measure}: treatment - {baseline}, 95% interval", 60), fontsize=10)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    if margin:
        ax.legend(fontsize=7, loc="lower right")


def compare_lrs(schedules: dict[str, tuple[list[float], int]]) -> Figure:
    """The LR of every update of several runs (name -> (lrs, updates per epoch)), on an epoch axis."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, (lrs, per_epoch) in schedules.items():
        ax.plot(np.arange(len(lrs)) / max(per_epoch, 1), lrs, label=name)
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedules", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def ensemble_scores(scores: dict[str, dict[str, float | None]]) -> Figure:
    """Validation and test accuracy of every member and of the ensemble (name -> {val_accuracy, test_accuracy})."""
    names = list(scores)
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(names)), 0.38
    for offset, metric in ((-width / 2, "val_accuracy"), (width / 2, "test_accuracy")):
        values = [scores[n].get(metric) or 0.0 for n in names]
        bars = ax.bar(x + offset, values, width, label=metric.replace("_", " "))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    low = min((v for s in scores.values() for v in (s.get("val_accuracy"), s.get("test_accuracy")) if v), default=0)
    ax.set(xticks=x, ylabel="accuracy", title="members and ensemble", ylim=(max(0.0, low - 0.05), 1.02))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="lower right")
    return fig


def disagreement(matrix: np.ndarray, names: list[str]) -> Figure:
    """Pairwise disagreement of members: the share of test samples on which two members predict differently."""
    k = len(names)
    fig = Figure(figsize=(2.5 + 0.6 * k, 2 + 0.6 * k), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Oranges", vmin=0)
    ax.set(xticks=range(k), yticks=range(k), title="pairwise disagreement (test)")
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def transfer_comparison(rows: list[dict]) -> Figure:
    """Test accuracy and epochs of each run of the transfer demo (rows: {run, test_accuracy, best_epoch})."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    names = [r["run"] for r in rows]
    for ax, key, label in zip(fig.subplots(1, 2), ("test_accuracy", "best_epoch"), ("test accuracy", "best epoch"),
                              strict=True):
        bars = ax.bar(names, [r[key] or 0 for r in rows], color=["grey", *["tab:blue"] * (len(rows) - 1)])
        ax.bar_label(bars, fmt="%.3f" if key == "test_accuracy" else "%d", fontsize=8)
        ax.set(title=label)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    return fig


def lr_sweep(lrs: list[float], losses: list[float], raw: list[float], suggestion: float | None) -> Figure:
    """The LR range test: the loss of every update against its LR (log scale), smoothed and as measured, with the
    suggested LR marked."""
    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, raw, color="lightgrey", linewidth=1, label="loss")
    ax.plot(lrs, losses, label="smoothed")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1, label=f"suggested {suggestion:.3g}")
    top = max(losses[: max(1, len(losses) // 2)]) * 1.5  # the divergence would flatten the interesting part
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test",
           ylim=(min(losses) * 0.9, top))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def drift(names: list[str], train_mean: list[float], train_std: list[float], mean: list[float],
          std: list[float]) -> Figure:
    """Per channel or feature: the training split's mean ± std beside the scored data's (at most 40 shown)."""
    names, n = names[:40], min(len(names), 40)
    fig = Figure(figsize=(max(5.0, 0.5 * n + 2), 4.0), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(n), 0.38
    for offset, label, m, s in ((-width / 2, "training", train_mean, train_std), (width / 2, "scored", mean, std)):
        ax.bar(x + offset, m[:n], width, yerr=s[:n], capsize=3, label=f"{label} (mean ± std)")
    ax.set(xticks=x, ylabel="raw value", title="inputs: training data against the scored data")
    ax.set_xticklabels(names, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return fig
