"""What a user would write without trainflow: one script that loads digits, trains the default cnn with
a minimal loop for a number of epochs (validating after each, as the pipeline does) and reports test
accuracy. bench.overhead times it as a process, against `trainflow run`.

    python -m bench.handscript EPOCHS
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

from bench.handloop import hand_loop
from trainlib import models, recipe
from trainlib.config import PipelineConfig
from trainlib.device import configure_threads


def main(epochs: int) -> None:
    configure_threads()
    cfg = PipelineConfig()
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)
    train, val, test = (recipe.part(ds, manifest, s) for s in ("train", "val", "test"))
    torch.manual_seed(cfg.training.seed)
    model = models.build("cnn", ds.sample_shape, len(ds.classes), norm, dropout=cfg.model.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        hand_loop(model, train.inputs, train.labels, optimizer, epochs=1, batch_size=cfg.training.batch_size,
                  seed=epoch)
        model.eval()
        with torch.no_grad():
            val_loss = F.cross_entropy(model(val.inputs), val.labels).item()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(test.inputs).argmax(1) == test.labels).float().mean().item()
    print(json.dumps({"train_seconds": seconds, "test_accuracy": accuracy, "val_loss": val_loss}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
