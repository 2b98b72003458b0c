"""Properties of config parsing, over generated input (hypothesis): valid values come back exactly as given,
a combination that breaks a documented cross-field rule is refused naming that rule's key, anything else is one
ConfigError naming what is wrong, and nothing else ever escapes."""

import math
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from trainlib.config import PipelineConfig, flatten, load_config, reference, to_yaml
from trainlib.data.normalize import NORMALIZERS
from trainlib.data.policies import POLICIES
from trainlib.data.sources import SOURCES, TORCHVISION_DATASETS
from trainlib.engine import GD_MODES
from trainlib.errors import ConfigError
from trainlib.models import MODELS
from trainlib.optim import OPTIMIZERS
from trainlib.schedules import SCHEDULES

KEYS = [key for key, _, _ in reference()]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    phases=[p for p in Phase if p != Phase.explain])  # explaining a failure took minutes
DEFAULTS = flatten(PipelineConfig.model_construct())  # as the fields default: name, model, target left to the data


def _finite(low, high, **kw):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, **kw)


VALID = {  # dotted key -> values the field accepts on its own
    "optimizer.name": st.sampled_from(sorted(OPTIMIZERS)),
    "optimizer.lr": st.one_of(_finite(1e-6, 10), st.just("find")),
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
    "register.min_delta": _finite(0, 0.99),
    "register.enabled": st.booleans(),
    # each valid alone, but some combinations break a cross-field rule (see _conflicts)
    "data.source": st.sampled_from(sorted(SOURCES)),
    "data.path": st.one_of(st.none(), st.just("data/file")),
    "data.dataset": st.one_of(st.none(), st.sampled_from(TORCHVISION_DATASETS)),
    "optimizer.nesterov": st.booleans(),
    "schedule.max_lr": st.one_of(st.none(), _finite(1e-6, 10)),
    "training.early_stopping.enabled": st.booleans(),
    "training.devices": st.integers(1, 4),
    "transfer.source": st.one_of(st.none(), st.just("model.pt")),
    "augment.policy": st.sampled_from(sorted(POLICIES)),
    "augment.mixup": st.sampled_from([0.0, 0.2]),
    "augment.cutmix": st.sampled_from([0.0, 1.0]),
    "training.accumulate": st.integers(1, 4),
    "training.ema.decay": st.sampled_from([0.0, 0.99]),
    "training.swa.start": st.sampled_from([0, 0.75, 3, 20_000]),
}
IMAGES_ONLY = ("rotation", "vflip", "brightness", "contrast", "saturation", "hue", "cutmix")  # and augment.policy
SIGNALS_TOO = ("translate", "hflip", "noise", "erasing")  # what images and signals take; mixup mixes any inputs
IMAGES, SIGNALS = {"digits", "imagefolder", "torchvision"}, {"numpy", "waveforms"}  # the rest: tables
IMAGE_MODELS, SIGNAL_MODELS = {"cnn", "resnet18"}, {"cnn1d", "gru", "lstm"}  # mlp takes any


def _conflicts(values: dict) -> set[str]:
    """The keys of the documented cross-field rules that `values` (over the defaults) break; empty when valid.
    Written from the rules as the README and the field descriptions state them, not from the validators."""
    c = DEFAULTS | values
    images_only = any(c[f"augment.{k}"] for k in IMAGES_ONLY) or c["augment.policy"] != "none"
    signal_transforms = any(c[f"augment.{k}"] for k in SIGNALS_TOO)
    swa = c["training.swa.start"]
    swa_epoch = int(swa) if swa >= 1 else math.ceil(swa * c["training.epochs"])
    source, model = c["data.source"], c["model.name"]
    if model is None:  # left to the data: cnn for images, cnn1d for signals, mlp for a table
        model = "cnn" if source in IMAGES else "cnn1d" if source in SIGNALS else "mlp"
    # a table is read as signals by a signal model; image models need images, signal models signals (or a table)
    kind = "images" if source in IMAGES else "signals" if source in SIGNALS or model in SIGNAL_MODELS else "table"
    rules = {
        "data.path": c["data.source"] not in ("digits", "waveforms") and not c["data.path"],  # the rest read one
        "data.dataset": c["data.source"] == "torchvision" and c["data.dataset"] not in TORCHVISION_DATASETS,
        "model.name": (model in IMAGE_MODELS and kind != "images") or (model in SIGNAL_MODELS and kind != "signals"),
        "augment": (kind != "images" and images_only) or (kind == "table" and signal_transforms),
        "training.accumulate": c["training.accumulate"] > 1 and c["training.mode"] != "minibatch",
        "training.swa": swa > 0 and (c["training.ema.decay"] > 0 or c["training.early_stopping.enabled"]
                                     or swa_epoch > c["training.epochs"]),  # one average; every epoch to the end
        "training.early_stopping": c["split.val"] == 0 and c["training.early_stopping.enabled"],
        "schedule.name": c["split.val"] == 0 and c["schedule.name"] == "plateau",
        "training.devices": c["training.devices"] > 1 and (c["training.mode"] == "stochastic" or bool(
            c["transfer.source"]) or c["training.batch_size"] < c["training.devices"]),
        "optimizer.nesterov": c["optimizer.nesterov"] and (c["optimizer.name"] != "sgd"
                                                           or c["optimizer.momentum"] == 0),
        "schedule.max_lr": c["schedule.name"] == "cyclical" and c["schedule.max_lr"] is not None
        and c["optimizer.lr"] != "find" and c["schedule.max_lr"] <= c["optimizer.lr"],
    }
    return {key for key, broken in rules.items() if broken}


