"""What each command prints when it is done (cli/summaries.py) and what --json prints (the results' `json()`), from
the typed summaries every flow returns (tasks/summaries.py): each read by attribute, without a flow run."""

from __future__ import annotations

import json

import pytest

from cli import summaries
from cli.models import prediction_summary
from tasks.results import Gate, Registration, SourceRun
from tasks.summaries import (
    BestTrial,
    ClaimResult,
    Comparison,
    Ensemble,
    EnsembleRepeats,
    Lineage,
    Prediction,
    RangeTest,
    Rounds,
    RunSummary,
    ScoredModel,
    Study,
    Transfer,
    TransferDemo,
    TrialCounts,
    Tuning,
    Variance,
)
from trainlib.claims import Arm, Interval, Judgement, Treated
from trainlib.evidence import Contrast, Estimate, Group
from trainlib.scoring import DriftReport
from trainlib.variance import Share

GATE = Gate(True, "promoted", "promoted to @champion", 0.97, 0.9, 0.001, 3, 0.95)
RUN = RunSummary("r" * 32, "digits-cnn", {"test_accuracy": 0.97123, "test_f1": 0.97, "test_loss": 0.1, "best_epoch": 4,
                                          "stopped_epoch": 6, "val_accuracy": 0.96, "best_member_test_accuracy": 0.95},
                 Registration("models:/m/4", "digits-cnn", 4, "champion", GATE), "http://127.0.0.1:5000/#/r")
GROUPS = [Group("optimizer.name=sgd", 3, 0, {"best_val_accuracy": Estimate(3, 0.9, 0.01, 0.88, 0.92),
                                             "test_accuracy": Estimate(3, 0.91, 0.01, 0.89, 0.93)}),
          Group("optimizer.name=adam", 2, 1, {"best_val_accuracy": Estimate(2, 0.95, 0.01, 0.9, 1.0),
                                              "test_accuracy": None})]
VERSUS = [Contrast("optimizer.name=adam", "test_accuracy", 2, 0.04, 0.01, 0.07, "better")]


@pytest.fixture
def printed(capsys):
    def read(show, result) -> str:
        show(result)
        json.dumps(result.json())  # --json: plain JSON, nothing left for `default=str` to stringify
        return capsys.readouterr().out
    return read


def test_a_run_prints_its_result_registration_and_url(printed):
    out = printed(summaries.run, RUN)
    assert "test accuracy 0.9712" in out and "best epoch 4, stopped at 6" in out
    assert "registered digits-cnn version 4: promoted to @champion" in out and RUN.mlflow_url in out
    assert RUN.json()["gate"]["outcome"] == "promoted" and RUN.json()["version"] == 4
    assert RUN.uri == "models:/digits-cnn@champion"


def test_a_comparison_prints_estimates_verdicts_and_the_winner(printed):
    comparison = Comparison(RUN, "optimizer.name=adam", 1, "optimizer.name=sgd", 3, ["c1"], [], GROUPS, VERSUS,
                            {g.label: {"optimizer.name": g.label.split("=")[1]} for g in GROUPS})
    out = printed(summaries.comparison, comparison)
    assert "0.9000 ± 0.0200" in out and "(1 failed)" in out and "+0.0400 [+0.0100, +0.0700]" in out
    assert "best (mean on validation): optimizer.name=adam" in out
    data = comparison.json()
    assert data["summary"][1]["test_accuracy"] is None and data["versus_baseline"][0]["verdict"] == "better"


def test_a_comparison_in_rounds_says_why_it_stopped_and_the_repeats_each_variant_spent(printed):
    looks = [(3, 0.0031), (5, 0.0056), (8, 0.0135), (12, 0.0278)]
    decided = Rounds(12, looks, {"optimizer.name=sgd": 5, "optimizer.name=adam": 5}, [])
    comparison = Comparison(RUN, "optimizer.name=adam", 1, "optimizer.name=sgd", 5, ["c1"], [], GROUPS, VERSUS,
                            {}, decided)
    out = printed(summaries.comparison, comparison)
    assert ("repeats in rounds: every verdict decided; repeats spent: optimizer.name=sgd 5, optimizer.name=adam 5 "
            "(of at most 12)") in out
    assert comparison.json()["rounds"]["looks"][0] == {"repeats": 3, "level": 0.0031}
    stopped = Rounds(12, looks, {"optimizer.name=sgd": 12, "optimizer.name=adam": 12}, ["optimizer.name=adam"])
    assert stopped.line().startswith("stopped at the most repeats, 12, with 1 undecided (optimizer.name=adam)")


def test_variance_prints_each_sources_spread_and_share(printed):
    shares = [Share("split", 5, 0.95, 0.01, 0.006, 0.029, 0.8, 0.3, 0.97), Share("all", 5, 0.95, 0.012, 0.007, 0.034)]
    out = printed(summaries.variance, Variance("r", "test_accuracy", shares, ["c"], [], "http://x"))
    assert "0.0100 [0.0060, 0.0290]" in out and "0.80 [0.30, 0.97]" in out
    assert ("the largest source is split (sd 0.0100); drawing another split alone moves test_accuracy by sd 0.0100, "
            "so a gain under that is within what the split does") in out


