"""The model card of a registered version: what it was trained on, how, how well, at what cost, where it came from,
and what it is for; written as markdown (the version's description in the MLflow registry, the terminal) and as a
one-page HTML file.

Every number is one the run logged; the intervals are computed here from the run's logged test predictions: a
percentile bootstrap over the test samples (BOOTSTRAPS resamples, a fixed seed, so the card reads the same every
time it is made). The ECE, which resampling biases upward, gets the basic bootstrap interval instead; an accuracy of
exactly 1 or 0, where the bootstrap has nothing to resample, the exact (Clopper-Pearson) binomial interval. The
tasks side (tasks/registry/card.py) gathers a Card from MLflow; this module only computes and writes.
"""

from __future__ import annotations

import base64
import html
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainlib.metrics import ece, of_confusion

BOOTSTRAPS, SEED, LEVEL = 1000, 0, 0.95
WEAKEST, CONFUSED = 3, 3  # classes named as the weakest (lowest F1), class pairs named as the most confused
SHOWN = ("test_accuracy", "test_f1", "test_ece")  # the metrics given with bootstrap intervals


@dataclass(frozen=True)
class Estimate:
    """A logged metric and its bootstrap interval over the test samples (None where the predictions were not
    logged)."""

    value: float
    low: float | None = None
    high: float | None = None

    def shown(self) -> str:
        interval = f" [{self.low:.4f}, {self.high:.4f}]" if self.low is not None else ""
        return f"{self.value:.4f}{interval}"


@dataclass(frozen=True)
class ClassScore:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class SplitCounts:
    """One split's samples of each class, in the card's class order."""

    split: str
    per_class: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.per_class)


@dataclass(frozen=True)
class TrainedOn:
    """What a version was trained on: the source (and its file), the data's digest, its classes and their counts per
    split, the seeds set (config key -> value as recorded)."""

    source: str | None
    path: str | None
    digest: str | None
    classes: tuple[str, ...]
    counts: tuple[SplitCounts, ...]
    seeds: dict[str, str]


def split_counts(manifest: pd.DataFrame, classes: list[str]) -> tuple[SplitCounts, ...]:
    """Each split's class counts from a split manifest (labels as class indices), train, val, test where present."""
    out = []
    for split in ("train", "val", "test"):
        labels = manifest.loc[manifest["split"] == split, "label"].to_numpy()
        if len(labels):
            out.append(SplitCounts(split, tuple(int(n) for n in np.bincount(labels, minlength=len(classes)))))
    return tuple(out)


