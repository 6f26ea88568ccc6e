"""The recipes shown in the README and docs/recipe.md are valid recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from builder.schema import parse_recipe
from tests.conftest import ROOT

HEAD = '[recipe]\nname = "doc"\nschema = 1\n[environment]\npython = "3.11"\n'


def toml_blocks(path: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", path.read_text(), re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/recipe.md"])
def test_every_toml_example_parses(doc: str) -> None:
    blocks = toml_blocks(ROOT / doc)
    assert blocks, f"{doc} shows no recipe"
    for block in blocks:
        text = block if "[recipe]" in block else HEAD + block
        parse_recipe(text, ROOT / doc)


def test_every_recipe_key_is_documented() -> None:
    from builder import schema

    source = Path(schema.__file__).read_text()
    doc = (ROOT / "docs" / "recipe.md").read_text()
    keys = set()
    for allowed in re.findall(r"self\.table\([^)]*?\(([^()]*)\)\)", source, re.DOTALL):
        keys.update(re.findall(r'"([a-z-]+)"', allowed))
    assert keys, "found no keys in the schema"
    missing = sorted(k for k in keys if f"`{k}`" not in doc and f"[{k}]" not in doc)
    assert missing == []
