"""What training code learns of its run (the identities experiment trackers tag runs with),
and `-q`, which keeps a run's own output off the terminal unless it fails."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import gen
from tests.func.helpers import committed, repro

RECIPE = """[recipe]
name = "tags"
schema = 1

[environment]
python = "3.11"
dependencies = []

[code]
include = ["train.py"]

[train]
command = ["python", "train.py", "{params.code}"]
params = { code = 0 }
outputs = ["tags.json"]
"""

TRAIN = """import json, sys
from builder.runtime import tracker_tags
print("hello from training")
json.dump(tracker_tags(), open("tags.json", "w"), sort_keys=True)
sys.exit(int(sys.argv[1]))
"""


def test_a_run_gives_trackers_its_identities_and_q_keeps_its_output_quiet(
        tmp_path: Path) -> None:
    project = committed(gen(tmp_path / "p", {"repro.toml": RECIPE, "train.py": TRAIN}))
    assert repro("lock", cwd=project).code == 0
    ran = repro("run", "-q", "--json", cwd=project)
    assert ran.code == 0, ran.err
    assert "hello from training" not in ran.err  # -q: the run's own output is not shown
    tags = json.loads((project / "tags.json").read_text())
    shown = repro("show", ran.json["record"], "--json", cwd=project).json
    assert tags == {"repro.run_key": ran.json["run_key"], "repro.env_id": shown["env"],
                    "repro.recipe_digest": shown["recipe"]["digest"],
                    "repro.code_digest": shown["code"]["digest"]}
    found = repro("lookup", tags["repro.run_key"], "--json", cwd=project)
    assert found.code == 0 and found.json["runs"][0]["record"] == ran.json["record"]
    loud = repro("run", "--no-cache", cwd=project)
    assert "hello from training" in loud.err  # without -q it streams as it comes

    failed = repro("run", "-q", "-p", "code=3", cwd=project)
    assert failed.code != 0
    # quiet until it failed: then the tail is in the error, once
    assert failed.err.count("hello from training") == 1
    assert "the training command exited with status 3" in failed.err
