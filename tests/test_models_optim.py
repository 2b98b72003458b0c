"""Model builders (and their exported programs: on any device), optimizers and the L1/L2 penalties."""

import re

import pytest
import torch
from torch import nn

from trainlib import models, optim
from trainlib.data import normalize
from trainlib.device import pinned, to_device
from trainlib.errors import ConfigError
from trainlib.export import export, load_exported
from trainlib.models import MODELS
from trainlib.optim import OPTIMIZERS

OPTIONS = {"dropout": 0.3, "hidden": [32], "channels": [8, 16], "hidden_size": 12, "kernel_size": 3}
SHAPES = {3: [(1, 8, 8), (3, 32, 32)], 2: [(1, 64), (3, 50)], 1: [(5,)]}  # images, signals, a table: by dimensions
TAKES = [(name, shape) for name in sorted(MODELS) for d in MODELS[name].dims for shape in SHAPES[d]]
REFUSES = [(name, shape) for name in sorted(MODELS) for d in SHAPES if d not in MODELS[name].dims
           for shape in SHAPES[d][:1]]


@pytest.mark.parametrize(("name", "shape"), TAKES)
def test_every_model_maps_what_it_takes_to_logits(name, shape):
    model = models.build(name, shape, 7, None, **OPTIONS)
    out = model(torch.randint(0, 255, (4, *shape), dtype=torch.uint8))
    assert out.shape == (4, 7) and out.dtype == torch.float32
    drops = [m.p for m in model.modules() if isinstance(m, models.Dropout)]
    assert drops and all(p == 0.3 for p in drops)


@pytest.mark.parametrize(("name", "shape"), REFUSES)
def test_a_model_given_data_of_another_kind_names_both_shapes(name, shape):
    needs = {3: r"images \(C, H, W\)", 2: r"signals \(C, L\)"}[max(MODELS[name].dims)]
    with pytest.raises(ConfigError, match=rf"model.name: {name} needs {needs}; this data is .* of shape "
                                          rf"{re.escape(str(shape))} \(use "):
        models.build(name, shape, 3, None, **OPTIONS)


def test_a_signal_model_reads_a_tables_columns_as_one_signal_in_their_order():
    net = models.build("cnn1d", (6,), 2, None, **OPTIONS).eval().net
    x = torch.randn(3, 6)
    assert isinstance(net[0], nn.Unflatten) and isinstance(net[1], nn.Conv1d) and net[1].in_channels == 1
    assert torch.equal(net(x), net[1:](x.view(3, 1, 6)))  # the columns, in order, as the steps of one channel


def test_recurrent_models_read_the_time_steps_in_order():
    torch.manual_seed(0)
    for name in ("gru", "lstm"):
        net = models.build(name, (2, 9), 3, None, **OPTIONS).eval()
        x = torch.randn(4, 2, 9)
        assert not torch.allclose(net(x), net(x.flip(2)))  # order matters (an mlp on shuffled steps would too)
        rnn = net.net.rnn
        assert (rnn.input_size, rnn.hidden_size) == (2, 12)
        both = models.build(name, (2, 9), 3, None, **OPTIONS | {"bidirectional": True, "layers": 2}).net
        assert both.rnn.bidirectional and both.rnn.num_layers == 2 and both.head.in_features == 24


def test_resnet18_stem_is_adapted_to_small_images_and_channels():
    net = models.build("resnet18", (1, 8, 8), 10, None, dropout=0.1).net
    assert net.conv1.in_channels == 1 and net.conv1.stride == (1, 1) and isinstance(net.maxpool, nn.Identity)


def test_normalization_is_inside_the_model_and_saved_with_it(tmp_path):
    raw = torch.randint(0, 16, (10, 1, 8, 8)).to(torch.uint8)
    stats = normalize.fit("standardize", raw, dims=3)
    model = models.build("cnn", (1, 8, 8), 10, stats, **OPTIONS).eval()
    models.save_model(tmp_path / "m.pt", model, classes=list("0123456789"))
    back, saved = models.load_model(tmp_path / "m.pt")
    assert torch.equal(back(raw), model(raw)) and saved["classes"][3] == "3"
    assert torch.allclose(model.normalize(raw), (raw.float() - stats.shift[0]) * stats.scale[0])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_lowers_a_simple_loss(name):
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 4), torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = nn.Linear(4, 1)
    opt = optim.build(name, model.parameters(), lr=0.2, momentum=0.5, weight_decay=0.0)
    loss = lambda: ((model(x) - x @ w_true) ** 2).mean()  # noqa: E731
    before = loss().item()
    for _ in range(100):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * before


