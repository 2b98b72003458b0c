"""The technique study's report: one table (technique, claim, measure, baseline and treatment as mean and 95%
interval, the paired difference with its interval, the verdict), a figure per entry, and a paragraph of facts per
entry; as Markdown and as one self-contained HTML page (figures inlined), written to a folder of the project,
logged to the study's MLflow run and summarized as a Prefect artifact."""

from __future__ import annotations

import base64
import html
import time
from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import settings, tracking
from tasks.chain.report import link, run_url
from tasks.summaries import ClaimResult, Study
from tasks.wording import difference, shown
from trainlib import plots
from trainlib.claims import Interval, Treated
from trainlib.evidence import Contrast, Estimate, margin_of

COLUMNS = ("technique", "claim", "measure", "baseline", "treatment", "difference [95% CI]", "P(better) [95% CI]",
           "verdict (test)", "repeats to decide", "CPU s per training (baseline, treatment)")


def interval(e: Interval, measure: str) -> str:
    """`0.9712 [0.9650, 0.9774]`, the mean alone without an interval, `-` without a value."""
    if e.mean is None:
        return "-"
    if e.ci_low is None:
        return shown(e.mean, measure)
    return f"{shown(e.mean, measure)} [{shown(e.ci_low, measure)}, {shown(e.ci_high, measure)}]"


def cells(row: ClaimResult) -> list[str]:
    if row.judgement is None:
        return [row.technique, row.claim, row.measure, "-", "-", "-", "-", f"failed: {row.error}", "-", "-"]
    m, j = row.measure, row.judgement
    return [row.technique, row.claim, m, f"{j.baseline.label}: {interval(j.baseline.estimate, m)}",
            f"{j.worst.arm.label}: {interval(j.worst.arm.estimate, m)}", signed(j.worst.diff, m),
            better(j.worst), f"{row.verdict} ({j.worst.test})" if j.worst.test else row.verdict, to_decide(row),
            cost(j.baseline.cpu, j.worst.arm.cpu)]


def cost(baseline: Interval | None, treatment: Interval | None) -> str:
    """The arms' mean CPU seconds per training, `4.1, 6.3`, or '-' where not measured (an ensemble's, a search's)."""
    if not (baseline and treatment) or baseline.mean is None or treatment.mean is None:
        return "-"
    return f"{baseline.mean:.1f}, {treatment.mean:.1f}"


def to_decide(row: ClaimResult) -> str:
    """For an inconclusive claim, the paired repeats that would detect a difference of its measure's margin (80%
    power, from the spread seen), or `more than 1000`; '' for a decided one."""
    if row.verdict != "inconclusive" or row.judgement is None:
        return ""
    n = row.judgement.worst.repeats_needed
    margin = margin_of(row.measure)
    if margin is None:
        return "- (no margin for this measure)"
    return f"{n} (to detect ±{margin:g})" if n else "more than 1000"


def better(t: Treated) -> str:
    """P(treatment better than the baseline) with its 95% interval, `0.80 [0.38, 0.96]`, or '-'."""
    if t.better is None:
        return "-"
    return f"{t.better.mean:.2f} [{t.better.ci_low:.2f}, {t.better.ci_high:.2f}]"


def signed(d: Interval, measure: str) -> str:
    """A difference with its interval, signs shown: `+0.0123 [+0.0050, +0.0196]`."""
    return difference(Contrast("", measure, 0, d.mean, d.ci_low, d.ci_high, ""))


def as_estimate(e: Interval) -> Estimate:
    """An arm's interval as an estimate (what wording.with_interval shows)."""
    return Estimate(0, e.mean, None, e.ci_low, e.ci_high)


def details(row: ClaimResult) -> list[str]:
    """What the reader needs beyond the table: fairness, the LRs chosen, every treatment, the run."""
    lines = [f"*Fair because:* {row.fair}"]
    if row.learning_rates:
        lines.append("*Learning rate chosen per variant on validation:* "
                     + "; ".join(f"{k}: {shown(v, 'lr')}" for k, v in row.learning_rates.items()))
    for t in row.judgement.treatments if row.judgement else []:
        chance = (f"; better in {t.better.mean:.0%} of the paired repeats (95% interval {t.better.ci_low:.0%} to "
                  f"{t.better.ci_high:.0%})" if t.better else "")
        holm = f", Holm-corrected p {t.p_holm:.3f}" if t.p_holm is not None else ""
        lines.append(f"*{t.arm.label}* against *{row.judgement.baseline.label}*: {row.measure} "
                     f"{interval(t.arm.estimate, row.measure)}, difference {signed(t.diff, row.measure)} over "
                     f"{t.n} paired repeats{holm}{chance}: {t.verdict}.")
    return lines


