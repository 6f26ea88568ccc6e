"""`repro reproduce`: a model's digest turned into a verdict from an empty folder and an empty
store, against the real CNCF registry on loopback; and `[data]` inputs named by URL and
digest, served by a local HTTP server and by moto's S3 server."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib.util
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder import hashing
from tests.conftest import MACHINE_WHEELS, ROOT
from tests.func.bases import Registry, serve
from tests.func.helpers import Result, committed, repro

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None,
                                reason="docker-registry (Debian package) is installed by .ci/run")
TORCH_WHEEL = Path(MACHINE_WHEELS or "/nonexistent") / \
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
DATA_LINE = 'train = { path = "data/train.csv", description = "1,200 labelled points, 4 ' \
            'features, 3 classes" }'


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Registry]:
    with serve(tmp_path / "registry") as served:
        yield served


def home(tmp_path: Path, name: str, **more: str) -> dict[str, str]:
    return {"REPRO_HOME": str(tmp_path / f"store-{name}"), **more}


def pushed(project: Path, env: dict[str, str], cache: Registry, private: Path,
           *flags: str) -> dict[str, Any]:
    """The project trained (or found) and pushed, signed."""
    done = repro("run", "--push", "--remote", cache.remote, "--sign-key", private, "--json",
                 *flags, cwd=project, env=env)
    assert done.code == 0, done.err
    return done.json  # type: ignore[no-any-return]


def reproduce(target: str | Path, where: Path, env: dict[str, str], cache: Registry,
              public: str, *flags: str | Path) -> Result:
    """`repro reproduce` run from an empty folder (no copy of the project), into `where`."""
    empty = where.parent / f"{where.name}-cwd"
    empty.mkdir(parents=True, exist_ok=True)
    return repro("reproduce", target, "--remote", cache.remote, "--trust", public, "-o", where,
                 "--json", *flags, cwd=empty, env=env)


@pytest.mark.skipif(not TORCH_WHEEL.is_file(),
                    reason="the torch 2.13.0 CPU wheel is not in $PIP_FIND_LINKS here")
def test_the_torch_model_is_remade_bit_for_bit_from_its_digest_in_an_empty_store(
        tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    example = committed(shutil.copytree(
        ROOT / "examples" / "torch-mlp", tmp_path / "torch-mlp",
        ignore=shutil.ignore_patterns("model.pt", "metrics.json")))
    a = pushed(example, home(tmp_path, "a", REPRO_FIND_LINKS=MACHINE_WHEELS), cache, private)
    model = a["outputs"][0]
    weights = (example / "model.pt").read_bytes()

    b = home(tmp_path, "b", REPRO_FIND_LINKS=MACHINE_WHEELS)  # empty, and no project here
    first = reproduce(model["digest"], tmp_path / "by-blake3", b, cache, public)
    assert first.code == 0, first.err
    out = first.json
    assert (out["verdict"], out["run_key"], out["recipe"]) == \
        ("reproduced", a["run_key"], "torch-mlp")
    assert out["outputs"] == [{"path": "model.pt", "expected": model["digest"],
                               "size": model["size"], "remade": model["digest"],
                               "identical": True, "detail": "identical"}]
    assert out["verification"]["causes"] == []
    assert sorted(out["timings"]) == ["comparison", "environment", "fetch", "training"]
    remade = Path(out["folder"])
    assert (remade / "model.pt").read_bytes() == weights  # the re-made model, placed
    assert (remade / "train.py").read_bytes() == (example / "train.py").read_bytes()

    sha = "sha256:" + hashlib.sha256(weights).hexdigest()
    for target, where in [(sha, "by-sha256"), (example / "model.pt", "by-file")]:
        again = reproduce(target, tmp_path / where, b, cache, public)
        assert again.code == 0, again.err
        assert again.json["verdict"] == "reproduced"
        assert again.json["run_key"] == a["run_key"]
        assert (tmp_path / where / "model.pt").read_bytes() == weights


def test_a_tampered_snapshot_is_refused_and_each_missing_part_is_named(
        project: Path, tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    committed(project)
    a = pushed(project, home(tmp_path, "a"), cache, private)
    model = a["outputs"][0]["digest"]
    layers = {x["annotations"]["dev.repro.role"]: x
              for x in cache.manifest(f"run-{a['run_key'][7:]}")["layers"]}

    # a flipped byte in the code snapshot on the registry's disk: refused, nothing stored
    blob = cache.blob_file(layers["code"]["digest"])
    good = blob.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 1
    blob.write_bytes(bytes(bad))
    b = home(tmp_path, "b")
    refused = reproduce(model, tmp_path / "tampered", b, cache, public)
    assert refused.code == 3, refused.err
    message = refused.json["error"]["message"]
    assert message.startswith(f"the code snapshot of run {a['run_key']} could not be fetched")
    assert "nothing was stored" in message
    code_blob = layers["code"]["annotations"]["dev.repro.blake3"]
    assert not (tmp_path / "store-b" / "objects" / code_blob[7:9] / code_blob[9:]).exists()
    blob.write_bytes(good)

    # a data blob gone from the registry: named, exit 3
    data_blob = cache.blob_file(layers["data"]["digest"])
    data_bytes = data_blob.read_bytes()
    data_blob.unlink()
    gone = reproduce(model, tmp_path / "no-data-blob", b, cache, public)
    assert gone.code == 3, gone.err
    assert gone.json["error"]["message"].startswith(
        f"data.train (data/train.csv) of run {a['run_key']} could not be fetched")
    data_blob.write_bytes(data_bytes)

    # pushed again without its data: the input and its last path are named; a copy is taken
    # once it has the run's digest
    record = a["record"]
    assert repro("push", record, "--no-data", "--remote", cache.remote, "--sign-key", private,
                 cwd=project, env=home(tmp_path, "a")).code == 0
    missing = reproduce(model, tmp_path / "no-data", home(tmp_path, "c"), cache, public)
    assert missing.code == 3, missing.err
    error = missing.json["error"]
    assert error["message"] == (
        f"data.train is not on {cache.remote} (the run was pushed with --no-data) and the "
        "recipe names no url for it; it was last read at data/train.csv "
        f"({hashing.file_digest(project / 'data/train.csv')})")
    assert error["hint"] == "give a copy of it: --data train=PATH"
    other = tmp_path / "other.csv"
    other.write_text("1,2,3,4,0\n")
    wrong = reproduce(model, tmp_path / "wrong-copy", home(tmp_path, "c"), cache, public,
                      "--data", f"train={other}")
    assert wrong.code == 2, wrong.err
    assert wrong.json["error"]["message"] == (
        f"--data train={other} is {hashing.file_digest(other)}, not the "
        f"{hashing.file_digest(project / 'data/train.csv')} the run read")
    assert not (tmp_path / "wrong-copy").exists()  # what was placed is gone: a retry fits
    given = reproduce(model, tmp_path / "wrong-copy", home(tmp_path, "c"), cache, public,
                      "--data", f"train={project / 'data/train.csv'}")
    assert given.code == 0, given.err
    assert given.json["verdict"] == "reproduced"
    # placed, but the env cannot be built (uv's cache is no folder): no verdict, and the
    # folder is emptied so that the same -o takes the retry
    unbuilt = reproduce(model, tmp_path / "unbuilt", home(
        tmp_path, "d", UV_CACHE_DIR=str(project / "train.py" / "cache")), cache, public,
        "--data", f"train={project / 'data/train.csv'}")
    assert unbuilt.code == 3, unbuilt.err
    assert "was emptied: what was placed there is made again by a retry" in unbuilt.err
    assert not (tmp_path / "unbuilt").exists() or not any((tmp_path / "unbuilt").iterdir())
    retried = reproduce(model, tmp_path / "unbuilt", home(tmp_path, "d"), cache, public,
                        "--data", f"train={project / 'data/train.csv'}")
    assert retried.code == 0, retried.err

    # pushed from a project that changed since the run: no snapshot, said so
    (project / "train.py").write_text((project / "train.py").read_text() + "# changed\n")
    assert repro("push", record, "--remote", cache.remote, "--sign-key", private,
                 cwd=project, env=home(tmp_path, "a")).code == 0
    no_code = reproduce(model, tmp_path / "no-code", home(tmp_path, "d"), cache, public)
    assert no_code.code == 3, no_code.err
    assert no_code.json["error"]["message"] == (
        f"{cache.remote}: run {a['run_key']} has no code snapshot (pushed without its recipe, "
        "lock, code, data: the project had changed since the run)")

    nothing = reproduce("blake3:" + "0" * 64, tmp_path / "nothing", home(tmp_path, "d"), cache,
                        public)
    assert nothing.code == 1, nothing.err
    assert nothing.json["error"]["message"].startswith("no recorded run made or is blake3:000")


SALTED = """\
import argparse, json, os
p = argparse.ArgumentParser()
for a in ('--data', '--lr', '--epochs', '--seed'):
    p.add_argument(a)
