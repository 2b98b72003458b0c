"""The technique study's entries (trainlib/claims.py) and their plans: what a bad entry says, the verdicts."""

import re
from pathlib import Path

import pytest

from flows import plans
from trainlib.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED, choose_lr, judge, load_entry, verdict
from trainlib.errors import ConfigError
from trainlib.evidence import Contrast, Estimate, Group

GOOD = """technique: dropout
claim: Dropout narrows the gap between train and validation accuracy.
base: {base}
vary: {{model.dropout: [0.0, 0.5]}}
measure: train_val_gap
direction: lower
fair: The same LR and epochs for both variants.
"""
REGIME = Path(__file__).resolve().parents[1] / "configs" / "regimes" / "few-labels.yaml"


def _entry(folder: Path, text: str, name: str = "entry") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_verdicts_follow_the_corrected_test_and_the_predicted_direction():
    def c(diff, p_holm):
        return Contrast("t", "test_accuracy", 3, diff, None, None, "", p=p_holm, p_holm=p_holm)

    assert verdict("higher", c(0.03, 0.01)) == SUPPORTED and verdict("lower", c(-0.03, 0.01)) == SUPPORTED
    assert verdict("higher", c(-0.03, 0.01)) == CONTRADICTED and verdict("lower", c(0.03, 0.01)) == CONTRADICTED
    assert verdict("higher", c(0.03, 0.2)) == INCONCLUSIVE  # not significant once corrected for its family
    assert verdict("higher", c(None, None)) == INCONCLUSIVE


def test_a_claim_that_a_technique_does_not_hurt_is_judged_by_equivalence():
    def c(diff, p_holm, verdict_):
        return Contrast("t", "test_accuracy", 5, diff, None, None, verdict_, p=p_holm, p_holm=p_holm, margin=0.01)

    assert verdict("same", c(0.001, 0.6, "equivalent")) == SUPPORTED  # the 90% interval inside ±0.01
    assert verdict("same", c(-0.03, 0.001, "worse")) == CONTRADICTED  # a real loss, beyond the margin
    assert verdict("same", c(-0.004, 0.01, "worse")) == INCONCLUSIVE  # real but inside the margin: not equivalent
    assert verdict("same", c(0.0, 0.9, "no detectable difference")) == INCONCLUSIVE  # too few repeats to say


@pytest.mark.parametrize("change, message", [
    (lambda t: t + "repeat: 5\n", "study entry entry.yaml: repeat: unknown key (did you mean 'repeats'?)"),
    (lambda t: t.replace("measure: train_val_gap", "measure: gap"), "measure: 'gap' is not a measure; valid: "),
    (lambda t: t.replace("direction: lower", "direction: down"),
     "direction: Input should be 'higher', 'lower' or 'same'"),
    (lambda t: t.replace("vary: {model.dropout: [0.0, 0.5]}", "vary: {model.dropout: [0.0]}"),
     "vary: give each key a baseline value and at least one treatment value"),
    (lambda t: t.replace("base: ", "base: ../nowhere/"), "base: no such file: ../nowhere/"),
    (lambda t: t.replace("fair: The same LR and epochs for both variants.\n", ""), "fair: Field required"),
    (lambda t: t + "ensemble: {method: bagging}\n", "vary, variants, ensemble, searches: give one of them"),
    (lambda t: t.replace("vary: {model.dropout: [0.0, 0.5]}", "ensemble: {method: bagging}"),
     "measure: 'train_val_gap': ensemble and search entries are measured by test_accuracy or best_val_accuracy"),
])
def test_a_bad_entry_is_one_message_naming_its_file(tmp_path, change, message):
    path = _entry(tmp_path, change(GOOD.format(base=REGIME)))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_entry(path)


@pytest.mark.parametrize("line, message", [
    ("set: {model.dropuot: 0.1}\n", "study entry entry.yaml: invalid config: model.dropuot: unknown key"),
    ("set: {training.epochs: 0}\n", "study entry entry.yaml: invalid config: training.epochs"),
])
def test_an_entry_naming_a_config_key_that_does_not_exist_fails_its_plan(tmp_path, line, message):
    _entry(tmp_path, GOOD.format(base=REGIME) + line)
    with pytest.raises(ConfigError, match=message):
        plans.study(None, [], tmp_path)


def test_only_names_entries_that_exist(tmp_path):
    _entry(tmp_path, GOOD.format(base=REGIME), "dropout")
    with pytest.raises(ConfigError, match="--only l3: no such study entry; the entries are dropout"):
        plans.study(None, [], tmp_path, only=["l3"])