def _load_as_the_rules_say(values: dict) -> PipelineConfig | None:
    """The config of `values`, or None when they break a rule: then the ConfigError must name the rule's key in
    every line. A valid combination refused fails, as does a broken rule accepted."""
    broken = _conflicts(values)
    event(f"broken rules: {len(broken)}")
    event(" ".join(sorted(broken)) or "valid")
    try:
        config = load_config(None, [_as_set(k, v) for k, v in values.items()])
    except ConfigError as exc:
        problems = [line.strip().removeprefix("- ") for line in str(exc).removeprefix("invalid config:").splitlines()]
        assert broken, f"a valid config was refused: {exc}"
        assert all(any(key in p for key in broken) for p in problems if p), (broken, str(exc))
        return None
    assert not broken, f"accepted, but it breaks the rules of {sorted(broken)}"
    return config


def _split():
    """train/val/test in hundredths that sum to 1, train and test non-empty (val may be 0)."""
    return st.integers(1, 99).flatmap(lambda train: st.integers(0, 99 - train).map(
        lambda val: {"split.train": train / 100, "split.val": val / 100, "split.test": (100 - train - val) / 100}))


def _get(config: PipelineConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def _as_set(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


NO_VAL = {"split.train": 0.85, "split.val": 0.0, "split.test": 0.15}
CSV = {"data.source": "csv", "data.path": "data/file"}
RULES_FROM_BOTH_SIDES = [  # every cross-field rule just kept and just broken, whatever hypothesis draws
    NO_VAL | {"training.early_stopping.enabled": False, "schedule.name": "step"},
    NO_VAL | {"training.early_stopping.enabled": False, "schedule.name": "plateau"},
    NO_VAL,  # early stopping (on by default) needs a validation split
    {"optimizer.nesterov": True, "optimizer.name": "sgd", "optimizer.momentum": 0.5},
    {"optimizer.nesterov": True, "optimizer.name": "sgd", "optimizer.momentum": 0.0},
    {"optimizer.nesterov": True},  # with adam
    {"schedule.name": "cyclical", "schedule.max_lr": 0.002, "optimizer.lr": 0.001},
    {"schedule.name": "cyclical", "schedule.max_lr": 0.001, "optimizer.lr": 0.001},
    {"schedule.name": "onecycle", "schedule.max_lr": 0.0005, "optimizer.lr": 0.001},  # only cyclical needs it above
    {"training.devices": 2, "training.batch_size": 2, "training.mode": "batch"},
    {"training.devices": 3, "training.batch_size": 2},
    {"training.devices": 2, "training.mode": "stochastic"},
    {"training.devices": 2, "transfer.source": "model.pt"},
    {"training.devices": 1, "transfer.source": "model.pt", "training.mode": "stochastic"},
    CSV | {"model.name": "mlp"},
    CSV,  # with the default cnn
    CSV | {"model.name": "mlp", "augment.hflip": 0.5},
    {"data.source": "csv", "model.name": "mlp"},  # no path
    {"data.source": "torchvision", "data.path": "data/file", "data.dataset": "MNIST"},
    {"data.source": "torchvision", "data.path": "data/file"},  # no dataset
    CSV | {"model.name": "mlp", "augment.mixup": 0.2},  # mixup mixes any inputs
    CSV | {"model.name": "mlp", "augment.cutmix": 1.0},
    CSV | {"model.name": "mlp", "augment.policy": "trivialaugment"},
    {"training.accumulate": 4},
    {"training.accumulate": 2, "training.mode": "batch"},
    {"training.swa.start": 0.75, "training.early_stopping.enabled": False},
    {"training.swa.start": 0.75},  # early stopping on
    {"training.swa.start": 3, "training.early_stopping.enabled": False, "training.ema.decay": 0.99},
    {"training.swa.start": 20_000, "training.early_stopping.enabled": False},  # after the last epoch
    {"training.ema.decay": 0.99},
    {"schedule.name": "cyclical", "schedule.max_lr": 0.001, "optimizer.lr": "find"},  # known once found
]


def _rules_from_both_sides(test):
    for values in reversed(RULES_FROM_BOTH_SIDES):
        test = example(values, {})(test)
    return test


def _as_loaded(key: str, value):
    """A file path given with --set is loaded absolute, against the current folder (URIs are not paths)."""
    if key in ("data.path", "transfer.source") and isinstance(value, str) and value \
            and not value.startswith(("models:/", "runs:/", "torchvision:")) and not value.startswith("/"):
        return str(Path.cwd() / value)
    return value


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys})), st.one_of(st.just({}), _split()))
@_rules_from_both_sides
def test_valid_values_parse_to_exactly_those_values_or_a_named_conflict(values, split):
    values = values | split
    config = _load_as_the_rules_say(values)  # each value is valid alone; together they may break a rule
    if config is None:
        return
    for key, value in values.items():
        assert _get(config, key) == _as_loaded(key, value), key
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


def _as_loaded(key: str, value):
    """A file path given with --set is loaded absolute, against the current folder (URIs are not paths)."""
    if key in ("data.path", "transfer.source") and isinstance(value, str) and value \
            and not value.startswith(("models:/", "runs:/", "torchvision:")) and not value.startswith("/"):
        return str(Path.cwd() / value)
    return value


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys})))
def test_a_saved_config_file_loads_back_equal(tmp_path_factory, values):
    config = _load_as_the_rules_say(values)
    if config is None:
        return
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config