@dataclass(frozen=True)
class Card:
    """One registered version's card. Sections a field is None for say so ("not recorded")."""

    model: str
    version: int
    aliases: list[str]
    run_id: str
    run_url: str
    data: TrainedOn
    changes: list[tuple[str, Any, Any, str]]  # (key, value, default, meaning): the config's differences
    size: tuple[int, int] | None  # (parameters, bytes of the model file)
    metrics: dict[str, Estimate]
    per_class: list[ClassScore]
    confused: list[tuple[str, str, int]]  # (true class, predicted as, test samples)
    calibration: dict[str, float]  # test_ece, and with temperature scaling temperature, test_ece_uncalibrated
    reliability: list[tuple[float, float, int]]  # per confidence bin: (mean confidence, accuracy, samples)
    cost: dict[str, float]  # train_wall_seconds, train_cpu_seconds, stopped_epoch, train_peak_memory_mb, ...
    lineage: list[tuple[str, str]]  # (what, which): parent run, transfer source, ensemble members, the gate
    alias_history: list[str]
    intended_use: str | None = None
    limitations: str | None = None
    notes: list[str] = field(default_factory=list)  # what could not be read, said once
    made: str = ""  # when (UTC, to the second)

    @property
    def weakest(self) -> list[ClassScore]:
        """The WEAKEST classes of lowest F1, of those below a perfect 1."""
        return sorted((c for c in self.per_class if c.f1 < 1), key=lambda c: (c.f1, c.name))[:WEAKEST]

    def json(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = {k: asdict(v) for k, v in self.metrics.items()}
        out["weakest"] = [c.name for c in self.weakest]
        return out

    def markdown(self) -> str:
        return "\n".join(_markdown(self))

    def html(self, reliability_png: bytes | None = None) -> str:
        return _html(self, reliability_png)


def bootstrap(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, classes: int,
              resamples: int = BOOTSTRAPS, seed: int = SEED) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals of test accuracy, macro F1 and ECE over the test samples."""
    rng, n = np.random.default_rng(seed), len(labels)
    draws = {"test_accuracy": [], "test_f1": [], "test_ece": []}
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        y, p, c = labels[i], predicted[i], confidence[i]
        confusion = np.bincount(y * classes + p, minlength=classes * classes).reshape(classes, classes)
        draws["test_accuracy"].append(float((y == p).mean()))
        present = confusion.sum(1) > 0  # a class no resampled sample has would count as F1 0: left out
        draws["test_f1"].append(float(of_confusion(confusion)[2][present].mean()))
        draws["test_ece"].append(ece(y == p, c))
    tail = (1 - LEVEL) / 2 * 100
    out = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in draws.items()}
    # binned ECE grows when samples repeat (a resample's bins hold fewer distinct samples): the percentile interval
    # sits above the point; the basic bootstrap interval (2 x point - the percentiles) corrects for that bias
    point, (low, high) = ece(labels == predicted, confidence), out["test_ece"]
    out["test_ece"] = (max(0.0, 2 * point - high), 2 * point - low)
    right = int((labels == predicted).sum())
    if right in (0, n):  # no mistake (or no hit) to resample: the bootstrap's interval is a point; Clopper-Pearson's
        bound = ((1 - LEVEL) / 2) ** (1 / n)  # exact interval, e.g. 269 of 269 right: [0.9864, 1]
        out["test_accuracy"] = (bound, 1.0) if right == n else (0.0, 1 - bound)
    return out


def most_confused(labels: np.ndarray, predicted: np.ndarray, classes: list[str],
                  top: int = CONFUSED) -> list[tuple[str, str, int]]:
    """The `top` (true, predicted) pairs of different classes with the most test samples, most first."""
    k = len(classes)
    confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    np.fill_diagonal(confusion, 0)
    order = np.argsort(-confusion, axis=None, kind="stable")[:top]
    return [(classes[i // k], classes[i % k], int(confusion.flat[i])) for i in order if confusion.flat[i] > 0]


def reliability(right: np.ndarray, confidence: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    """Per bin of confidence with samples in it: (mean confidence, accuracy, samples): the reliability diagram."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append((float(confidence[mask].mean()), float(right[mask].mean()), int(mask.sum())))
    return out


def differences(values: dict[str, Any], defaults: dict[str, Any],
                meanings: dict[str, str]) -> list[tuple[str, Any, Any, str]]:
    """The config keys whose value differs from the default: (key, value, default, meaning), in key order. `name`,
    data.source and data.path are left out (the card's data section names them)."""
    skip = {"name", "data.source", "data.path"}
    return [(k, v, defaults.get(k), meanings.get(k, "")) for k, v in sorted(values.items())
            if k not in skip and k in defaults and str(v) != str(defaults[k])]


def _markdown(c: Card) -> list[str]:
    aliases = ", ".join(f"@{a}" for a in c.aliases) or "no alias"
    out = [f"# Model card: {c.model} version {c.version}", "",
           f"Made by trainflow at {c.made} from MLflow run [{c.run_id}]({c.run_url}), when the version held {aliases} "
           f"(the aliases move: `trainflow models {c.model}` says who holds each now). The sections *Intended use* "
           f"and *Limitations* are a person's: `trainflow card {c.model} --intended-use TEXT --limitations TEXT`.",
           ""]
    d = c.data
    out += ["## Trained on", "", f"- source: {d.source} {d.path or ''}".rstrip(), f"- dataset digest: `{d.digest}`",
            f"- seeds: {_pairs(d.seeds)}"]
    if d.counts:
        out += ["", "| split | " + " | ".join(d.classes) + " | total |", "|---|" + "---|" * (len(d.classes) + 1)]
        out += [f"| {s.split} | " + " | ".join(map(str, s.per_class)) + f" | {s.total} |" for s in d.counts]
    out += ["", "## How", ""]
    out += [f"- `{k}`: {v} (default {dflt}){f': {m}' if m else ''}" for k, v, dflt, m in c.changes] or [
        "- the default config"]
    if c.size:
        out.append(f"- model size: {c.size[0]:,} parameters, {c.size[1]:,} bytes")
    out += ["", "## How well (test split; 95% bootstrap intervals over its samples)", "",
            "| metric | value |", "|---|---|", *[f"| {k} | {e.shown()} |" for k, e in c.metrics.items()]]
    if c.per_class:
        weakest = ", ".join(f"{w.name} ({w.f1:.3f})" for w in c.weakest)
        out += ["", f"Weakest classes (F1): {weakest}." if weakest else "Every class has F1 1 on the test split."]
    if c.confused:
        out.append("Most confused: " + ", ".join(f"{t} taken for {p} ({n})" for t, p, n in c.confused) + ".")
    if c.per_class:
        out += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
                *[f"| {s.name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |" for s in c.per_class]]
    out += ["", "## Calibration", "", _calibration_line(c)]
    out += ["", "## Cost", "", _pairs(c.cost) or "not recorded"]
    out += ["", "## Lineage", "", *[f"- {what}: {which}" for what, which in c.lineage]]
    if c.alias_history:
        out += ["", "Alias history so far:", "", *[f"- {line}" for line in c.alias_history]]
    out += ["", "## Intended use", "", c.intended_use or "*not filled in*", "",
            "## Limitations", "", c.limitations or "*not filled in*"]
    if c.notes:
        out += ["", "---", *[f"*{n}*" for n in c.notes]]
    return out


def _calibration_line(c: Card) -> str:
    cal = c.calibration
    if "test_ece" not in cal:
        return "Not recorded (the run logged no test_ece)."
    line = f"Expected calibration error {cal['test_ece']:.4f} (15 confidence bins; 0: as often right as confident)"
    if "temperature" in cal:
        before = cal.get("test_ece_uncalibrated")
        line += (f"; temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation split)" +
                 (f" from {before:.4f}" if before is not None else ""))
    return line + "."


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _html(c: Card, png: bytes | None) -> str:
    """One self-contained page: the markdown's content as HTML, the reliability diagram inline."""
    body = []
    in_table = False
    for line in _markdown(c):
        if line.startswith("|"):
            cells = [html.escape(x.strip()) for x in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" +
                        "".join(f"<{tag}>{x}</{tag}>" for x in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
            if line == "## Calibration" and png:
                body.append(f'<img alt="reliability diagram" src="data:image/png;base64,'
                            f'{base64.b64encode(png).decode()}">')
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:32em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(c.model)} version {c.version}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
