"""Transfer learning in trainlib: sources, weight transplant (new head, adapted stem, readable mismatches),
freezing and unfreezing, discriminative LRs; few-shot data (class subsets, shots per class)."""

import pytest
import torch

from trainlib import recipe, transfer
from trainlib.config import load_config
from trainlib.data.sources import Dataset, keep_classes
from trainlib.data.split import indices, split_manifest
from trainlib.errors import ConfigError, DataError
from trainlib.models import build, save_model

FEW = ["data.classes=[5,6,7,8,9]", "split.shots=10", "training.batch_size=16", "training.epochs=3",
       "training.early_stopping.enabled=false"]


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    """A cnn trained briefly on digits 0-4, saved as trainflow saves models."""
    out = recipe.run(load_config(None, ["data.classes=[0,1,2,3,4]", "training.epochs=2"]))
    path = tmp_path_factory.mktemp("source") / "model.pt"
    save_model(path, out.model, classes=out.dataset.classes)
    return path


def _target(*overrides):
    cfg = load_config(None, [*FEW, *overrides])
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    return cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize)


def _backbone(model) -> dict[str, torch.Tensor]:
    top = {id(p) for p in transfer.head(model).parameters()}
    params = {n: p.detach().clone() for n, p in model.net.named_parameters() if id(p) not in top}
    return params | {n: b.clone() for n, b in model.net.named_buffers()}


def test_class_subset_and_shots_per_class(digits):
    five = keep_classes(digits, ["5", "6", "7", "8", "9"])
    assert five.classes == ["5", "6", "7", "8", "9"] and set(five.labels.tolist()) == set(range(5))
    assert len(five) == int((digits.labels >= 5).sum()) and five.digest != digits.digest
    manifest = split_manifest(five.labels.numpy(), shots=10, classes=five.classes)
    train = manifest[manifest["split"] == "train"]
    assert train.groupby("label").size().tolist() == [10] * 5
    full = split_manifest(five.labels.numpy(), classes=five.classes)
    assert (indices(manifest, "test") == indices(full, "test")).all()  # val and test unchanged
    with pytest.raises(DataError, match="data.classes: '11' not among"):
        keep_classes(digits, ["1", "11"])
    with pytest.raises(DataError, match="split.shots: class '5' has .* fewer than the 500 shots"):
        split_manifest(five.labels.numpy(), shots=500, classes=five.classes)


def test_feature_extraction_never_changes_the_backbone(source_file):
    cfg, ds, manifest, norm = _target("transfer.strategy=feature_extraction")
    model = recipe.build_model(cfg, ds, norm)
    params, freezer = recipe.transfer_setup(cfg, model, source_file)
    before, head_before = _backbone(model), transfer.head(model).weight.detach().clone()
    trained, fit = recipe.train(cfg, ds, manifest, norm, source=source_file)
    after = _backbone(trained)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # incl. BN stats
    assert not torch.equal(head_before, transfer.head(trained).weight) and fit.stopped_epoch == 3


def test_finetune_trains_the_head_first_then_the_backbone_at_a_lower_lr(source_file):
    cfg, ds, manifest, norm = _target("transfer.head_epochs=2", "transfer.backbone_lr=0.1", "optimizer.lr=0.01")
    model = recipe.build_model(cfg, ds, norm)
    params, _ = recipe.transfer_setup(cfg, model, source_file)
    head_group, backbone_group = params
    assert "lr" not in head_group and backbone_group["lr"] == pytest.approx(0.001)
    assert backbone_group["lr"] < cfg.optimizer.lr  # the head group runs at optimizer.lr
    assert {id(p) for p in head_group["params"]} == {id(p) for p in transfer.head(model).parameters()}
    start = _backbone(model)
    two, _ = recipe.train(override_epochs(cfg, 2), ds, manifest, norm, source=source_file)
    assert all(torch.equal(start[k], v) for k, v in _backbone(two).items())  # head only for 2 epochs
    three, _ = recipe.train(cfg, ds, manifest, norm, source=source_file)
    moved = [k for k, v in _backbone(three).items() if not torch.equal(start[k], v)]
    assert any(k.endswith("weight") for k in moved)
    assert not any("running" in k for k in moved)  # freeze_norm: batch norms keep the source's statistics


def override_epochs(cfg, epochs):
    from trainlib.config import override

    return override(cfg, {"training.epochs": epochs})