def test_every_shipped_entry_plans_in_both_modes():
    for quick in (False, True):
        study = plans.study(None, [], quick=quick)
        names = {c.entry.name for c in study.claims}
        assert names >= {"augmentation", "normalization", "gradient-descent", "early-stopping", "dropout", "l1", "l2",
                         "schedules", "optimizers", "transfer", "bagging", "boosting", "stacking", "search",
                         "mixing", "weight-averaging", "policies", "lr-finder", "signal-models", "signal-augmentation"}
        for claim in study.claims:
            cfg = claim.config
            assert cfg.name == plans.STUDY_NAME and not cfg.register.enabled  # the study registers nothing
            assert claim.repeats == (claim.entry.quick.repeats if quick else claim.entry.repeats) >= 2
            assert plans.trainings(claim) >= 2 * claim.repeats
            if claim.ensemble:
                assert claim.ensemble.repeats == claim.repeats and not claim.ensemble.config.register.enabled
            elif claim.searches:
                assert len(claim.searches) >= 2
            else:
                assert len(claim.comparison.variants) >= 2
        transfer = next(c for c in study.claims if c.entry.name == "transfer")
        assert transfer.source.data.classes == ["0", "1", "2", "3", "4"] and transfer.source.split.shots is None
        assert transfer.config.data.classes == ["5", "6", "7", "8", "9"]  # the source never saw these


def test_quick_settings_and_repeats_and_overrides_layer_over_the_entry(tmp_path):
    _entry(tmp_path, GOOD.format(base=REGIME) + "set: {training.epochs: 40}\nquick: {set: {training.epochs: 7}}\n")
    full, quick = plans.study(None, [], tmp_path).claims[0], plans.study(None, [], tmp_path, quick=True).claims[0]
    assert (full.config.training.epochs, quick.config.training.epochs) == (40, 7)
    assert full.config.split.shots == 10  # the base regime's
    forced = plans.study(None, ["training.epochs=3"], tmp_path, repeats=4, quick=True).claims[0]
    assert forced.config.training.epochs == 3 and forced.repeats == 4


def test_a_claim_is_judged_on_its_measure_and_must_hold_for_every_treatment(tmp_path):
    entry = load_entry(_entry(tmp_path, GOOD.format(base=REGIME).replace("model.dropout: [0.0, 0.5]",
                                                                           "model.dropout: [0.0, 0.3, 0.5]")))

    def est(mean):
        return Estimate(3, mean, 0.01, mean - 0.01, mean + 0.01)

    summary = [Group(d, 3, 0, {"train_val_gap": est(gap), "test_accuracy": est(0.9)})
               for d, gap in (("d=0", 0.10), ("d=0.3", 0.05), ("d=0.5", 0.09))]
    versus = [Contrast("d=0.3", "train_val_gap", 3, -0.05, -0.07, -0.03, "", p_holm=0.01),
              Contrast("d=0.3", "test_accuracy", 3, 0.2, 0.1, 0.3, "", p_holm=0.01),
              Contrast("d=0.5", "train_val_gap", 3, -0.01, -0.03, 0.01, "", p_holm=0.4)]
    judged = judge(entry, summary, versus, "d=0")
    assert [t.verdict for t in judged.treatments] == [SUPPORTED, INCONCLUSIVE]  # the gap, lower as predicted
    assert judged.worst.verdict == INCONCLUSIVE and judged.worst.arm.label == "d=0.5"  # the worst of the two
    assert judged.baseline.estimate.mean == 0.10
    row = judged.json()  # as the study's --json and its report give it
    assert row["verdict"] == INCONCLUSIVE and row["treatment"]["label"] == "d=0.5"
    assert row["baseline"]["label"] == "d=0" and row["baseline"]["ci_high"] == pytest.approx(0.11)
    assert row["diff"] == {"mean": -0.01, "ci_low": -0.03, "ci_high": 0.01} and row["n"] == 3
    versus[2] = Contrast("d=0.5", "train_val_gap", 3, 0.03, 0.01, 0.05, "", p_holm=0.02)  # 0.5 widened the gap
    assert judge(entry, summary, versus, "d=0").worst.verdict == CONTRADICTED


def test_a_learning_rate_is_chosen_by_the_model_as_tested_not_its_best_epoch():
    def row(lr, best, tested):
        return Group(f"optimizer.lr={lr}", 2, 0, {"best_val_accuracy": Estimate(2, best, None, None, None),
                                                  "model_val_accuracy": Estimate(2, tested, None, None, None)})

    # without early stopping, 0.1 peaks higher mid-run but ends lower: the model tested is the last epoch's
    summary = [row(0.01, 0.90, 0.88), row(0.1, 0.95, 0.70),
               Group("optimizer.lr=1.0", 0, 2, {"best_val_accuracy": None, "model_val_accuracy": None})]
    variants = {f"optimizer.lr={lr}": {"optimizer.lr": lr} for lr in (0.01, 0.1, 1.0)}
    assert choose_lr(summary, variants) == 0.01
