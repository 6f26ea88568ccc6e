"""Recipe parsing: typed objects from the default recipe, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.errors import RecipeError, RecipeNotFoundError
from builder.recipe import find_recipe
from builder.schema import load_recipe, normalise_simple_requirement, parse_recipe
from tests.conftest import ROOT, gen

P = Path("/proj/repro.toml")
HEAD = '[recipe]\nname = "demo"\nschema = 1\n\n[environment]\npython = "3.11"\n'


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_recipe(text, P)


def test_default_recipe_parses_into_typed_frozen_objects() -> None:
    r = load_recipe(ROOT / "repro.toml")
    assert r.name == "digits-logreg"
    assert r.environment.python == "3.11"
    assert r.environment.dependencies == ("numpy<3,>=2",)
    assert r.environment.exclude_newer == "2026-11-01"
    assert r.train is not None
    assert r.train.seeds == (7,)
    assert r.train.params == {"lr": 0.5, "epochs": 200}
    assert [d.name for d in r.data] == ["train"]
    assert r.reproducibility.standard == "bitwise"
    assert r.lock_dir == ROOT / "lockfiles" / "digits-logreg"
    with pytest.raises(AttributeError):
        r.name = "other"  # type: ignore[misc]


def test_every_section_parses() -> None:
    r = parse(HEAD + '''platform = "linux/aarch64"
accelerator = "cuda-12.4"
system-packages = ["libgomp1=12.2.0-14"]
exclude-newer = 2026-11-01
[[environment.sources]]
url = "https://download.pytorch.org/whl/cpu/"
packages = ["Torch"]
[image]
base = "registry.local/python@sha256:''' + "a" * 64 + '''"
entrypoint = ["python"]
labels = { team = "ml" }
mtime = 1700000000
[code]
include = ["src/**"]
exclude = ["src/scratch/**"]
[train]
command = ["python", "-m", "src.train", "{params.lr}"]
seeds = [1, 2, 3]
params = { lr = 0.1 }
threads = 1
env = { OMP_NUM_THREADS = "1" }
[reproducibility]
standard = "statistical"
tolerance = { accuracy = { abs = 0.01 }, loss = { rel = 0.05, abs = 0.1 } }
[[reproducibility.nondeterminism]]
source = "cuda atomics"
reason = "scatter_add on GPU"
metric = "loss"
abs = 0.001
''')
    assert r.environment.platform == "linux/aarch64"
    assert r.environment.uv_platform == "aarch64-manylinux_2_28"
    assert r.environment.exclude_newer == "2026-11-01"
    assert r.environment.sources[0].url == "https://download.pytorch.org/whl/cpu"
    assert r.environment.sources[0].packages == ("torch",)
    assert r.image.pinned
    assert r.train is not None
    assert r.train.seeds == (1, 2, 3)
    assert r.reproducibility.tolerance["loss"].rel == 0.05
    assert r.reproducibility.nondeterminism[0].tolerance.abs == 0.001


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # malformed TOML: file, line, the line itself, how to fix
        (HEAD + "[train\n", r"repro\.toml:7: not valid TOML(?s:.*)7 \| \[train(?s:.*)hint: fix the TOML"),
        # unknown keys with did-you-mean, at the right line
        (HEAD + 'pyton = "3.11"\n', r"repro\.toml:7: unknown key `environment\.pyton` \(did you mean 'python'\?\)"),
        (HEAD + '[trian]\ncommand = ["x"]\n', r"repro\.toml:7: unknown key `trian` \(did you mean 'train'\?\)"),
        (HEAD + '[train]\ncommand = ["x"]\nparms = {}\n', r":9: unknown key `train\.parms` \(did you mean 'params'\?\)"),
        # wrong types
        (HEAD.replace('"3.11"', "3.11"), r":6: `environment\.python` must be a string, not a number(?s:.*)quote it"),
        (HEAD + 'dependencies = "numpy"\n', r":7: `environment\.dependencies` must be an array of strings"),
        (HEAD + "[train]\ncommand = []\n", r"`train\.command` is empty"),
        (HEAD + '[train]\ncommand = ["x"]\nseed = "7"\n', r"`train\.seed` must be a non-negative integer"),
        (HEAD + '[train]\ncommand = ["x"]\nparams = { lr = [1] }\n', r"`train\.params\.lr` must be a string, number or boolean"),
        # invalid values
        (HEAD + 'dependencies = ["numpy>>2"]\n', r":7: `environment\.dependencies\[0\]` 'numpy>>2' is not a valid requirement"),
        (HEAD + 'dependencies = ["x @ file:///home/me/x.whl"]\n', r"points at a local file(?s:.*)host path"),
        (HEAD.replace('"3.11"', '"three"'), r"`environment\.python` 'three' is not a version"),
        (HEAD + 'platform = "linux/x86"\n', r"`environment\.platform` is 'linux/x86' \(did you mean 'linux/x86_64'\?\)"),
        (HEAD + 'exclude-newer = "yesterday"\n', r"`environment\.exclude-newer` 'yesterday' is not a date"),
        (HEAD + '[[environment.sources]]\nurl = "/opt/wheels"\n', r"not an http\(s\) URL(?s:.*)--find-links"),
        (HEAD + 'system-packages = ["Bad Name"]\n', r"is not a Debian package"),
        (HEAD + '[image]\nbase = "python@sha256:abc"\n', r"`image\.base` 'python@sha256:abc' is not an image reference"),
        (HEAD + '[train]\ncommand = ["x", "{params.lrr}"]\nparams = { lr = 1 }\n', r"uses \{params\.lrr\}, which is not defined \(did you mean 'params\.lr'\?\)"),
        (HEAD + '[train]\ncommand = ["x"]\noutputs = ["../model.pt"]\n', r"`train\.outputs\[0\]` '\.\./model\.pt' must be a relative path"),
        (HEAD + '[train]\ncommand = ["x"]\nseed = 1\nseeds = [1]\n', r"not both"),
        (HEAD + '[reproducibility]\nstandard = "bitwize"\n', r"is 'bitwize' \(did you mean 'bitwise'\?\)"),
        (HEAD + '[reproducibility]\nstandard = "statistical"\n', r"needs at least one metric tolerance"),
        (HEAD + '[reproducibility]\nstandard = "functional"\ntolerance = { a = { abs = 1 } }\n', r"needs `reproducibility\.evaluate`"),
        (HEAD + '[reproducibility]\ntolerance = { acc = { abs = -1 } }\n', r"must be a number >= 0"),
        (HEAD + '[reproducibility]\ntime-to-reproduce = "30 min"\n', r"is '30 min', not a duration(?s:.*)\"1h30m\""),
        (HEAD + '[reproducibility]\ntime-to-reproduce = 30\n', r"must be a string(?s:.*)\"30\""),
        (HEAD + '[reproducibility]\ntime-to-reproduce = "0m"\n', r"must be longer than 0s"),
        (HEAD + '[data]\ntrain = "data.csv"\n', r"`data\.train` must be a table(?s:.*)train = \{ path"),
        # what identities and environments cannot hold
        (HEAD + '[train]\ncommand = ["x"]\nparams = { lr = nan }\n', r"`train\.params\.lr` is nan; identities hold finite numbers only"),
        (HEAD + '[train]\ncommand = ["x"]\nparams = { n = 9007199254740993 }\n', r"beyond ±2\^53(?s:.*)n = \"9007199254740993\""),
        (HEAD + '[train]\ncommand = ["x"]\nseed = 9007199254740993\n', r"`train\.seed` must be a non-negative integer \(below 2\^53\)"),
        (HEAD + '[reproducibility]\ntolerance = { acc = { abs = inf } }\n', r"must be a number >= 0 \(and finite\), not inf"),
        (HEAD + '[train]\ncommand = ["x"]\nenv = { HF_TOKEN = "hf_1" }\n', r"`train\.env\.HF_TOKEN` looks like a credential(?s:.*)pass-env = \[\"HF_TOKEN\"\]"),
        (HEAD + '[train]\ncommand = ["x"]\nenv = { AWS_SECRET_ACCESS_KEY = "x" }\n', r"looks like a credential"),
        (HEAD + '[train]\ncommand = ["x"]\npass-env = ["A=B"]\n', r"`train\.pass-env\[0\]`: 'A=B' cannot name an environment variable"),
        (HEAD + '[train]\ncommand = ["x"]\nsandbox = "no"\n', r"`train\.sandbox` must be true or false"),
        (HEAD + '[train]\ncommand = ["x"]\nnetwork = 1\n', r"`train\.network` must be true or false"),
        (HEAD + '[image]\nenv = { "A=B" = "1" }\n', r"`image\.env\.A=B`: 'A=B' cannot name an environment variable"),
        (HEAD + '[image]\nlabels = { a = "x\\u0000" }\n', r"`image\.labels\.a` holds a NUL character"),
        (HEAD + '[image]\nworkdir = "/work/../etc"\n', r"`image\.workdir` '/work/\.\./etc' must be an absolute, normal path"),
        (HEAD + '[image]\nmtime = 99999999999999\n', r"`image\.mtime` must be less than 253402300800"),
        ("\ufeff" + HEAD, r":1: the file starts with a byte-order mark"),
        # missing required parts
        ('[environment]\npython = "3.11"\n', r"missing the \[recipe\] section"),
        ('[recipe]\nname = "x"\n[environment]\npython = "3.11"\n', r"missing required key `recipe\.schema`"),
        ('[recipe]\nname = "x"\nschema = 2\n[environment]\npython = "3.11"\n', r"schema 1"),
        ('[recipe]\nname = "Bad Name"\nschema = 1\n', r"is not a valid name"),
        ('[recipe]\nname = "x"\nschema = 1\n', r"missing the \[environment\] section"),
        (HEAD.replace('python = "3.11"\n', ""), r"missing required key `environment\.python`"),
    ],
)
def test_bad_recipes_name_file_line_key_and_fix(text: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match) as info:
        parse(text)
    assert str(info.value).startswith("/proj/repro.toml")
    assert info.value.exit_code == 2


def test_not_secret_lets_a_name_that_only_looks_like_a_credential_through() -> None:
    r = parse(HEAD + '[train]\ncommand = ["x"]\nenv = { SORT_KEY = "name" }\n'
                     'not-secret = ["SORT_KEY"]\npass-env = ["WANDB_API_KEY"]\n')
    assert r.train is not None
    assert dict(r.train.env) == {"SORT_KEY": "name"}
    assert r.train.pass_env == ("WANDB_API_KEY",)
    assert (r.train.sandbox, r.train.network) == (True, False)
    # what a run may read or reach is identity; which credentials it gets is not
    other = parse(HEAD + '[train]\ncommand = ["x"]\nenv = { SORT_KEY = "name" }\n'
                         'not-secret = ["SORT_KEY"]\npass-env = ["HF_TOKEN"]\n')
    assert other.digest() == r.digest()
    assert parse(HEAD + '[train]\ncommand = ["x"]\nsandbox = false\n').digest() != \
        parse(HEAD + '[train]\ncommand = ["x"]\n').digest()


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "repro.toml"
    path.write_bytes(HEAD.encode() + b'description = "caf\xe9"\n')
    with pytest.raises(RecipeError, match=r"repro\.toml:7: not UTF-8: byte 0xe9"):
        load_recipe(path)


def test_digest_ignores_comments_order_sources_and_descriptions() -> None:
    base = parse(HEAD + 'dependencies = ["numpy>=2"]\n[train]\ncommand = ["python", "t.py"]\n'
                 'params = { lr = 0.1, epochs = 3 }\n')
    reordered = parse(
        '# a comment\n[train]\nparams = { epochs = 3, lr = 0.1 }\ncommand = ["python", "t.py"]\n'
        '[environment]\ndependencies = ["numpy >= 2"]  # spaces are not identity\npython = "3.11"\n'
        '[[environment.sources]]\nurl = "https://mirror.example/simple"\n'
        '[recipe]\nschema = 1\nname = "demo"\ndescription = "words"\n'
    )
    assert reordered.digest() == base.digest()
    changed = parse(HEAD + 'dependencies = ["numpy>=2"]\n[train]\ncommand = ["python", "t.py"]\n'
                    'params = { lr = 0.2, epochs = 3 }\n')
    assert changed.digest() != base.digest()


def test_env_inputs_cover_only_what_a_lock_is_resolved_from() -> None:
    a = parse(HEAD + 'dependencies = ["b", "a"]\n[train]\ncommand = ["x"]\nseed = 1\n')
    b = parse(HEAD + 'dependencies = ["a", "b"]\n[train]\ncommand = ["x"]\nseed = 2\n')
    assert a.env_inputs() == b.env_inputs()
    assert a.env_inputs()["dependencies"] == ["a", "b"]


def test_find_recipe_walks_up_and_explains_when_there_is_none(tmp_path: Path) -> None:
    gen(tmp_path, {"repro.toml": HEAD, "a": {"b": {}}})
    assert find_recipe(cwd=tmp_path / "a" / "b") == tmp_path / "repro.toml"
    assert find_recipe(tmp_path) == tmp_path / "repro.toml"
    with pytest.raises(RecipeNotFoundError, match=r"no recipe at .*missing\.toml(?s:.*)--recipe"):
        find_recipe(tmp_path / "missing.toml")
    lonely = tmp_path.parent / "lonely"
    lonely.mkdir()
    with pytest.raises(RecipeNotFoundError, match=r"no repro\.toml in .*lonely or any parent"):
        find_recipe(cwd=lonely)


names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}((a|b|rc)[0-9])?(\.post[0-9])?(\.dev[0-9])?",
                         fullmatch=True)
specs = st.tuples(st.sampled_from(["==", "!=", "<=", ">=", "<", ">"]), versions,
                  st.sampled_from(["", " ", "  "]))


@given(names, st.lists(specs, max_size=3), st.sampled_from(["", " "]))
def test_the_fast_requirement_normaliser_agrees_with_packaging(
    name: str, parts: list[tuple[str, str, str]], gap: str,
) -> None:
    from packaging.requirements import Requirement

    text = name + gap + ",".join(f"{ws}{op}{ws}{v}" for op, v, ws in parts)
    fast = normalise_simple_requirement(text)
    if len({op for op, _, _ in parts}) == len(parts):
        assert fast == str(Requirement(text))
    else:  # repeated operators are left to packaging, which merges equal versions
        assert fast is None


def test_anything_else_goes_to_packaging() -> None:
    from packaging.requirements import Requirement

    for text in ("torch==2.13.0+cpu", "numpy~=2.0", "a[x]>=1", "b; python_version<\"3.12\"",
                 "c==1.*", "d @ https://x.example/d.whl"):
        assert normalise_simple_requirement(text) is None
        recipe = parse(HEAD + f"dependencies = ['{text}']\n")
        assert recipe.environment.dependencies == (str(Requirement(text)),)


@pytest.mark.parametrize(("line", "match"), [
    ('env = { REPRO_SEED = "5" }', r"`train\.env\.REPRO_SEED`: repro sets REPRO_SEED itself"),
    ('env = { PATH = "/x" }', r"`train\.env\.PATH`: repro sets PATH itself"),
    ('pass-env = ["PYTHONHASHSEED"]', r"cannot pass PYTHONHASHSEED(?s:.*)repro sets"),
    ('pass-env = ["LD_PRELOAD"]', r"cannot pass LD_PRELOAD(?s:.*)\[train\] env"),
    ('pass-env = ["OMP_NUM_THREADS"]', r"cannot pass OMP_NUM_THREADS"),
    ('env = { GITHUB_PAT = "x" }', r"looks like a credential"),
    ('env = { DATABASE_URL = "x" }', r"looks like a credential"),
    ('outputs = ["."]', r"must be a relative path inside the project, written plainly"),
    ('outputs = ["m.txt/."]', r"written plainly"),
])
def test_what_a_run_key_or_a_record_would_misstate_is_refused(line: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse(HEAD + f'[train]\ncommand = ["x"]\n{line}\n')


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400),
                                               ("1.5h", 5400), ("2h 5s", 7205)])
def test_a_time_to_reproduce_target_reads_as_seconds(text: str, seconds: float) -> None:
    r = parse(HEAD + f'[reproducibility]\ntime-to-reproduce = "{text}"\n')
    assert r.reproducibility.target == seconds
    assert parse(HEAD).reproducibility.target is None