args = p.parse_args()
open('model.npz', 'w').write(f"seed {args.seed}, salt {os.environ.get('SALT', '')}")
json.dump({'accuracy': 1.0}, open('metrics.json', 'w'))
"""


def test_a_reproduction_whose_output_moved_is_drifted_and_names_the_output(
        project: Path, tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    (project / "train.py").write_text(SALTED)
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace('outputs = ["model.npz"]',
                                                 'outputs = ["model.npz"]\npass-env = ["SALT"]'))
    committed(project)
    a = pushed(project, home(tmp_path, "a", SALT="one"), cache, private)
    model = a["outputs"][0]["digest"]

    drifted = reproduce(model, tmp_path / "two", home(tmp_path, "b", SALT="two"), cache, public)
    assert drifted.code == 1, drifted.err
    out = drifted.json
    assert out["verdict"] == "drifted"
    assert out["verification"]["causes"] == []  # no identity moved: pass-env is in none
    [moved] = out["outputs"]
    assert (moved["path"], moved["identical"], moved["expected"]) == ("model.npz", False, model)
    assert moved["detail"].startswith("bytes differ")
    assert (tmp_path / "two" / "model.npz").read_text() == "seed 7, salt two"
    # the drifted re-run is kept as a record, but the run key still answers with the model
    # that was pushed: a reproduction never changes what the cache serves
    served = repro("run", "--json", cwd=tmp_path / "two", env=home(tmp_path, "b", SALT="two"))
    assert served.code == 0, served.err
    assert (served.json["cached"], served.json["outputs"][0]["digest"]) == (True, model)
    # nor what `show` and `push` take by default: the re-run is listed, marked, and a push
    # of it by name is refused (it would re-point the remote's run tag)
    b, two, rerun = home(tmp_path, "b", SALT="two"), tmp_path / "two", \
        out["verification"]["runs"][0]["record"]
    assert repro("show", "--json", cwd=two, env=b).json["record"] == a["record"]
    listed = repro("runs", cwd=two, env=b)
    assert f"not served: a re-run (verify or reproduce); record {a['record'][7:19]}" in listed.out
    refused = repro("push", rerun, "--remote", cache.remote, "--sign-key", private, cwd=two,
                    env=b)
    assert refused.code == 2 and "a verification's re-run" in refused.err, refused.err
    again_pushed = repro("push", "--remote", cache.remote, "--sign-key", private, "--json",
                         cwd=two, env=b)
    assert again_pushed.code == 0, again_pushed.err

    same = reproduce(model, tmp_path / "one", home(tmp_path, "b", SALT="one"), cache, public)
    assert same.code == 0, same.err
    assert same.json["verdict"] == "reproduced"
    # the drifted re-run is recorded under the same run key here, but what a later reproduce
    # compares with is still the run that was pushed, never this machine's own re-run
    again = reproduce(a["run_key"], tmp_path / "three", home(tmp_path, "b", SALT="two"), cache,
                      public)
    assert again.code == 1, again.err
    assert (again.json["record"], again.json["verdict"]) == (a["record"], "drifted")
    # a record digest finds its run on a fresh machine too (pushed as out-<record hex>)
    by_record = reproduce(a["record"], tmp_path / "four", home(tmp_path, "c", SALT="one"),
                          cache, public)
    assert by_record.code == 0, by_record.err
    assert (by_record.json["found"], by_record.json["record"]) == (cache.remote, a["record"])


def test_a_run_made_with_another_seed_and_params_is_remade_with_them(
        project: Path, tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    committed(project)
    a = pushed(project, home(tmp_path, "a"), cache, private, "--seed", "9", "--param",
               "lr=0.25")
    assert (a["seed"], a["params"]["lr"]) == (9, 0.25)
    done = reproduce(a["outputs"][0]["digest"], tmp_path / "out", home(tmp_path, "b"), cache,
                     public)
    assert done.code == 0, done.err
    assert done.json["verdict"] == "reproduced"
    assert done.json["verification"]["runs"][0]["seed"] == 9
    assert done.json["verification"]["runs"][0]["run_key"] == a["run_key"]
    [out] = done.json["outputs"]
    assert out["remade"] == out["expected"] == a["outputs"][0]["digest"]


def test_a_statistical_recipe_is_reproduced_against_its_pushed_baseline(
        project: Path, tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace("seed = 7", "seeds = [7, 8]").replace(
        'standard = "bitwise"', 'standard = "statistical"\n'
                                'tolerance = { accuracy = { abs = 0.05 } }'))
    committed(project)
    a = home(tmp_path, "a")
    assert repro("run", "--seed", "8", cwd=project, env=a).code == 0
    first = pushed(project, a, cache, private)  # seed 7
    assert repro("baseline", "set", cwd=project, env=a).code == 0
    pushed(project, a, cache, private)  # again, now with the baseline beside the lock
    model = first["outputs"][0]["digest"]

    done = reproduce(model, tmp_path / "with-baseline", home(tmp_path, "b"), cache, public)
    assert done.code == 0, done.err
    report = done.json["verification"]
    assert (done.json["verdict"], report["baseline"]) == \
        ("reproduced", "lockfiles/digits-logreg/baseline.json")
    assert [r["seed"] for r in report["runs"]] == [7, 8]
    [check] = report["checks"]
    assert (check["name"], check["n"], check["n_baseline"], check["ok"]) == \
        ("accuracy", 2, 2, True)

    # without a baseline in the snapshot: the record's own metrics, and the report says so
    (project / "lockfiles/digits-logreg/baseline.json").unlink()
    assert repro("push", first["record"], "--remote", cache.remote, "--sign-key", private,
                 cwd=project, env=a).code == 0
    alone = reproduce(model, tmp_path / "no-baseline", home(tmp_path, "c"), cache, public)
    assert alone.code == 0, alone.err
    report = alone.json["verification"]
    assert report["baseline"] == f"run {first['record']}"
    assert report["notes"][0].startswith("the run's snapshot holds no baseline")


@contextlib.contextmanager
def files_served(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback for the files in `folder`: its URL, and the paths asked."""
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def by_url(project: Path, url: str, digest: str, where: Path) -> Path:
    """A copy of the project whose data input is fetched from `url`, no local copy of it."""
    copy = shutil.copytree(project, where)
    shutil.rmtree(copy / "data")
    recipe = copy / "repro.toml"
    text = recipe.read_text()
    assert DATA_LINE in text
    recipe.write_text(text.replace(DATA_LINE, f'train = {{ url = "{url}", digest = "{digest}", '
                                              'path = "data/train.csv" }'))
    return committed(copy)


