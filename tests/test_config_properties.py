"""Properties of config parsing, over generated input (hypothesis): valid values come back exactly as given,
anything else is one ConfigError naming what is wrong, and nothing else ever escapes."""

import math
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainlib.config import PipelineConfig, flatten, load_config, reference, to_yaml
from trainlib.data.normalize import NORMALIZERS
from trainlib.engine import GD_MODES
from trainlib.errors import ConfigError
from trainlib.models import MODELS
from trainlib.optim import OPTIMIZERS
from trainlib.schedules import SCHEDULES

KEYS = [key for key, _, _ in reference()]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _finite(low, high, **kw):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, **kw)


VALID = {  # dotted key -> values the field accepts on its own
    "optimizer.name": st.sampled_from(sorted(OPTIMIZERS)),
    "optimizer.lr": _finite(1e-6, 10),
    "optimizer.momentum": _finite(0, 0.99),
    "optimizer.weight_decay": _finite(0, 1),
    "model.name": st.sampled_from(sorted(MODELS)),
    "model.dropout": _finite(0, 0.99),
    "model.hidden": st.lists(st.integers(1, 512), min_size=1, max_size=4),
    "normalize.method": st.sampled_from(sorted(NORMALIZERS)),
    "schedule.name": st.sampled_from(sorted(SCHEDULES)),
    "schedule.gamma": _finite(0.01, 1),
    "training.mode": st.sampled_from(sorted(GD_MODES)),
    "training.epochs": st.integers(1, 10_000),
    "training.batch_size": st.integers(1, 4096),
    "training.seed": st.integers(0, 2**31),
    "training.early_stopping.patience": st.integers(1, 100),
    "regularization.l1": _finite(0, 1),
    "regularization.l2": _finite(0, 1),
    "augment.rotation": _finite(0, 180),
    "augment.hflip": _finite(0, 1),
    "register.min_test_accuracy": _finite(0, 1),
}


def _split():
    """train/val/test in hundredths that sum to 1, each split non-empty."""
    return st.tuples(st.integers(1, 98), st.integers(1, 98)).filter(lambda t: t[0] + t[1] < 100).map(
        lambda t: {"split.train": t[0] / 100, "split.val": t[1] / 100, "split.test": (100 - t[0] - t[1]) / 100})


def _get(config: PipelineConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def _as_set(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys})), st.one_of(st.just({}), _split()))
def test_valid_values_parse_to_exactly_those_values_or_a_named_conflict(values, split):
    values = values | split
    try:
        config = load_config(None, [_as_set(k, v) for k, v in values.items()])
    except ConfigError as exc:  # each value is valid alone; together they may conflict, e.g. adam + nesterov
        message = str(exc)
        assert "\n" not in message and any(k.split(".")[0] in message for k in values), message
        return
    for key, value in values.items():
        assert _get(config, key) == value, key
    again = load_config(None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                               for k, v in flatten(config).items() if v is not None])
    assert again == config  # every parameter MLflow records reproduces the config


ODD_VALUES = [".inf", "-.inf", ".nan", "1e400", "-1e400", "nan", "inf", "", "[]", "{}", "null", "~", "[1, [2]]",
              "{a: 1}", "!!python/object:os.system x", "yes", "0x10", "1_000", "'3'"]


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(st.sampled_from("abcdelmnoprst._"), max_size=20)),
                          st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=30))), max_size=4))
def test_any_override_gives_a_finite_config_or_one_config_error_naming_a_key(pairs):
    try:
        config = load_config(None, [f"{k}={v}" for k, v in pairs])
    except ConfigError as exc:
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        assert not re.search(r"(^|: |- )[:.]", message), message  # every problem starts with a key, never empty
        return
    assert isinstance(config, PipelineConfig)
    for key, value in flatten(config).items():  # infinities and NaN never get in, however they are written
        for number in value if isinstance(value, list) else [value]:
            assert not isinstance(number, float) or math.isfinite(number), (key, value)


@SETTINGS
@given(st.sampled_from(KEYS), st.data())
def test_a_misspelt_key_is_refused_with_a_valid_suggestion(key, data):
    section, _, leaf = key.rpartition(".")
    cut = data.draw(st.integers(0, len(leaf) - 1))
    typo = leaf[:cut] + leaf[cut + 1:] if len(leaf) > 3 else leaf + "x"
    wrong = f"{section}.{typo}" if section else typo
    if wrong in KEYS or not typo:
        return
    try:
        load_config(None, [f"{wrong}=1"])
    except ConfigError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{wrong} was accepted")
    assert f"{wrong}: unknown key" in message
    if "did you mean" in message:
        assert message.split("did you mean '")[1].split("'")[0] in KEYS


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys})))
def test_a_saved_config_file_loads_back_equal(tmp_path_factory, values):
    try:
        config = load_config(None, [_as_set(k, v) for k, v in values.items()])
    except ConfigError:
        return
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config
