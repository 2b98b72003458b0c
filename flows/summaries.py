"""What each command prints when it is done (without --json): the summary of its result, on stdout."""

from __future__ import annotations

import os

from rich.table import Table

from flows.progress import summary_console as console


def run(s: dict) -> None:
    m, gate = s["metrics"], s["gate"]
    console.print(f"[bold green]done[/]: test accuracy {m['test_accuracy']:.4f}, macro F1 {m['test_f1']:.4f}, "
                  f"test loss {m['test_loss']:.4f}" + (f" (best epoch {m['best_epoch']}, stopped at "
                                                       f"{m['stopped_epoch']})" if "best_epoch" in m else ""))
    verdict = "[green]passed[/]" if gate["passed"] else "[yellow]failed[/]"
    console.print(f"registered [bold]{s['registered_model']}[/] version {s['version']} as @{s['alias']} "
                  f"(gate {verdict}: {gate['reason']})")
    console.print(f"MLflow run {s['run_id']}: {s['mlflow_url']}")
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        console.print("browse it with: [bold].venv/bin/trainflow ui[/]")


def study(s: dict) -> None:
    best, t = s["best_trial"], s["trials"]
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    console.print(f"[bold]{t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed trials[/]; "
                  f"best trial {best['number']} ({best['value']:.4f}): {params}")
    run(s)


def comparison(s: dict) -> None:
    table = Table("variant", "val acc", "val loss", "test acc", "epochs", "seconds", "state",
                  title="best epoch of each variant")
    table.columns[0].overflow = "fold"
    for v in s["variants"]:
        table.add_row(v["variant"], *(str(v[k]) for k in ("best_val_accuracy", "best_val_loss", "test_accuracy",
                                                          "epochs", "seconds", "state")))
    console.print(table)
    console.print(f"best (on validation): [bold]{s['best_variant']}[/]")
    run(s)


def ensemble(s: dict) -> None:
    table = Table("member", "weight", "val acc", "test acc", "epochs", "seconds", "state",
                  title=f"{s['method']}: members and ensemble")
    table.columns[0].overflow = "fold"
    for r in s["members"]:
        weight = f"{r['weight']:.3f}" if isinstance(r["weight"], float) else "-"
        table.add_row(r["member"], weight, *(str(r[k]) for k in ("val_accuracy", "test_accuracy", "epochs",
                                                                  "seconds", "state")))
    m = s["metrics"]
    table.add_row("[bold]ensemble[/]", "", f"{m.get('val_accuracy', float('nan')):.4f}",
                  f"[bold]{m['test_accuracy']:.4f}[/]", "", "", "")
    console.print(table)
    console.print(f"best member on test: {s['best_member']} ({m['best_member_test_accuracy']:.4f})")
    run(s)


def transfer(s: dict) -> None:
    t = s["transfer"]
    console.print(f"{t['strategy']} from [bold]{t['source']}[/] ({t['weights_copied']} weight tensors reused)")
    run(s)


def demo(s: dict) -> None:
    table = Table("run", "test acc", "best epoch", "epochs to scratch's best val acc", "train s",
                  title=f"digits 0-4 -> digits 5-9 with {s['shots']} labeled examples per class")
    for r in s["runs"]:
        table.add_row(*(str(r[k]) if r[k] is not None else "-" for k in
                        ("run", "test_accuracy", "best_epoch", "epochs_to_scratch_best_val", "train_seconds")))
    console.print(table)
    transfer(s)
