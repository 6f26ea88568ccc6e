"""Data named by URL and digest (recipe, identity, record), and the pure parts of
`repro reproduce`: what a target may be, and an archive that would leave its folder."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from builder import hashing
from builder.errors import InputError, MissingPart, NothingMatches, RecipeError
from builder.records import DataFacts, RunRecord
from builder.reproduce import _unpack, find
from builder.schema import parse_recipe
from builder.store import Store
from tests.unit.test_cli import run

P = Path("/proj/repro.toml")
HEAD = '[recipe]\nname = "demo"\nschema = 1\n\n[environment]\npython = "3.11"\n\n[data]\n'
SHA = "sha256:" + "ab" * 32
B3 = "blake3:" + "cd" * 32
FIXTURE = Path(__file__).parents[1] / "fixtures" / "v1" / "run-seed7.json"


def test_a_url_input_is_placed_at_a_default_path_and_its_digest_is_its_identity() -> None:
    r = parse_recipe(HEAD + f'test = {{ url = "https://example.org/d/test.csv?v=2", '
                            f'digest = "{SHA}" }}\n', P)
    [entry] = r.data
    assert (entry.name, entry.path, entry.url, entry.digest) == \
        ("test", "data/test/test.csv", "https://example.org/d/test.csv?v=2", SHA)
    moved = parse_recipe(HEAD + f'test = {{ url = "s3://mirror/test.csv", digest = "{SHA}", '
                                'path = "data/test/test.csv" }\n', P)
    assert moved.digest() == r.digest()  # where it comes from is never identity
    other = parse_recipe(HEAD + f'test = {{ url = "s3://mirror/test.csv", digest = "{B3}", '
                                'path = "data/test/test.csv" }\n', P)
    assert other.digest() != r.digest()  # what it is, is


def test_a_local_input_keeps_the_recipe_digest_it_had() -> None:
    # schema 1 recipes digested before URL inputs: {"path": …} only, so old locks stay fresh
    r = parse_recipe(HEAD + 'train = { path = "data/train.csv" }\n', P)
    assert r.to_identity()["data"] == {"train": {"path": "data/train.csv"}}


@pytest.mark.parametrize(("line", "match"), [
    ('x = { url = "ftp://h/x.csv", digest = "SHA" }', r"data\.x\.url.*not an http\(s\)://"),
    ('x = { url = "https://h", digest = "SHA" }', r"not an http\(s\)://, s3:// or gs:// URL of a file"),
    ('x = { url = "https://me:pw@h/x.csv", digest = "SHA" }', r"holds credentials"),
    ('x = { url = "https://h/x.csv" }', r"names a url but no `digest`.*\n.*\nhint: add digest"),
    ('x = { url = "https://h/x.csv", digest = "md5:00" }', r"is not blake3:<64 hex> or sha256"),
    ('x = { url = "https://h/x.csv", digest = "SHA", path = "../x.csv" }', r"a file path inside the project"),
    ('x = { url = "https://h/x.csv", digest = "SHA", path = "/abs/x.csv" }', r"a file path inside the project"),
    ('x = { path = "x.csv", digest = "SHA" }', r"`data\.x\.digest` is for inputs fetched from a `url`"),
    ('x = { url = "https://h/x.csv", digest = "SHA", sha = 1 }', r"unknown key `data\.x\.sha`"),
])
def test_a_bad_url_input_is_named_with_its_key_and_fix(line: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse_recipe(HEAD + line.replace("SHA", SHA) + "\n", P)


def test_a_record_names_a_fetched_inputs_url_and_a_local_one_as_before() -> None:
    record = RunRecord.decode(FIXTURE.read_bytes())
    assert "url" not in record.to_json()["data"]["train"]  # local inputs: the same record
    fetched = RunRecord(**{**record.__dict__, "data": {
        "train": DataFacts("data/train.csv", B3, "https://example.org/train.csv")}})
    again = RunRecord.decode(fetched.encode())
    assert again.data["train"].url == "https://example.org/train.csv"
    assert again.encode() == fetched.encode()


def _tar(*members: tuple[str, bytes | str]) -> bytes:
    """A gzipped tar: (name, bytes) for a file, (name, "-> target") for a symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body.removeprefix("-> ")
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.mark.parametrize("members", [
    [("../escape.py", b"x")],
    [("/etc/evil.py", b"x")],
    [("link", "-> /etc"), ("link/evil.py", b"x")],
    [("up", "-> ../.."), ("up/evil.py", b"x")],
])
def test_an_archive_that_would_leave_its_folder_is_refused(tmp_path: Path,
                                                           members: list) -> None:  # type: ignore[type-arg]
    store = Store.open(tmp_path / "store")
    blob = store.blobs.put(_tar(*members))
    dest = tmp_path / "project"
    with pytest.raises(MissingPart, match="cannot be unpacked safely"):
        _unpack(store, blob, dest, "the code snapshot")
    assert not (tmp_path / "escape.py").exists()
    assert not (tmp_path / "evil.py").exists()


