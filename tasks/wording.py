"""How results read, in every table and summary (CLI, Prefect artifacts, CSV): the one rounding rule (the
registration's sentence: tasks/results.py). Pure (no Prefect or MLflow import): the CLI prints with it, and
importing it must not load Prefect before the command's temporary API has started."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: the CLI imports this module before anything heavy
    from trainlib.evidence import Contrast, Estimate, Group
    from trainlib.variance import Share

NOT_REGISTERED = "not registered (register.enabled is false: --no-register)"


# One rounding rule for every table (CLI, Prefect artifacts, CSV): hyperparameters such as learning rates
# to 3 significant digits, times to 2 decimals (shown with 1: a run of 0.04 s is not recorded as 0), epochs as
# whole numbers (a mean of them to 1 decimal), every other float (a metric: accuracy, loss, F1) to 4 decimals.
def _is_hyperparameter(key: str) -> bool:
    return "." in key or key.endswith("lr")  # config keys (optimizer.lr, model.dropout) and lr, backbone_lr


def rounded(value, key: str = ""):
    """`value` (of the column `key`) rounded by the one rule; anything but a float as it is."""
    if not isinstance(value, numbers.Real) or isinstance(value, numbers.Integral) or value != value:  # NaN stays
        return value
    value = float(value)  # numpy's too
    if key.endswith(("seconds", "per_second", "per_cpu_minute")):
        return round(value, 2)
    if "epoch" in key:  # MLflow keeps best_epoch as a float metric; a mean of epochs keeps one decimal
        return int(value) if value.is_integer() else round(value, 1)
    if _is_hyperparameter(key):
        return float(f"{value:.3g}")
    return round(value, 4)


def shown(value, key: str = "") -> str:
    """`value` as table text: metrics always with 4 decimals (1.0000, never 1.0), '-' for none."""
    value = rounded(value, key)
    if value is None:
        return "-"
    if isinstance(value, float) and not _is_hyperparameter(key):
        coarse = key.endswith(("seconds", "per_second", "per_cpu_minute")) or "epoch" in key
        return f"{value:.1f}" if coarse else f"{value:.4f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cells(row: dict, keys) -> list[str]:
    """The row's `keys` as table text (CLI tables and markdown rows alike)."""
    return [shown(row.get(k), k) for k in keys]


def markdown_row(row: dict, keys) -> str:
    return "| " + " | ".join(cells(row, keys)) + " |"


def rounded_row(row: dict, keys=None) -> dict:
    """The row with each value rounded by its key (only `keys`, None where the row has none, if given)."""
    if keys is None:
        return {k: rounded(v, k) for k, v in row.items()}
    return {k: rounded(row.get(k), k) for k in keys}


def with_interval(estimate: Estimate | None, key: str) -> str:
    """A mean and its 95% interval as table text, `0.9712 ± 0.0061` (the half-width), or the mean alone for one
    repeat."""
    if estimate is None:
        return "-"
    if estimate.ci_low is None:
        return shown(estimate.mean, key)
    return f"{shown(estimate.mean, key)} ± {shown((estimate.ci_high - estimate.ci_low) / 2, key)}"


def difference(c: Contrast) -> str:
    """A paired difference with its interval, `+0.0123 [+0.0050, +0.0196]`."""
    if c.diff is None:
        return "-"

    def signed(v):
        text = shown(v, c.metric)
        return text if text.startswith("-") else f"+{text}"

    if c.ci_low is None:
        return signed(c.diff)
    return f"{signed(c.diff)} [{signed(c.ci_low)}, {signed(c.ci_high)}]"


def chance(c: Contrast) -> str:
    """The probability the treatment is better with its 95% interval, `0.67 [0.21, 0.94]`, or '-'."""
    if c.p_better is None:
        return "-"
    return f"{c.p_better:.2f} [{c.p_better_low:.2f}, {c.p_better_high:.2f}]"


def power(c: Contrast) -> str:
    """What more repeats would tell, for a contrast they did not decide: the smallest difference these detect
    (80% power) and the repeats its equivalence margin needs."""
    if c.detectable is None:
        return ""
    needed = (f"; {c.repeats_needed} would detect ±{shown(c.margin, c.metric)}" if c.repeats_needed else
              f"; more than 1000 would be needed for ±{shown(c.margin, c.metric)}" if c.margin else "")
    return f"{c.n} repeats detect {shown(c.detectable, c.metric)}{needed}"


def rounded_group(g: Group) -> dict[str, Any]:
    """A group's summary as JSON (`--json`, reports) with every statistic rounded by its measure's rule."""
    return {k: ({s: rounded(v, k) for s, v in e.items()} if isinstance(e, dict) else e) for k, e in g.json().items()}


def rounded_contrast(c: Contrast) -> dict[str, Any]:
    """A contrast as JSON, its difference, interval, margin and detectable difference rounded by its metric's rule,
    its probabilities to 4 decimals."""
    return {k: rounded(v, c.metric) if k in ("diff", "ci_low", "ci_high", "margin", "detectable") else rounded(v)
            for k, v in c.json().items()}


def spread(s: Share) -> tuple[str, str]:
    """A source's spread (trainflow variance) as two cells: its sd, `0.0141 [0.0084, 0.0404]`, and its share of
    the variance, `0.77 [0.27, 0.96]` (`-` for `all`)."""
    share = f"{s.share:.2f} [{s.share_low:.2f}, {s.share_high:.2f}]" if s.share is not None else "-"
    return f"{s.sd:.4f} [{s.sd_low:.4f}, {s.sd_high:.4f}]", share