def test_optimizer_options_reach_torch():
    p = [nn.Parameter(torch.zeros(2))]
    sgd = optim.build("sgd", p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 0.01
    assert optim.build("adam", p, lr=0.1, betas=(0.8, 0.9)).defaults["betas"] == (0.8, 0.9)
    assert optim.build("rmsprop", p, lr=0.1, alpha=0.9).defaults["alpha"] == 0.9
    assert isinstance(optim.build("adamw", p, lr=0.1), torch.optim.AdamW)


def test_penalty_acts_on_weights_not_biases_or_norms():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    weights = optim.penalized_weights(model)
    assert [tuple(w.shape) for w in weights] == [(2, 1, 3, 3), (3, 2)]
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-0.5)
    n = sum(w.numel() for w in weights)
    assert optim.penalty(weights, l1=0.1).item() == pytest.approx(0.1 * 0.5 * n)
    assert optim.penalty(weights, l2=0.1).item() == pytest.approx(0.1 * 0.25 * n)
    assert optim.penalty(weights).item() == 0.0


def test_norms_and_biases_get_their_own_weight_decay_in_every_group():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    conv, norm, head = model[0], model[1], model[3]
    plain = list(model.parameters())
    assert optim.decay_groups(model, plain, 0.05) is plain  # unchanged without either: today's one group
    groups = [{"params": list(head.parameters())}, {"params": [*conv.parameters(), *norm.parameters()], "lr": 0.01}]
    out = optim.decay_groups(model, groups, 0.05, norm=0.0, bias=0.001)
    by_param = {id(p): (g["weight_decay"], g.get("lr")) for g in out for p in g["params"]}
    assert by_param[id(head.weight)] == (0.05, None) and by_param[id(head.bias)] == (0.001, None)
    assert by_param[id(conv.weight)] == (0.05, 0.01) and by_param[id(conv.bias)] == (0.001, 0.01)
    assert by_param[id(norm.weight)] == by_param[id(norm.bias)] == (0.0, 0.01)  # a norm's shift is no bias here
    assert out[0]["params"] == [head.weight] and len(by_param) == 6  # the head's group stays first; each once
    sgd = optim.build("sgd", out, lr=0.1, weight_decay=0.05)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.05, 0.001, 0.05, 0.0, 0.001]


@pytest.mark.parametrize(("name", "shape"), [(name, SHAPES[max(MODELS[name].dims)][0]) for name in sorted(MODELS)])
def test_an_exported_model_names_no_device_and_runs_on_the_one_its_weights_are_moved_to(name, shape, tmp_path):
    # registered models are exported on the CPU; a node naming the device would keep them there (on a GPU: refused)
    model = models.build(name, shape, 3, None, **OPTIONS).calibrated(1.5).eval()
    export(model, torch.rand(4, *shape), tmp_path / "model.pt2")
    assert pinned(torch.export.load(str(tmp_path / "model.pt2")).graph) == []
    moved = to_device(load_exported(tmp_path / "model.pt2"), "meta")  # a device of another type, on any machine
    out = moved(torch.zeros(5, *shape, device="meta"))
    assert out.device.type == "meta" and out.shape == (5, 3)


def test_a_program_exported_naming_the_cpu_is_moved_with_its_nodes(tmp_path):
    class Before(nn.Module):  # as trainflow's recurrent models and casts were exported before: two nodes name the CPU
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(2, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x.float().transpose(1, 2))[0][:, -1]

    export(Before().eval(), torch.rand(3, 2, 6), tmp_path / "before.pt2")
    assert len(pinned(torch.export.load(str(tmp_path / "before.pt2")).graph)) == 2
    moved = to_device(load_exported(tmp_path / "before.pt2"), "meta")
    assert moved(torch.zeros(2, 2, 6, device="meta")).device.type == "meta"
