"""The report of `trainflow variance`: each source's spread of test accuracy and its share of the variance."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import tracking
from tasks.chain.report import artifact_key, link, run_url
from tasks.results import Repeated
from tasks.summaries import Variance
from tasks.wording import spread
from trainlib import evidence, variance

MEASURE = "test_accuracy"


@task(name="variance-report")
def variance_report(name: str, run_id: str, groups: dict[str, evidence.Repeats], results: list[Repeated],
                    workspace: str) -> Variance:
    """-> the spread of each source (`groups`: source -> its repeats' measures, None where one failed)."""
    values = {s: [r[MEASURE] for r in repeats if r is not None] for s, repeats in groups.items()}
    short = [s for s, v in values.items() if len(v) < 2]
    if short:
        raise ValueError(f"too few repeats trained for a spread of {', '.join(short)}; see the failed runs")
    found = variance.shares(values)
    log = tracking.RunLogger(run_id)
    rows = [s.json() for s in found]
    pd.DataFrame(rows).to_csv(f"{workspace}/variance.csv", index=False)
    log.log_artifact(f"{workspace}/variance.csv")
    log.log_metrics({f"variance/{s.source}/{k}": getattr(s, k) for s in found for k in ("sd", "share")}, step=0)
    lines = [f"# {name}: where the spread of {MEASURE} comes from", "",
             "| source | repeats | mean | sd [95% CI] | share of the sources' variance [95% CI] |",
             "|---|---|---|---|---|",
             *[f"| {s.source} | {s.n} | {s.mean:.4f} | " + " | ".join(spread(s)) + " |" for s in found], "",
             "Each source's group moves only that source's seed (`all`: every seed at once); sd: the chi-square 95% "
             "interval; share: of the sum of the sources' variances, 95% interval by a parametric bootstrap "
             "(trainlib/variance.py).", "", link("variance run", run_id)]
    summary = Variance(run_id, MEASURE, found, [r.run.run_id for r in results if r.run],
                       [r.name for r in results if r.run is None], run_url(run_id))
    lines.insert(-2, summary.reading()[0].upper() + summary.reading()[1:] + ".\n")
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "variance"), description="variance sources")
    return summary