def test_gradual_unfreezing_releases_one_group_at_a_time_from_the_top():
    frozen = transfer.STRATEGIES["finetune"].frozen(groups=4, head_epochs=2, gradual=3)
    assert [frozen(done) for done in range(0, 14, 1)] == [4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert transfer.STRATEGIES["finetune"].frozen(4, 2, 0)(2) == 0  # all at once
    assert transfer.STRATEGIES["feature_extraction"].frozen(4, 2, 0)(99) == 4
    assert transfer.STRATEGIES["scratch"].frozen(4, 2, 0)(0) == 0
    model = build("cnn", (1, 8, 8), 5, None)
    groups = transfer.groups(model)
    assert len(groups) == 4 and all(isinstance(g[0], torch.nn.Conv2d) and len(g) == 2 for g in groups)
    resnet = transfer.groups(build("resnet18", (3, 16, 16), 5, None))
    assert len(resnet) == 5  # stem (conv1 + bn1) and the four stages


@pytest.mark.parametrize("strategy", list(transfer.STRATEGIES))
def test_every_strategy_trains_from_a_source(strategy, source_file):
    cfg, ds, manifest, norm = _target(f"transfer.strategy={strategy}", "training.epochs=1")
    model, fit = recipe.train(cfg, ds, manifest, norm, source=source_file)
    assert fit.stopped_epoch == 1 and recipe.test(cfg, model, ds, manifest).accuracy > 0


@pytest.mark.parametrize("strategy", list(transfer.STRATEGIES))
def test_every_strategy_sets_training_up_as_its_entry_says(strategy, source_file):
    entry = transfer.STRATEGIES[strategy]
    cfg, ds, _, norm = _target(f"transfer.strategy={strategy}", "transfer.head_epochs=1")
    fresh, model = recipe.build_model(cfg, ds, norm), recipe.build_model(cfg, ds, norm)
    params, freezer = recipe.transfer_setup(cfg, model, source_file)
    source = transfer.load_source(source_file).state
    weights = [k for k, v in model.state_dict().items() if k.startswith("net.") and v.ndim >= 2]
    assert any(torch.equal(model.state_dict()[k], source[k]) for k in weights) == entry.copies_weights
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items()) != entry.copies_weights
    groups = list(params)
    assert (len(groups) == 2 and isinstance(groups[0], dict)) == entry.backbone_group
    frozen = entry.frozen(len(freezer.groups), 1, 0)(0)  # backbone groups frozen in the first epoch
    assert [not any(p.requires_grad for m in g for p in m.parameters()) for g in freezer.groups] == \
        [i < frozen for i in range(len(freezer.groups))]


def test_a_new_head_and_an_adapted_stem(source_file, tmp_path):
    source = transfer.load_source(source_file)
    assert source.classes == ["0", "1", "2", "3", "4"] and source.spec["name"] == "cnn"
    rgb = build("cnn", (3, 8, 8), 7, None)  # 3 channels and 7 classes where the source had 1 and 5
    report = transfer.transplant(rgb, source)
    assert report.new == ["net.17.bias", "net.17.weight"]
    assert report.adapted == ["net.0.weight: 1 -> 3 input channels"]
    gray = torch.rand(2, 1, 8, 8)  # a gray image repeated over 3 channels meets the same first-layer response
    response = torch.nn.functional.conv2d(gray.expand(-1, 3, -1, -1), rgb.net[0].weight, padding=1)
    expected = torch.nn.functional.conv2d(gray, source.state["net.0.weight"], padding=1)
    assert torch.allclose(response, expected, atol=1e-5)
    assert torch.equal(rgb.net[3].weight, source.state["net.3.weight"])


def test_incompatible_sources_are_readable_errors(source_file, tmp_path):
    mlp = build("mlp", (1, 8, 8), 5, None)
    mlp_file = tmp_path / "mlp.pt"
    save_model(mlp_file, mlp)
    with pytest.raises(ConfigError, match=r"takes 64 input features per sample \(inputs \(1, 8, 8\)\), this data "
                                          r"gives 4; a fully connected first layer cannot be adapted"):
        transfer.transplant(build("mlp", (4,), 3, None), transfer.load_source(mlp_file))
    with pytest.raises(ConfigError, match=r"net.0.weight is \(32, 1, 3, 3\) in the source but \(8, 1, 3, 3\) here"):
        transfer.transplant(build("cnn", (1, 8, 8), 5, None, channels=[8, 16]), transfer.load_source(source_file))
    with pytest.raises(ConfigError, match="its architecture is cnn, the model here is mlp"):
        transfer.transplant(build("mlp", (1, 8, 8), 5, None), transfer.load_source(source_file))
    raw = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), raw)
    with pytest.raises(DataError, match="is not a trainflow model file"):
        transfer.load_source(raw)
    with pytest.raises(ConfigError, match="no such file: nothing.pt"):
        transfer.load_source("nothing.pt")


def test_torchvision_weights_come_from_the_local_cache_or_say_how(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match=r"not in the local torch cache \(.*resnet18-f37072fd.pth\) and this "
                                          r"machine is offline; download resnet18-f37072fd.pth"):
        transfer.load_source("torchvision:resnet18")
    with pytest.raises(ConfigError, match="no torchvision weights for 'vgg11'"):
        transfer.load_source("torchvision:vgg11")
    from torchvision.models import resnet18

    (tmp_path / "checkpoints").mkdir()
    torch.save(resnet18().state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")  # stands in for ImageNet
    source = transfer.load_source("torchvision:resnet18")
    model = build("resnet18", (3, 16, 16), 4, None)
    report = transfer.transplant(model, source)
    assert any("stem for 224-pixel images is replaced" in n for n in report.new)
    assert torch.equal(model.net.layer1[0].conv1.weight, source.state["net.layer1.0.conv1.weight"])


def test_small_dataset_fixture_is_a_dataset(small_digits):
    assert isinstance(small_digits, Dataset)  # keeps the shared fixture honest for the tests above
