"""What a training project's Python says about itself, read with `ast` (never run): imports,
calls by their full dotted name (through import aliases), attribute assignments, argparse
flags, string literals, and entry points. `audit` judges it; `init` writes a recipe from it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNKNOWN = object()  # a default that is no literal (an expression)


@dataclass(frozen=True, order=True)
class Site:
    file: str  # project-relative
    line: int


@dataclass(frozen=True)
class Call:
    name: str  # dotted, aliases resolved: numpy.random.default_rng
    site: Site
    node: ast.Call

    def keyword(self, name: str) -> ast.expr | None:
        return next((k.value for k in self.node.keywords if k.arg == name), None)


@dataclass(frozen=True)
class Flag:
    """One `parser.add_argument(...)`."""

    options: tuple[str, ...]  # "--lr", "-l"
    dest: str
    default: Any  # a literal, None when absent, UNKNOWN when an expression
    type: str | None  # "int", "float", "str", … as written
    action: str | None
    site: Site
    required: bool = False

    @property
    def flag(self) -> str:
        longs = [o for o in self.options if o.startswith("--")]
        return (longs or list(self.options))[0]

    @property
    def literal(self) -> bool:
        return self.default is not UNKNOWN


@dataclass
class Scan:
    files: list[str] = field(default_factory=list)
    imports: dict[str, list[Site]] = field(default_factory=dict)  # top-level module: where
    calls: list[Call] = field(default_factory=list)
    assigns: list[tuple[str, ast.expr, Site]] = field(default_factory=list)  # dotted = value
    numbers: list[tuple[str, float, Site]] = field(default_factory=list)  # name = number
    names: dict[tuple[str, str], ast.expr] = field(default_factory=dict)  # (file, name): last value
    strings: list[tuple[str, Site]] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    mains: list[str] = field(default_factory=list)  # files with `if __name__ == "__main__"`
    errors: list[tuple[str, str, int]] = field(default_factory=list)  # file, why, line

    def called(self, *names: str) -> list[Call]:
        """Calls of any of `names` (a name ending in `.` matches everything below it)."""
        return [c for c in self.calls
                if any(c.name == n or (n.endswith(".") and c.name.startswith(n))
                       for n in names)]

    def flag_for(self, expr: ast.expr) -> Flag | None:
        """The flag `args.NAME` reads (any object's `.NAME` that is some flag's dest)."""
        if isinstance(expr, ast.Attribute):
            return next((f for f in self.flags if f.dest == expr.attr), None)
        return None


def scan(root: Path, files: Iterable[str]) -> Scan:
    """Parse each project-relative .py file under root (one that does not parse is noted)."""
    out = Scan()
    for rel in sorted(files):
        try:
            tree = ast.parse((root / rel).read_bytes(), filename=rel)
        except (SyntaxError, ValueError, OSError) as exc:
            out.errors.append((rel, str(exc), getattr(exc, "lineno", None) or 0))
            continue
        out.files.append(rel)
        _Visitor(rel, out).visit(tree)
    return out


def dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def literal(node: ast.expr | None) -> Any:
    """A literal's value; `Path("data")` and `Path("out") / "m.pt"` as their strings; else
    UNKNOWN."""
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Call) and (dotted(node.func, {}) or "").split(".")[-1] in (
            "Path", "PurePath", "PosixPath") and len(node.args) == 1 and not node.keywords:
        inner = literal(node.args[0])
        return inner if isinstance(inner, str) else UNKNOWN
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = literal(node.left), literal(node.right)
        if isinstance(left, str) and isinstance(right, str):
            return f"{left.rstrip('/')}/{right}"
    return UNKNOWN


class _Visitor(ast.NodeVisitor):
    def __init__(self, rel: str, out: Scan) -> None:
        self.rel, self.out = rel, out
        self.aliases: dict[str, str] = {}
        self.classes = 0  # inside a class body: fields' defaults are no hard-coded values

    def site(self, node: ast.AST) -> Site:
        return Site(self.rel, getattr(node, "lineno", 0))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.out.imports.setdefault(a.name.split(".")[0], []).append(self.site(node))
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                self.aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.out.imports.setdefault(node.module.split(".")[0], []).append(self.site(node))
            for a in node.names:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def visit_Call(self, node: ast.Call) -> None:
        name = dotted(node.func, self.aliases)
        if name is not None:
            self.out.calls.append(Call(name, self.site(node), node))
        if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            self._flag(node)
        self.generic_visit(node)

    def _flag(self, node: ast.Call) -> None:
        options = tuple(a.value for a in node.args
                        if isinstance(a, ast.Constant) and isinstance(a.value, str))
        if not options:
            return
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        dest = literal(kw.get("dest"))
        if not isinstance(dest, str):
            longs = [o for o in options if o.startswith("--")]
            dest = (longs or list(options))[0].lstrip("-").replace("-", "_")
        kind = kw.get("type")
        action = literal(kw.get("action"))
        self.out.flags.append(Flag(
            options, dest, literal(kw.get("default")) if "default" in kw else None,
            kind.id if isinstance(kind, ast.Name) else None,
            action if isinstance(action, str) else None, self.site(node),
            literal(kw.get("required")) is True))

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._assigned(target, node.value, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._assigned(node.target, node.value, node)
        self.generic_visit(node)

    def _assigned(self, target: ast.expr, value: ast.expr, node: ast.AST) -> None:
        if isinstance(target, ast.Attribute):
            name = dotted(target, self.aliases)
            if name:
                self.out.assigns.append((name, value, self.site(node)))
        elif isinstance(target, ast.Name):
            self.out.names[(self.rel, target.id)] = value
            if isinstance(value, ast.Constant) and isinstance(value.value, int | float) \
                    and not isinstance(value.value, bool) and not self.classes:
                self.out.numbers.append((target.id, value.value, self.site(node)))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes += 1
        self.generic_visit(node)
        self.classes -= 1

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and 0 < len(node.value) < 300:
            self.out.strings.append((node.value, self.site(node)))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) \
                and test.left.id == "__name__" and any(
                    isinstance(c, ast.Constant) and c.value == "__main__"
                    for c in test.comparators):
            self.out.mains.append(self.rel)
        self.generic_visit(node)
