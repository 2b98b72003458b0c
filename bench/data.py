"""Benchmark 3: the data path.

1. Iteration only (no model): the engine's in-memory batch iterator (`TensorData.batches`) vs slicing a
   shuffled index by hand, and a DataLoader over a TensorDataset for reference; samples/s.
2. ImageFolder streaming, decode + augment: trainflow's streamed images (decoded by DataLoader workers,
   augmented per sample in batch) vs a plain torchvision ImageFolder with per-sample v2 transforms in the
   same number of workers; images/s over one epoch of generated 32x32 PNG files.

    .venv/bin/python -m bench.data [--repeats 5] [--images 3000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import header, paired, stopwatch, table
from bench.engine import AUGMENT, digits, synthetic
from trainlib.data.augment import Augmenter
from trainlib.data.batches import StreamData, TensorData
from trainlib.data.sources import load_imagefolder
from trainlib.device import configure_threads

WORKERS = 2


def by_hand(x: torch.Tensor, y: torch.Tensor, batch_size: int, g: torch.Generator) -> None:
    order = torch.randperm(len(y), generator=g)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        x[idx], y[idx]


def iterate(name: str, inputs: torch.Tensor, labels: torch.Tensor, repeats: int) -> list:
    data, g, n = TensorData(inputs, labels), torch.Generator().manual_seed(0), len(labels)
    ours, theirs, ratio = paired(lambda: n / stopwatch(lambda: [None for _ in data.batches(64, g)]),
                                 lambda: n / stopwatch(lambda: by_hand(inputs, labels, 64, g)), repeats)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=64, shuffle=True)
    return [name, 64, ours, theirs, f"{ratio:.3f}", n / stopwatch(lambda: [None for _ in loader])]


def iteration(repeats: int) -> list[list]:
    x, y, _, _ = digits()
    return [iterate("digits (1x8x8)", x, y, repeats),
            iterate("synthetic 1x28x28, 60,000", *synthetic(60_000, (1, 28, 28)), repeats)]


def write_folder(root: Path, images: int, classes: int = 10, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def streaming(root: Path, repeats: int) -> list:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    ds = load_imagefolder(root, image_size=(32, 32), channels=3, stream=True)
    n = len(ds)
    ours_data = StreamData(ds.inputs, np.arange(n), workers=WORKERS)
    aug = Augmenter(**AUGMENT, hflip=0.5, value_max=255.0)
    g, ag = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    transform = v2.Compose([v2.PILToTensor(), v2.RandomAffine(degrees=AUGMENT["rotation"], translate=(0.1, 0.1),
                                                              scale=AUGMENT["scale"]),
                            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32), v2.RandomErasing(p=0.2)])
    theirs_data = ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(theirs_data, batch_size=64, shuffle=True, num_workers=WORKERS,
                                         persistent_workers=True, multiprocessing_context="forkserver")

    def ours():
        return n / stopwatch(lambda: [aug(x, ag) for x, _ in ours_data.batches(64, g)])

    def theirs():
        return n / stopwatch(lambda: [None for _ in loader])

    a, b, ratio = paired(ours, theirs, repeats)
    return [f"ImageFolder, {n} PNG 32x32, decode + augment", WORKERS, a, b, f"{ratio:.3f}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=3000, help="generated image files for the streaming test")
    args = p.parse_args(argv)
    threads = configure_threads()
    rows = iteration(args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        stream = streaming(write_folder(Path(tmp), args.images), args.repeats)
    print(header(f"Data path (samples/s, median of {args.repeats}; {threads} threads)"))
    print(table(["iteration only", "batch", "engine iterator", "hand slicing", "ratio", "DataLoader(TensorDataset)"],
                rows))
    print()
    print(table(["streaming", "workers", "trainflow (batched augment)", "torchvision ImageFolder + v2", "ratio"],
                [stream]))


if __name__ == "__main__":
    main()
