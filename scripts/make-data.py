"""Write data/train.csv: three Gaussian classes in four dimensions (the default recipe's input).

Run once; the CSV is committed so the default recipe has a real data input.
"""

import numpy as np

rng = np.random.default_rng(20261127)
centres = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, -1.0, 0.5], [-1.0, 2.0, 1.0, -1.5]])
rows = []
for label, centre in enumerate(centres):
    points = centre + rng.normal(scale=1.1, size=(400, 4))
    rows += [[*p, label] for p in points]
rows = [rows[i] for i in rng.permutation(len(rows))]
with open("data/train.csv", "w") as f:
    f.write("x1,x2,x3,x4,label\n")
    for r in rows:
        f.write(",".join(f"{v:.6f}" for v in r[:4]) + f",{int(r[4])}\n")
