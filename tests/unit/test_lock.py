"""Locks without a resolver: pylock layout, host paths, env ids and what --check explains."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from builder import lock, pylock
from builder.errors import CheckFailed, InputError
from builder.pylock import Artefact, Package
from builder.recipe import Recipe
from builder.resolve import MachineSources, _publish, _target_tags, source_args
from builder.schema import parse_recipe
from tests.conftest import gen

TEXT = '''[recipe]
name = "demo"
schema = 1
[environment]
python = "3.11"
dependencies = ["numpy>=2", "demo-pkg"]
[[environment.sources]]
url = "https://wheels.example/simple"
packages = ["demo-pkg"]
'''
NUMPY = Package(
    "numpy", "2.4.6",
    Artefact("https://files.example/numpy-2.4.6.tar.gz", "a" * 64, 10,
             dt.datetime(2026, 5, 18, 23, 37, 14, tzinfo=dt.UTC)),
    (Artefact("https://files.example/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl",
              "b" * 64, 20),),
)
DEMO = Package("demo-pkg", "1.0",
               wheels=(Artefact("file:///opt/wheels/demo_pkg-1.0%2Blocal-py3-none-any.whl",
                                "c" * 64),))


def recipe(root: Path, text: str = TEXT) -> Recipe:
    return parse_recipe(text, root / "repro.toml")


def write(r: Recipe, packages: list[Package]) -> None:
    """Lock files as `repro lock` writes them, from packages given here."""
    text = pylock.dumps(packages, r.environment.python, r.environment.platform)
    gen(r.lock_dir, {
        "pylock.toml": text,
        "repro.lock": lock._repro_lock_text(r, lock.env_id(r, packages),
                                            lock.hashing.digest_bytes(text.encode()), "scratch"),
    })


def test_pylock_is_pep751_shaped_sorted_and_reads_back(tmp_path: Path) -> None:
    text = pylock.dumps([NUMPY, _publish(DEMO, recipe(tmp_path), MachineSources())],
                        "3.11", "linux/x86_64")
    data = tomllib.loads(text)
    assert data["lock-version"] == "1.0"
    assert data["requires-python"] == "==3.11.*"
    assert data["environments"] == [
        'python_version == "3.11" and sys_platform == "linux" and platform_machine == "x86_64"'
    ]
    assert [p["name"] for p in data["packages"]] == ["demo-pkg", "numpy"]
    assert data["packages"][1]["sdist"]["hashes"] == {"sha256": "a" * 64}
    back = pylock.loads(text, Path("pylock.toml"))
    assert back[1] == NUMPY
    assert pylock.dumps(list(reversed(back)), "3.11", "linux/x86_64") == text


def test_host_paths_become_the_declared_source(tmp_path: Path) -> None:
    published = _publish(DEMO, recipe(tmp_path), MachineSources(("/opt/wheels",)))
    assert published.wheels[0].url == \
        "https://wheels.example/simple/demo_pkg-1.0%2Blocal-py3-none-any.whl"
    assert published.index == "https://wheels.example/simple"
    assert published.wheels[0].sha256 == "c" * 64


def test_a_host_path_without_a_declared_source_is_refused(tmp_path: Path) -> None:
    bare = recipe(tmp_path, TEXT.split("[[environment", maxsplit=1)[0])
    with pytest.raises(InputError, match=r"demo-pkg 1\.0 was found only in a folder on this "
                                         r"machine(?s:.*)packages = \[\"demo-pkg\"\]"):
        _publish(DEMO, bare, MachineSources(("/opt/wheels",)))


def test_a_pinned_package_that_machine_sources_lack_is_refused(tmp_path: Path) -> None:
    from_pypi = replace(DEMO, wheels=(Artefact("https://pypi.example/demo_pkg-1.0.whl", "d" * 64),))
    with pytest.raises(InputError, match=r"must come from https://wheels\.example/simple"):
        _publish(from_pypi, recipe(tmp_path), MachineSources(("/opt/wheels",)))


def test_machine_sources_replace_the_recipes(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    assert source_args(r, MachineSources()) == ["--extra-index-url", "https://wheels.example/simple"]
    assert source_args(r, MachineSources(("/w",))) == ["--find-links", "/w"]


def test_target_tags_accept_manylinux_wheels_of_the_target_only() -> None:
    tags = _target_tags("3.11", "linux/x86_64")
    from packaging.tags import Tag

    assert Tag("cp311", "cp311", "manylinux_2_28_x86_64") in tags
    assert Tag("py3", "none", "any") in tags
    assert Tag("cp312", "cp312", "manylinux_2_28_x86_64") not in tags
    assert Tag("cp311", "cp311", "manylinux_2_28_aarch64") not in tags


def test_env_id_covers_packages_interpreter_platform_not_sources(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    base = lock.env_id(r, [NUMPY])
    moved = replace(NUMPY, sdist=replace(NUMPY.sdist, url="https://mirror.example/n.tar.gz"))  # type: ignore[arg-type]
    assert lock.env_id(r, [moved]) == base
    assert lock.env_id(recipe(tmp_path, TEXT.replace("numpy>=2", "numpy>=2.1")), [NUMPY]) == base
    assert lock.env_id(r, [replace(NUMPY, version="2.4.7")]) != base
    assert lock.env_id(r, [replace(NUMPY, wheels=(replace(NUMPY.wheels[0], sha256="e" * 64),))]) != base
    assert lock.env_id(recipe(tmp_path, TEXT.replace('"3.11"', '"3.12"')), [NUMPY]) != base
    arm = TEXT.replace('python = "3.11"', 'python = "3.11"\nplatform = "linux/aarch64"')
    assert lock.env_id(recipe(tmp_path, arm), [NUMPY]) != base


def test_check_passes_then_names_each_changed_input(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    write(r, [NUMPY])
    assert lock.check(r).env_id == lock.env_id(r, [NUMPY])
    changed = recipe(tmp_path, TEXT.replace('"numpy>=2", ', '"numpy>=2.1", "scipy", ')
                     .replace('"3.11"', '"3.12"'))
    with pytest.raises(CheckFailed, match=r"(?s)out of date.*environment\.python: '3\.11' in the "
                                          r"lock, '3\.12' in the recipe.*environment\.dependencies:"
                                          r" added numpy>=2\.1, scipy; removed numpy>=2.*repro lock"):
        lock.check(changed)


def test_sources_and_training_params_do_not_stale_a_lock(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    write(r, [NUMPY])
    other = recipe(tmp_path, TEXT.replace("wheels.example", "mirror.example")
                   + '[train]\ncommand = ["python", "t.py"]\nparams = { lr = 1 }\n')
    assert lock.inspect(other)[1:] == ([], [])


def test_check_catches_tampering_and_missing_locks(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    with pytest.raises(CheckFailed, match=r"(?s)repro\.lock does not exist.*run `repro lock`"):
        lock.check(r)
    write(r, [NUMPY])
    py = r.lock_dir / "pylock.toml"
    py.write_text(py.read_text().replace("b" * 64, "f" * 64))
    with pytest.raises(CheckFailed, match=r"(?s)does not match its own digests.*pylock\.toml was "
                                          r"changed after locking"):
        lock.check(r)
