"""Benchmark 1: the engine (`trainlib.engine.fit`) vs a minimal hand-written loop.

Same model (same initial weights), data, batch size, optimizer, precision and threads; data in memory;
no tracking, no validation. Each measure is the samples/s of whole training calls (a few epochs). Each side
trains in a process of its own (the rounds shared among --pairs fresh pairs of processes); the two run back to
back in rounds, alternating which goes first; after a warm-up round the table shows the medians of the rounds
and the median of the per-round ratios (robust to the drift of a shared machine's speed), with a
distribution-free 95% interval of that median (bench.common.median_interval): on these 2-CPU machines a
round's ratio varies by +-20%, so a gap of a few percent needs dozens of rounds.

    .venv/bin/python -m bench.engine [--repeats 21] [--pairs 3] [--only NAME] [--quick]

CPU workloads always run; the GPU workloads (resnet18 on 3x32x32 at batch 512, a small fast convnet at
batch 1024, bf16 autocast, channels_last) run when CUDA is available.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.common import header, median_interval, rounds, stopwatch, table
from bench.handloop import hand_loop
from trainlib import engine, models, recipe
from trainlib.config import PipelineConfig, load_config
from trainlib.data.augment import Augmenter
from trainlib.data.batches import TensorData
from trainlib.data.signal_augment import SignalAugmenter
from trainlib.device import configure_threads, resolve_device, resolve_precision
from trainlib.loop import Runtime, Step

# configs/augmentation.yaml
AUGMENT = {"rotation": 12, "scale": (0.9, 1.1), "translate": 0.1, "erasing": 0.2, "noise": 0.02}
# configs/signals.yaml
SIGNAL_AUGMENT = {"translate": 0.2, "scale": (0.9, 1.1), "amplitude": 0.2, "noise": 0.1, "erasing": 0.2}


@dataclass
class Workload:
    name: str
    model: Callable[[], nn.Module]  # a fresh model; the same initial weights every call
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (inputs, labels) on the CPU
    batch_size: int
    epochs: int  # per measured call
    augment: Augmenter | SignalAugmenter | None = None
    gpu: bool = False


def digits(cfg: PipelineConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, models.NormStats, list[str]]:
    """The default config's (or `cfg`'s) train split and its normalization statistics."""
    cfg = cfg or PipelineConfig()
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    train = recipe.part(ds, manifest, "train")
    return train.inputs, train.labels, recipe.fit_normalizer(ds, manifest, cfg.normalize), ds.classes


def synthetic(n: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images with random labels: speed does not depend on what the pixels show."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, classes, (n,), generator=g)


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(seed)
        return build()
    return make


def fast_convnet(in_shape, n_classes: int, widths=(64, 256, 256, 256)) -> nn.Module:
    """A small fast CIFAR convnet (in the style of the CIFAR-10 speed runs): conv-BN-GELU blocks with
    max-pooling, then a linear head."""
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.GELU()]
    for c_in, c_out in zip(widths, widths[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU(),
                   nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], n_classes, bias=False))


def workloads(quick: bool) -> list[Workload]:
    x, y, norm, classes = digits()
    digit = lambda: (x, y)  # noqa: E731
    n28, n_resnet, n_fast = (512, 1024, 2048) if quick else (4096, 10_000, 50_000)
    aug = Augmenter(**AUGMENT, value_max=16.0)
    aug255 = Augmenter(**AUGMENT, value_max=255.0)
    cnn = seeded(lambda: models.build("cnn", (1, 8, 8), 10, norm))
    mlp = seeded(lambda: models.build("mlp", (1, 8, 8), 10, norm))
    cnn28 = seeded(lambda: models.build("cnn", (1, 28, 28), 10))
    wx, wy, wnorm, _ = digits(load_config(None, ["data.source=waveforms", "model.name=cnn1d"]))
    waves, length = (lambda: (wx[:256], wy[:256])) if quick else (lambda: (wx, wy)), wx.shape[-1]
    signal = {name: seeded(lambda name=name: models.build(name, (1, length), 5, wnorm))
              for name in ("cnn1d", "gru", "lstm")}
    e = 1 if quick else 5
    return [
        Workload("cnn / digits", cnn, digit, 64, e),
        Workload("cnn / digits + augment", cnn, digit, 64, e, aug),
        Workload("mlp / digits", mlp, digit, 64, e),
        Workload("mlp / digits + augment", mlp, digit, 64, e, aug),
        Workload("cnn1d / waveforms", signal["cnn1d"], waves, 64, e),
        Workload("cnn1d / waveforms + augment", signal["cnn1d"], waves, 64, e, SignalAugmenter(**SIGNAL_AUGMENT)),
        Workload("gru / waveforms", signal["gru"], waves, 64, 1),
        Workload("lstm / waveforms", signal["lstm"], waves, 64, 1),
        Workload("cnn / synthetic 1x28x28", cnn28, lambda: synthetic(n28, (1, 28, 28)), 128, 1),
        Workload("cnn / synthetic 1x28x28 + augment", cnn28, lambda: synthetic(n28, (1, 28, 28)), 128, 1, aug255),
        Workload("resnet18 / synthetic 3x32x32", seeded(lambda: models.build("resnet18", (3, 32, 32), 10)),
                 lambda: synthetic(n_resnet, (3, 32, 32)), 512, 1, gpu=True),
        Workload("fast convnet / synthetic 3x32x32", seeded(lambda: models.Classifier(
            models.Normalize([0.0], [1.0], dims=3), fast_convnet((3, 32, 32), 10))),
                 lambda: synthetic(n_fast, (3, 32, 32)), 1024, 1, gpu=True),
    ]


def side(w: Workload, which: str, device: torch.device) -> Callable[[], float]:
    """One side of a workload, ready to train: each call trains `w.epochs` more and returns its samples/s."""
    x, y = w.data()
    n = len(y)
    data = TensorData(x, y).to(device)
    model = w.model()  # seeded: both sides' processes start from the same weights
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if which == "engine":
        step = Step(optimizer, batch_size=w.batch_size, augment=w.augment)
        return lambda: n * w.epochs / stopwatch(lambda: engine.fit(
            model, data, None, epochs=w.epochs, step=step, runtime=Runtime(device)), device)
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = resolve_precision("auto", device)
    return lambda: n * w.epochs / stopwatch(lambda: hand_loop(
        model, data.inputs, data.labels, optimizer, epochs=w.epochs, batch_size=w.batch_size, augment=w.augment,
        amp=amp, channels_last=channels_last), device)


def serve(which: str, name: str, device: str, quick: bool) -> None:
    """A side's own process: builds workload `name`, says `ready`, then trains one call per line read and
    prints its samples/s."""
    configure_threads()
    run = side(next(w for w in workloads(quick) if w.name == name), which, resolve_device(device))
    print("ready", flush=True)
    for _ in sys.stdin:
        print(run(), flush=True)


class Process:
    """A side served by its own process (`serve`), called like `side`'s function."""

    def __init__(self, which: str, w: Workload, device: torch.device, quick: bool):
        self.which, self.name = which, w.name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.engine", "--serve", which, "--workload", w.name, "--device", device.type,
             *(["--quick"] if quick else [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {which} side of {w.name!r} did not start (its error is above)")

    def __call__(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.which} side of {self.name!r} stopped (its error is above)")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure(w: Workload, device: torch.device, repeats: int, quick: bool = False,
            pairs: int = 3) -> tuple[float, float, float, tuple[float, float]]:
    """Samples/s of the engine and of the hand-written loop on one workload, and their ratio (medians of
    `repeats` rounds), with a 95% interval of the ratio's median. Each side trains in a process of its own, as
    it would for a user: two training loops in one process share its heap, and each one's allocations change
    where the other's land (cnn1d measured 0.868 [0.789, 0.940] in one process, 1.013 [0.948, 1.044] in two).
    The rounds are shared among `pairs` fresh pairs of processes: where one process's memory and threads land
    moves its speed by several percent for its whole life (cnn1d once measured 1.093 [1.058, 1.137] on one
    pair)."""
    a, b = [], []
    for k in range(pairs):
        share = repeats // pairs + (k < repeats % pairs)
        if not share:
            continue
        sides = [Process("engine", w, device, quick), Process("hand", w, device, quick)]
        try:
            ours, theirs = rounds(*sides, share, first=len(a))  # the order keeps alternating across pairs
        finally:
            for s in sides:
                s.close()
        a, b = a + ours, b + theirs
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(a), statistics.median(b), statistics.median(ratios), median_interval(ratios)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=21, help="measured rounds (medians reported)")
    p.add_argument("--pairs", type=int, default=3, help="fresh pairs of processes the rounds are shared among")
    p.add_argument("--only", help="run the workloads whose name contains this text")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the benchmark runs")
    p.add_argument("--gpu-workloads", action="store_true", help="run the GPU workloads even without a GPU")
    p.add_argument("--serve", choices=["engine", "hand"], help=argparse.SUPPRESS)  # a side's own process
    p.add_argument("--workload", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.workload, args.device, args.quick)
    device = resolve_device(args.device)
    threads = configure_threads()
    rows = []
    for w in workloads(args.quick):
        if (args.only and args.only not in w.name) or (w.gpu and device.type != "cuda" and not args.gpu_workloads):
            continue
        ours, theirs, ratio, (low, high) = measure(w, device, args.repeats, args.quick, args.pairs)
        rows.append([w.name, device.type, w.batch_size, ours, theirs, f"{ratio:.3f}", f"[{low:.3f}, {high:.3f}]"])
        print(f"{w.name}: engine {ours:,.0f}/s, hand {theirs:,.0f}/s, ratio {ratio:.3f} [{low:.3f}, {high:.3f}]",
              flush=True)
    print()
    print(header(f"Engine vs hand-written loop (samples/s, median of {args.repeats}; {threads} threads; "
                 f"precision {'bf16 autocast' if device.type == 'cuda' else 'fp32'})"))
    print(table(["workload", "device", "batch", "engine", "hand loop", "ratio", "95% interval"], rows))


if __name__ == "__main__":
    main()
