"""Train a small MLP on two interleaved spirals with torch on the CPU.

Seeded through builder.runtime (REPRO_SEED from `repro run`); data loading is seeded too, so
two runs write byte-identical model.pt files.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from builder.runtime import generator, log_metrics, seed_everything, worker_init_fn


def spirals(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.rand(n, generator=g) * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    angle = t + label * math.pi
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1) / (3 * math.pi)
    x += 0.02 * torch.randn(n, 2, generator=g)
    return x, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    seed = seed_everything()
    torch.set_num_threads(int(os.environ.get("REPRO_THREADS", "1")))
    data = torch.Generator().manual_seed(0)  # the data set is fixed; the seed moves the model
    x, y = spirals(2000, data)
    train = DataLoader(TensorDataset(x[:1600], y[:1600]), batch_size=64, shuffle=True,
                       generator=generator(seed), worker_init_fn=worker_init_fn)
    model = nn.Sequential(nn.Linear(2, args.hidden), nn.Tanh(), nn.Linear(args.hidden, args.hidden),
                          nn.Tanh(), nn.Linear(args.hidden, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        for xb, yb in train:
            optimiser.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        logits = model(x[1600:])
        accuracy = (logits.argmax(dim=1) == y[1600:]).float().mean().item()
        test_loss = loss_fn(logits, y[1600:]).item()
    torch.save(model.state_dict(), "model.pt")
    log_metrics(accuracy=accuracy, loss=test_loss)
    print(f"accuracy {accuracy:.4f}  loss {test_loss:.4f}")


if __name__ == "__main__":
    main()