def test_tuning_an_ensemble_and_a_transfer_print_what_they_add_to_the_run(printed):
    tuning = Tuning(RUN, BestTrial(7, {"optimizer.lr": 0.0031}, 0.98), TrialCounts(5, 2, 1), ["t"], [])
    assert "5 complete, 2 pruned, 1 failed trials; best trial 7 (0.9800): optimizer.lr=0.0031" in printed(
        summaries.tuning, tuning)
    repeats = EnsembleRepeats(3, [], {}, GROUPS, [Contrast("ensemble vs best member", "test_accuracy", 3, 0.01, None,
                                                           None, "too few repeats")], ["a", "b", "c"])
    ensemble = Ensemble(RUN, "bagging", "member 1", [], [{"member": "member 1", "state": "complete"}], [[0.0]], [],
                        repeats)
    out = printed(summaries.ensemble, ensemble)
    assert "bagging: members and ensemble" in out and "best member on test: member 1 (0.9500)" in out
    assert "too few repeats" in out and ensemble.json()["repeat_runs"] == ["a", "b", "c"]
    transfer = Transfer(RUN, Lineage("models:/src@champion", "finetune", "h.json", None, 6))
    demo = TransferDemo("d" * 32, "http://demo", transfer, 5, [{"run": "scratch", "test_accuracy": 0.5}],
                        SourceRun("models:/src@champion", "s", 0.99, 3.0, 1.0), [])
    out = printed(summaries.demo, demo)
    assert "finetune from models:/src@champion (6 weight tensors reused)" in out and "http://demo" in out
    assert demo.json()["run_id"] == "d" * 32 and demo.json()["transfer"]["weights_copied"] == 6


def test_the_range_test_and_a_scoring_print_their_findings(printed):
    out = printed(summaries.lr_find, RangeTest("l" * 32, "http://lr", None, "steepest", "diverged", 40, 1e-7, 10,
                                               200, 10 ** -0.5))
    assert "no suggestion" in out and "40 of 200 updates, from 1e-07 to 0.32, stopped early: the loss diverged" in out
    assert "to 10" not in out  # the sweep never reached its planned end
    whole = RangeTest("l" * 32, "http://lr", 1e-3, "steepest", "completed", 200, 1e-7, 10, 200, 10.0)
    out = printed(summaries.lr_find, whole)
    assert "200 updates from 1e-07 to 10" in out and "stopped early" not in out and "of 200" not in out
    assert whole.json()["planned"] == 200 and whole.json()["reached"] == 10.0
    drift = DriftReport(["pixel"], [0.5], [0.2], [3.0], [0.1], 3.0, 0.5)
    prediction = Prediction("p" * 32, "digits-cnn", ScoredModel("digits-cnn", 4, "champion", ["champion"], "models:/x"),
                            15, 1, "out.parquet", "errors.csv", {"accuracy": 0.9, "f1": 0.8}, drift, "http://p")
    out = printed(prediction_summary, prediction)
    assert "15 rows scored with digits-cnn version 4 (@champion)" in out and "accuracy 0.9000" in out
    assert "drift" in out and "pixel: mean moved 3.00" in out and "1 unreadable rows skipped" in out
    assert prediction.json()["drift"]["drifted"] is True


def test_a_study_prints_every_claim_and_its_json_keeps_the_report_columns(printed):
    interval = Interval(0.05, 0.01, 0.09)
    judged = Judgement(Arm("model.dropout=0", Interval(0.9, 0.88, 0.92)),
                       [Treated(Arm("model.dropout=0.3", Interval(0.95, 0.93, 0.97)), interval, 3, "supported", 0.01,
                                Interval(1.0, 0.44, 1.0))])
    rows = [ClaimResult("dropout", "dropout", "helps", "test_accuracy", "higher", "same seeds", 3, 12.0, judged),
            ClaimResult("broken", "x", "y", "test_accuracy", "higher", "-", 3, 1.0, error="ValueError: no")]
    study = Study("s" * 32, "report.md", "report.html", 90.0, {"supported": 1, "failed": 1}, rows, "http://s")
    out = printed(summaries.technique_study, study)
    flat = " ".join(out.split())  # a narrow table wraps its cells
    assert "(dropout=0.3)" in flat and "+0.0500" in flat and "0.9500 ± 0.0200" in flat, out
    assert "1.00" in flat  # P(better): every paired repeat
    assert "ValueError" in flat and "1 supported, 1 failed in 1.5 minutes" in flat
    row = study.json()["rows"][0]
    assert row["treatment"] == {"label": "model.dropout=0.3", "mean": 0.95, "ci_low": 0.93, "ci_high": 0.97,
                                "cpu_seconds": None}  # the test built its arms without a cost
    assert row["verdict"] == "supported" and row["n"] == 3 and study.json()["rows"][1]["verdict"] == "failed"
    assert row["p_holm"] == 0.01 and row["treatments"][0]["p_better"] == {"mean": 1.0, "ci_low": 0.44, "ci_high": 1.0}