def test_a_url_input_is_fetched_once_checked_cached_and_keyed_by_its_content(
        project: Path, tmp_path: Path, cache: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    served = tmp_path / "www"
    served.mkdir()
    data = (project / "data/train.csv").read_bytes()
    (served / "train.csv").write_bytes(data)
    sha, b3 = "sha256:" + hashlib.sha256(data).hexdigest(), hashing.digest_bytes(data)
    local = repro("run", "--json", cwd=committed(project), env=home(tmp_path, "s"))
    assert local.code == 0, local.err
    with files_served(served) as (url, asked):
        remote_copy = by_url(project, f"{url}/train.csv", sha, tmp_path / "by-sha256")
        hit = repro("run", "--json", cwd=remote_copy, env=home(tmp_path, "s"))
        assert hit.code == 0, hit.err
        # the same bytes by URL are the same input: the local run answers; fetched once, to
        # learn the BLAKE3 of what the sha256 names
        assert (hit.json["run_key"], hit.json["cached"]) == (local.json["run_key"], True)
        assert asked == ["/train.csv"]
        trained = repro("run", "--no-cache", "--json", cwd=remote_copy, env=home(tmp_path, "s"))
        assert trained.code == 0, trained.err
        assert [o["digest"] for o in trained.json["outputs"]] == \
            [o["digest"] for o in local.json["outputs"]]
        assert asked == ["/train.csv"]  # reused from the store
        shown = repro("show", trained.json["record"], "--json", cwd=remote_copy,
                      env=home(tmp_path, "s")).json
        assert shown["data"]["train"] == {"path": "data/train.csv", "digest": b3,
                                          "url": f"{url}/train.csv"}

        # by BLAKE3: the key needs no fetch; a cache hit fetches nothing at all
        blake = by_url(project, f"{url}/train.csv", b3, tmp_path / "by-blake3")
        answered = repro("run", "--json", cwd=blake, env=home(tmp_path, "s"))
        assert (answered.json["cached"], asked) == (True, ["/train.csv"])

        # pushed without data: reproduce fetches the input from its URL itself
        pushed(remote_copy, home(tmp_path, "s"), cache, private, "--no-data")
        again = reproduce(local.json["outputs"][0]["digest"], tmp_path / "remade",
                          home(tmp_path, "r"), cache, public)
        assert again.code == 0, again.err
        assert again.json["verdict"] == "reproduced"
        assert asked == ["/train.csv", "/train.csv"]

        # the server now serves other bytes: refused, with both digests, nothing stored
        (served / "train.csv").write_bytes(data + b"1,2,3,4,0\n")
        refused = repro("run", "--json", cwd=remote_copy, env=home(tmp_path, "t"))
        assert refused.code == 3, refused.err
        message = refused.json["error"]["message"]
        other = data + b"1,2,3,4,0\n"
        assert f"not the declared {sha}" in message
        assert hashing.digest_bytes(other) in message
        assert "sha256:" + hashlib.sha256(other).hexdigest() in message
        assert not (tmp_path / "store-t" / "runs").exists()

        # a copy given with --data stands in for the URL (which now serves other bytes)
        asked.clear()
        given = tmp_path / "copy.csv"
        given.write_bytes(data)
        supplied = reproduce(local.json["outputs"][0]["digest"], tmp_path / "given",
                             home(tmp_path, "u"), cache, public, "--data", f"train={given}")
        assert supplied.code == 0, supplied.err
        assert (supplied.json["verdict"], asked) == ("reproduced", [])
        unknown = reproduce(local.json["outputs"][0]["digest"], tmp_path / "unknown",
                            home(tmp_path, "u"), cache, public, "--data", f"tran={given}")
        assert unknown.code == 2
        assert "--data tran: run" in unknown.json["error"]["message"]
        assert "its data inputs: train" in unknown.json["error"]["hint"]


def test_a_fetch_that_would_fill_the_disk_is_given_up_and_stores_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builder import download
    from builder.errors import FetchError
    from builder.schema import parse_recipe
    from builder.store import Store

    served = tmp_path / "www"
    served.mkdir()
    (served / "big.bin").write_bytes(b"z" * (3 << 20))
    store = Store.open(tmp_path / "store")
    monkeypatch.setattr(download, "ROOM_CHECK", 1 << 20)  # look every MiB
    monkeypatch.setattr(download, "KEEP_FREE", 1 << 62)  # and no disk has that much left
    with files_served(served) as (url, _):
        recipe = parse_recipe('[recipe]\nname = "d"\nschema = 1\n[environment]\n'
                              f'python = "3.11"\n[data]\nbig = {{ url = "{url}/big.bin", '
                              f'digest = "{"sha256:" + "0" * 64}" }}\n', tmp_path / "r.toml")
        with pytest.raises(FetchError, match=r"data\.big: .*/big\.bin: 1 MiB arrived and the "
                                             r"store's disk has \d+ MiB left; given up"):
            download.fetch(store, recipe, recipe.data[0])
    assert not [p for p in (store.root / "objects").rglob("*") if p.is_file()]


@pytest.mark.skipif(importlib.util.find_spec("moto") is None
                    or importlib.util.find_spec("s3fs") is None,
                    reason="moto and s3fs come with the dev extras (pip install -e '.[dev]')")
def test_an_s3_input_is_fetched_through_fsspec_from_moto(project: Path, tmp_path: Path) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    data = (project / "data/train.csv").read_bytes()
    local = repro("run", "--json", cwd=committed(project), env=home(tmp_path, "local"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # noqa: S106  (moto's own)
        s3.create_bucket(Bucket="team-data")
        s3.put_object(Bucket="team-data", Key="digits/train.csv", Body=data)
        copy = by_url(project, "s3://team-data/digits/train.csv", hashing.digest_bytes(data),
                      tmp_path / "by-s3")
        fetched = repro("run", "--json", cwd=copy, env=home(tmp_path, "s3", **aws))
        assert fetched.code == 0, fetched.err
        assert fetched.json["run_key"] == local.json["run_key"]
        assert fetched.json["cached"] is False
        assert [o["digest"] for o in fetched.json["outputs"]] == \
            [o["digest"] for o in local.json["outputs"]]

        s3.put_object(Bucket="team-data", Key="digits/train.csv", Body=data[:-10])
        refused = repro("run", "--json", cwd=copy, env=home(tmp_path, "other", **aws))
        assert refused.code == 3, refused.err
        assert hashing.digest_bytes(data[:-10]) in refused.json["error"]["message"]
        assert f"not the declared {hashing.digest_bytes(data)}" in \
            refused.json["error"]["message"]
    finally:
        server.stop()