def test_an_archive_lists_its_files_and_links(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    blob = store.blobs.put(_tar(("train.py", b"print(1)\n"), ("src/m.py", b""),
                                ("lib", "-> src")))
    assert _unpack(store, blob, tmp_path / "p", "it") == ["lib", "src/m.py", "train.py"]
    assert (tmp_path / "p" / "train.py").read_bytes() == b"print(1)\n"


def test_a_target_is_a_file_a_digest_or_a_key_and_nothing_else(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with pytest.raises(InputError, match=r"not a file, an output digest \(blake3:… or "
                                         r"sha256:…\), a run key or a record digest"):
        find("model-v2", store, None)
    with pytest.raises(InputError, match="is a folder"):
        find(str(tmp_path), store, None)
    model = tmp_path / "model.npz"
    model.write_bytes(b"weights")
    with pytest.raises(NothingMatches, match=f"no recorded run made or is the file {model}: "
                                             f"not in {store.root}\nhint: give the remote"):
        find(str(model), store, None)
    with pytest.raises(NothingMatches, match="no recorded run made or is output sha256:ab"):
        find(SHA, store, None)
    assert hashing.is_digest(B3)


def test_reproduce_refuses_a_folder_that_is_not_empty_before_looking(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "reproduce", B3, "-o", str(full))
    assert code == 2, err
    assert err == f"error: -o {full}: not an empty folder; reproduce writes a whole project " \
                  "and never over anything\nhint: give a new or empty folder\n"
    assert (full / "keep.txt").read_text() == "mine"
    code, _, err = run(capsys, "reproduce", B3)
    assert code == 1
    assert err.startswith(f"error: no recorded run made or is {B3}")


def test_reproduce_refuses_a_folder_in_the_store_a_dangling_link_and_an_unmakeable_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    home = Path(os.environ["REPRO_HOME"])
    Store.open(home)
    code, _, err = run(capsys, "reproduce", B3, "-o", str(home / "objects" / "x"))
    assert code == 2, err
    assert f"inside the store {home.resolve()}" in err
    assert "hint: give a folder outside REPRO_HOME" in err
    assert not (home / "objects" / "x").exists()
    code, _, err = run(capsys, "reproduce", B3, "-o", str(home.parent))  # holds the store
    assert code == 2, err
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, err = run(capsys, "reproduce", B3, "-o", str(dangling))
    assert code == 2, err
    assert f"a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in err
    code, _, err = run(capsys, "reproduce", B3, "-o", "")
    assert code == 2 and "is empty; leave -o out" in err


def test_a_target_may_be_a_remote_tag_or_a_prefix_and_a_device_is_not_a_folder(
        tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with pytest.raises(NothingMatches, match=f"no recorded run made or is {B3} "):
        find("run-" + B3.removeprefix("blake3:"), store, None)
    with pytest.raises(NothingMatches, match=f"no recorded run made or is output {SHA}"):
        find("out-sha256-" + SHA.removeprefix("sha256:"), store, None)
    with pytest.raises(NothingMatches, match=r"no run or record in .* starts with 97d6293d064e"
                                             r"(?s:.*)give the whole digest"):
        find("97d6293d064e", store, None)
    with pytest.raises(InputError, match="/dev/null is not a regular file; reproduce takes a "
                                         "model file"):
        find("/dev/null", store, None)


def test_a_run_key_prefix_finds_the_first_run_of_the_key_not_a_later_re_run(
        tmp_path: Path) -> None:
    from dataclasses import replace

    store = Store.open(tmp_path / "store")
    first = RunRecord.decode(FIXTURE.read_bytes())
    again = replace(first, started="2099-01-01T00:00:00Z")  # a re-run: the key points at it
    digests = [store.records.add(first), store.records.add(again)]
    assert store.records.for_key(first.run_key) == digests[1]
    prefix = first.run_key.removeprefix("blake3:")[:12]
    for target in (prefix, first.run_key, "run-" + first.run_key.removeprefix("blake3:")):
        found = find(target, store, None)
        assert (found.record_digest, found.where) == (digests[0], "local")
    assert find(digests[1][:19], store, None).record_digest == digests[1]  # a record's own
