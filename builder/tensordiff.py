"""Compare two model files tensor by tensor: `python -m builder.tensordiff A B [.suffix]`.

Prints JSON. The format is the suffix given, else A's (B may be a store object, unnamed).

Runs inside a recipe's environment (next to builder.runtime on the run's PYTHONPATH), where
numpy and torch are, so repro itself needs neither. Formats: .npy, .npz, safetensors, and
torch files (state dicts and checkpoints: nested dicts and lists of tensors).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": None, "I64": "<i8",
                       "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out)
    elif hasattr(value, "shape") or isinstance(value, int | float):
        out[prefix or "value"] = value


def _safetensors(path: Path) -> dict[str, Any]:
    import numpy as np

    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:  # bf16: compare the raw 16-bit words
            dtype = "<u2"
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return out


def load(path: Path, suffix: str) -> dict[str, Any]:
    """Every tensor in a model file, by dotted name, as a numpy array."""
    import numpy as np

    if suffix == ".npy":
        return {"array": np.load(path, allow_pickle=False)}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suffix == ".safetensors":
        return _safetensors(path)
    import torch

    flat: dict[str, Any] = {}
    _flatten(torch.load(path, map_location="cpu", weights_only=True), "", flat)
    def to_numpy(v: Any) -> Any:
        if not hasattr(v, "detach"):
            return np.asarray(v)
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()

    return {k: to_numpy(v) for k, v in flat.items()}


def compare(a: Path, b: Path, suffix: str = "") -> dict[str, Any]:
    """Per tensor: equal, shape/dtype, elements that differ, max |a-b| and max |a-b|/|b|."""
    import numpy as np

    suffix = (suffix or a.suffix).lower()
    left, right = load(a, suffix), load(b, suffix)
    tensors = []
    for name in sorted(set(left) | set(right)):
        if name not in left or name not in right:
            tensors.append({"name": name, "only_in": "a" if name in left else "b"})
            continue
        x, y = np.asarray(left[name]), np.asarray(right[name])
        entry: dict[str, Any] = {"name": name, "shape": list(x.shape), "dtype": str(x.dtype)}
        if x.shape != y.shape:
            entry |= {"equal": False, "shape_b": list(y.shape)}
        else:
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            diff = np.abs(xf - yf)
            unequal = int(np.count_nonzero(x != y))
            rel = diff / np.maximum(np.abs(yf), np.finfo(np.float64).tiny)
            entry |= {"equal": unequal == 0, "elements": int(x.size), "differ": unequal,
                      "max_abs": float(diff.max()) if diff.size else 0.0,
                      "max_rel": float(rel.max()) if rel.size else 0.0}
        tensors.append(entry)
    return {"format": suffix, "tensors": tensors}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m builder.tensordiff A B [.suffix]", file=sys.stderr)
        return 2
    print(json.dumps(compare(Path(argv[0]), Path(argv[1]), *argv[2:]), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
