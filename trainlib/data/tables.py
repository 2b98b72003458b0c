"""Tables (CSV, Parquet) read for training: the class column (given, or found), the feature columns, and every
cell that cannot be used (a text cell, a missing or infinite value, a row without a class) found in one pass and
named by its data row (1 = the first row under the header), column and value."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainlib.errors import DataError

TARGETS = ("label", "target", "class")  # a table's class column when data.target is unset: label, else a lone other


@dataclass(frozen=True)
class Table:
    """A table's usable rows: features (N, F) float32, class codes (N,), class names, feature column names, and the
    unusable rows (index, where, why) not yet ruled on (trainlib.data.sources decides: name them or skip them)."""

    x: np.ndarray
    codes: np.ndarray
    classes: list[str]
    features: list[str]
    problems: list[tuple[int, str, str]]


def target_column(columns, target: str | None) -> str | None:
    """The class column of a table with `columns`: `target` when given, else `label`, else the one of `target` and
    `class` present (None when neither or both are, or a given `target` is not there)."""
    if target is not None:
        return target if target in columns else None
    if TARGETS[0] in columns:
        return TARGETS[0]
    found = [t for t in TARGETS[1:] if t in columns]
    return found[0] if len(found) == 1 else None


def feature_columns(frame: pd.DataFrame, source: str, target: str, features: list[str] | str | None) -> list:
    """The feature columns in input order: `features` as listed, the columns matching a pattern (`features` a
    string such as `t*`, shell-style) in the table's order, or all but the target."""
    if isinstance(features, str):
        names = [c for c in frame.columns if c != target and fnmatch.fnmatchcase(str(c), features)]
        if not names:
            raise DataError(f"{source}: no column matches data.features {features!r}; columns are: "
                            f"{', '.join(map(str, frame.columns))}")
        return names
    names = list(features) if features else [c for c in frame.columns if c != target]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: feature columns not found: {', '.join(missing)}")
    return names


def read_table(path, reader: Callable[[Path], pd.DataFrame], source: str) -> pd.DataFrame:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: no such file: {file}")
    try:
        return reader(file)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{source}: cannot read {file}: {exc}") from exc


def columns(frame: pd.DataFrame, source: str, target: str | None, features: list[str] | str | None) -> Table:
    """The table's classes and features, with every unusable cell listed; a problem of a whole column (the class
    column missing, a column of text or of true/false) is a DataError at once."""
    if frame.empty:
        raise DataError(f"{source}: the table is empty (no rows)")
    found = target_column(frame.columns, target)
    if found is None:
        wanted = (f"target column {target!r} not found" if target is not None else
                  "no class column: none named label, nor a lone target or class column")
        raise DataError(f"{source}: {wanted}; set data.target to one of the columns: "
                        f"{', '.join(map(str, frame.columns))}")
    names = feature_columns(frame, source, found, features)
    if not names:
        raise DataError(f"{source}: no feature columns besides the target {found!r}")
    cells = frame[names].apply(pd.to_numeric, errors="coerce")  # a text cell becomes NaN, and is named below
    text = [c for c in names if pd.api.types.is_bool_dtype(frame[c]) or (frame[c].notna().any()
                                                                         and cells[c].isna().all())]
    if text:
        raise DataError(f"{source}: feature columns must be numeric; {', '.join(map(str, text))} "
                        f"hold{'s' if len(text) == 1 else ''} no number (e.g. {frame[text[0]].dropna().iloc[0]!r}); "
                        "leave them out with data.features")
    x = cells.to_numpy(dtype=np.float32)
    problems = []
    for row, col in np.argwhere(~np.isfinite(x)):
        value = frame[names[col]].iat[row]
        why = ("missing" if pd.isna(value) else f"{value!r} is infinite or too large" if np.isinf(x[row, col])
               else f"{value!r} is not a number")
        problems.append((int(row), f"data row {row + 1}, column {names[col]}", why))
    y = frame[found]
    problems += [(int(row), f"data row {row + 1}, column {found}", "no class (missing)")
                 for row in np.flatnonzero(y.isna().to_numpy())]
    problems.sort(key=lambda p: p[0])
    codes, uniques = pd.factorize(y, sort=True)
    return Table(x, codes, [str(u) for u in uniques], [str(n) for n in names], problems)