@task(name="technique-study-report")
def study_report(run_id: str, rows: list[ClaimResult], workspace: str, quick: bool,
                 wall_seconds: float) -> Study:
    """-> the technique study's summary (`trainflow study`)."""
    log = tracking.RunLogger(run_id)
    folder = settings.HOME / "reports" / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    figures = {}
    for row in rows:
        if row.summary and row.judgement:
            j = row.judgement
            treated = [(t.arm.label, t.diff.mean, t.diff.ci_low, t.diff.ci_high, t.verdict) for t in j.treatments]
            fig = plots.claim(row.summary, treated, row.measure, margin_of(row.measure), j.baseline.label,
                              f"{row.technique}: {row.claim}")
            figures[row.name] = folder / "figures" / f"{row.name}.png"
            fig.savefig(figures[row.name], dpi=90)
            log.log_artifact(str(figures[row.name]), "figures")
    counts = {v: sum(r.verdict == v for r in rows) for v in ("supported", "contradicted", "inconclusive", "failed")}
    title = (f"Technique study{' (quick)' if quick else ''}: {len(rows)} claims, "
             + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f"; {wall_seconds / 60:.1f} minutes")
    md = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|",
          *["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows], "",
          "Each claim is a comparison of paired repeats (repeat i of every variant with the same seeds); the "
          "interval is the 95% Student t interval of the per-repeat differences (treatment - baseline). "
          "`supported`: the paired t-test rejects no difference at 5%, Holm-corrected over the entry's "
          "treatments, and the difference has the sign the claim predicts (a claim of no change, `same`: the "
          "difference's 90% interval lies inside the measure's margin, `equivalent`); `contradicted`: it rejects "
          "with the other sign; `inconclusive`: neither. In brackets the comparison's own verdict; repeats to "
          "decide: the paired repeats that would detect a difference of the measure's margin with 80% power.", ""]
    for row in rows:
        md += [f"## {row.technique} ({row.name})", "", f"{row.claim} Measure: {row.measure}, predicted "
               f"{row.direction}. Verdict: **{row.verdict}**.", ""]
        if row.judgement is None:
            md += [f"Failed: {row.error}", ""]
            continue
        md += [*[f"- {line}" for line in details(row)], f"- Comparison run: {run_url(row.run_id)}", "",
               f"![{row.name}](figures/{row.name}.png)", ""]
    (folder / "report.md").write_text("\n".join(md))
    (folder / "report.html").write_text(page(title, rows, figures))
    log.log_artifact(str(folder / "report.md"))
    log.log_artifact(str(folder / "report.html"))
    log.log_metrics({f"claims_{v}": n for v, n in counts.items()} | {"wall_seconds": wall_seconds}, step=0)
    create_markdown_artifact("\n".join(md[:len(rows) + 5] + ["", link("study run", run_id)]),
                             key="technique-study", description="the technique study's verdicts")
    return Study(run_id, str(folder / "report.md"), str(folder / "report.html"), round(wall_seconds, 1), counts,
                 [replace(r, summary=None) for r in rows], run_url(run_id))


def page(title: str, rows: list[ClaimResult], figures: dict[str, Path]) -> str:
    """The report as one HTML file: the table, then per entry its facts and its figure, inlined."""
    e = html.escape
    colours = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#6e7781", "failed": "#9a6700"}
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells(r)[:-2])
                   + f"<td style='color:{colours[r.verdict]};font-weight:bold'>{e(cells(r)[-2])}</td>"
                   + f"<td>{e(cells(r)[-1])}</td></tr>" for r in rows)
    sections = []
    for r in rows:
        facts = "".join(f"<li>{e(line).replace('*', '')}</li>" for line in details(r)) if r.judgement \
            else f"<li>{e(r.error)}</li>"
        image = ""
        if r.name in figures:
            data = base64.b64encode(figures[r.name].read_bytes()).decode()
            image = f"<img alt='{e(r.name)}' src='data:image/png;base64,{data}'>"
        sections.append(f"<h2>{e(r.technique)} ({e(r.name)})</h2><p>{e(r.claim)} Measure: "
                        f"{e(r.measure)}, predicted {e(r.direction)}. Verdict: <b>{e(r.verdict)}</b>.</p>"
                        f"<ul>{facts}</ul>{image}")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;font-size:90%}td,th{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body><h1>{e(title)}</h1><table><tr>{head}</tr>{body}</table>{''.join(sections)}</body></html>")
