"""Config contract: defaults, YAML, --set overrides, readable errors, flattening."""

import pytest
import yaml
from pydantic import ValidationError

from trainlib.config import PipelineConfig, flatten, load_config, override, reference, to_yaml, validate
from trainlib.errors import ConfigError


def test_defaults_are_the_documented_contract():
    cfg = PipelineConfig()
    assert (cfg.name, cfg.data.source, cfg.model.name, cfg.optimizer.name) == ("digits-cnn", "digits", "cnn", "adam")
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.7, 0.15, 0.15)
    assert cfg.training.early_stopping.monitor == "val_loss" and cfg.register.alias == "champion"


def test_config_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        PipelineConfig().optimizer.lr = 1.0


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "optimizer": {"name": "sgd", "lr": 0.1}}))
    cfg = load_config(path, ["optimizer.lr=0.05", "augment.scale=[0.9, 1.1]", "training.early_stopping.enabled=false",
                             "schedule.max_lr=null"])
    assert cfg.name == "x" and cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.05
    assert cfg.augment.scale == (0.9, 1.1) and cfg.training.early_stopping.enabled is False
    assert cfg.schedule.max_lr is None


def test_yaml_round_trip():
    cfg = load_config(None, ["model.name=mlp", "schedule.name=cosine"])
    assert validate(yaml.safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize("overrides, expected", [
    (["optimizer.lrr=0.1"], "optimizer.lrr: unknown key (did you mean 'optimizer.lr'?)"),
    (["training.early_stopping.patiance=3"], "did you mean 'training.early_stopping.patience'?"),
    (["optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0 (got -1)"),
    (["optimizer.lr=fast"], "optimizer.lr: Input should be a valid number"),
    (["split.train=0.5"], "train + val + test must sum to 1"),
    (["model.dropout=1"], "model.dropout: Input should be less than 1"),
    (["model.name=cnnn"], "unknown model 'cnnn'; valid: cnn, cnn1d, gru, lstm, mlp, resnet18 (did you mean 'cnn'?)"),
    (["optimizer.name=lbfgs"], "valid: adagrad, adam, adamw, rmsprop, sgd"),
    (["schedule.name=linear"], "valid: cosine, cyclical, exponential, none, onecycle, plateau, step"),
    (["normalize.method=zscore"], "valid: minmax, none, standardize, symmetric"),
    (["training.mode=full"], "valid: batch, minibatch, stochastic"),
    (["data.source=hdf5"], "valid: csv, digits, imagefolder, numpy, parquet, torchvision, waveforms"),
    (["training.early_stopping.monitor=loss"], "valid: val_accuracy, val_loss"),
    (["data.source=csv"], "data.path: data.source csv needs a path"),
    (["data.source=csv", "data.path=t.csv", "model.name=cnn"],
     "model.name: cnn takes images (C, H, W); data.source csv is a table (F,) (use cnn1d, gru, lstm, mlp)"),
    (["model.name=cnn1d"], "model.name: cnn1d takes a table (F,) or signals (C, L); data.source digits is "
                           "images (C, H, W) (use cnn, mlp, resnet18)"),
    (["data.source=waveforms", "model.name=gru", "augment.rotation=10"],
     "augment.rotation: applies to images; data.source waveforms is signals (C, L), which takes amplitude, "
     "erasing, hflip, noise, scale, translate, wrap"),
    (["data.source=csv", "data.path=t.csv", "model.name=mlp", "augment.noise=0.1"],
     "augment.noise: applies to images and signals; data.source csv is a table (F,), which takes only mixup"),
    (["data.source=imagefolder", "data.path=x", "data.channels=2"],
     "data.channels: imagefolder reads 1 (grayscale) or 3 (RGB) channels, not 2"),
    (["data.source=torchvision", "data.path=x", "data.dataset=SVHN"], "data.dataset: 'SVHN'"),
    (["optimizer.nesterov=true"], "optimizer.nesterov: needs optimizer.name sgd"),
    (["augment.scale=[1.2,0.8]"], "augment.scale: low 1.2 is above high 0.8"),
    (["augment.expand=2"], "augment.expand: needs at least one augmentation"),
    (["split.val=0", "split.train=0.85"], "training.early_stopping: needs a validation split"),
    (["split.test=0", "split.train=0.85"], "split.test: must be above 0"),
    (["schedule.name=cyclical", "schedule.max_lr=0.0001"], "schedule.max_lr (0.0001) must be above optimizer.lr"),
    (["training.device=gpu"], "training.device: 'gpu' is not a device"),
    (["data.source=imagefolder", "data.path=x", "data.stream=true", "augment.rotation=5", "augment.expand=1"],
     "augment.expand: needs in-memory data"),
    (["name=has space"], "name: String should match pattern"),
    (["optimizer=3"], "optimizer: Input should be a valid dictionary"),
    (["lr"], "--set 'lr': expected key=value"),
    (["transfer.source=\x00"], "transfer.source: '\\x00' is not a path (it holds a NUL character)"),  # hypothesis
])
def test_bad_config_gives_one_readable_message(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value) and "pydantic" not in str(info.value)


def test_several_problems_are_listed_together():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optimizer.lr=0", "model.dropout=2"])
    assert "optimizer.lr" in str(info.value) and "model.dropout" in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_flatten_has_every_leaf_with_dotted_names():
    flat = flatten(PipelineConfig())
    assert flat["optimizer.lr"] == 0.001 and flat["training.early_stopping.patience"] == 5
    assert set(flat) == {key for key, _, _ in reference()}


def test_every_field_is_documented():
    missing = [key for key, _, description in reference() if not description]
    assert missing == []


def test_override_revalidates():
    cfg = override(PipelineConfig(), {"optimizer.lr": 0.5, "model.name": "mlp"})
    assert cfg.optimizer.lr == 0.5 and cfg.model.name == "mlp"
    with pytest.raises(ConfigError):
        override(cfg, {"optimizer.lr": -1})


def test_paths_in_a_config_file_are_read_against_its_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "conf.yaml").write_text(yaml.safe_dump({"data": {"source": "csv", "path": "data/x.csv"},
                                                       "model": {"name": "mlp"},
                                                       "transfer": {"source": "models:/m@champion"}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(project / "conf.yaml")
    assert cfg.data.path == str(project / "data" / "x.csv")  # the file's neighbour, from any directory
    assert cfg.transfer.source == "models:/m@champion"  # a URI is not a path
    given = load_config(project / "conf.yaml", ["data.path=mine.csv", "transfer.source=weights/m.pt"])
    assert given.data.path == str(elsewhere / "mine.csv")  # --set: the current folder
    assert given.transfer.source == str(elsewhere / "weights" / "m.pt")
    (project / "tf.yaml").write_text("transfer: {source: weights/m.pt}\n")
    assert load_config(project / "tf.yaml").transfer.source == str(project / "weights" / "m.pt")
