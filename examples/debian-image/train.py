"""The default recipe's training job: softmax regression on data/train.csv, numpy only.

Writes model.npz (weights, bit-for-bit the same for the same inputs and seed) and
metrics.json (accuracy and loss on a held-out split).
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile

import numpy as np


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, :-1], table[:, -1].astype(np.int64)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with a fixed zip timestamp so equal weights give equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/train.csv")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="model.npz")
    parser.add_argument("--metrics", default="metrics.json")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    x, y = load(args.data)
    order = rng.permutation(len(y))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / std
    classes = int(y.max()) + 1
    w = rng.normal(scale=0.01, size=(x.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y[train]]
    for _ in range(args.epochs):
        p = softmax(x[train] @ w + b)
        grad = (p - onehot) / len(train)
        w -= args.lr * (x[train].T @ grad + args.l2 * w)
        b -= args.lr * grad.sum(axis=0)

    p_test = softmax(x[test] @ w + b)
    metrics = {
        "accuracy": float((p_test.argmax(axis=1) == y[test]).mean()),
        "loss": float(-np.log(p_test[np.arange(len(test)), y[test]] + 1e-12).mean()),
    }
    save_npz(args.out, {"w": w, "b": b, "mean": mean, "std": std})
    with open(args.metrics, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}")


if __name__ == "__main__":
    main()
