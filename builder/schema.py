"""Recipe schema 1: checks parsed TOML key by key and builds the frozen Recipe objects.

Every error carries the file, the line, the key path and a fix.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from builder.errors import RecipeError, did_you_mean
from builder.recipe import (
    PLATFORMS,
    SCHEMA,
    SECTIONS,
    SOURCE_KINDS,
    STANDARDS,
    Code,
    DataInput,
    Debian,
    Environment,
    Image,
    Nondeterminism,
    Recipe,
    Reproducibility,
    Source,
    Tolerance,
    Train,
    canonical_name,
    line_text,
)

_EXACT = 2**53  # JSON numbers (and so RFC 8785 identities) are exact below this
_YEAR_10000 = 253402300800  # the first second image timestamps (RFC 3339) cannot write
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PYTHON = re.compile(r"^3\.\d+(\.\d+)?$")
_ACCELERATOR = re.compile(r"^(cpu|cuda(-\d+(\.\d+)?)?|rocm(-\d+(\.\d+)?)?)$")
_DEB = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
_BASE = re.compile(r"^[a-z0-9][\w./:-]*(@sha256:(?P<digest>[0-9a-f]*))?$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
DATA_SCHEMES = ("https", "http", "s3", "gs")  # where a [data] input can be fetched from
# The common requirement `name op version, …` (public versions, no wildcards, no ~=), which
# repro normalises as packaging does, without paying for packaging's parser at every start.
_SPEC = r"\s*(==|!=|<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?" \
        r"(?:\.dev[0-9]+)?)\s*"
_SIMPLE_REQUIREMENT = re.compile(
    rf"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*((?:{_SPEC},)*{_SPEC})?$"
)


def normalise_simple_requirement(text: str) -> str | None:
    """`str(packaging.requirements.Requirement(text))` for simple requirements, else None."""
    m = _SIMPLE_REQUIREMENT.match(text)
    if m is None:
        return None
    specs = re.findall(_SPEC, m.group(2) or "")
    if len({op for op, _ in specs}) < len(specs):
        return None  # packaging merges specifiers equal as versions (==1 and ==1.0): leave it that
    return m.group(1) + ",".join(sorted(op + v for op, v in specs))


class Validator:
    """Reads the parsed TOML section by section; every error carries file, line and key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    # -- errors -------------------------------------------------------------------------
    def error(self, key: str, problem: str, hint: str = "") -> RecipeError:
        line = self._locate(key)
        return RecipeError(
            self.path,
            problem,
            key=key,
            line=line,
            source_line=line_text("\n".join(self.lines), line),
            hint=hint,
        )

    def _locate(self, key: str) -> int | None:
        """The line of a dotted key path: its `key =` under the right [header], or the header."""
        parts = [p for p in re.sub(r"\[\d+\]", "", key).split(".") if p]
        for split in range(len(parts) - 1, -1, -1):
            header, name = ".".join(parts[:split]), parts[split]
            found = self._find(header, name)
            if found:
                return found
        return self._find(parts[0], None) if parts else None

    def _find(self, header: str, name: str | None) -> int | None:
        current = ""
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
            if m:
                current = m.group(1).replace('"', "")
                if name is None and current == header:
                    return number
                continue
            if name is not None and current == header \
                    and re.match(rf'^"?{re.escape(name)}"?\s*=', line):
                return number
        return None

    # -- typed readers ------------------------------------------------------------------
    def table(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"`{key}` must be a table, not {_kind(value)}")
        for name in value:
            if name not in allowed:
                full = f"{key}.{name}" if key else name
                raise self.error(
                    full,
                    f"unknown key `{full}`{did_you_mean(name, allowed)}",
                    hint=f"allowed here: {', '.join(allowed)} (see docs/recipe.md)",
                )
        return value

    def string(self, t: dict[str, Any], key: str, name: str, default: Any = ...) -> Any:
        if name not in t:
            if default is ...:
                raise self.error(f"{key}.{name}", f"missing required key `{key}.{name}`")
            return default
        value = t[name]
        if not isinstance(value, str):
            raise self.error(
                f"{key}.{name}", f"`{key}.{name}` must be a string, not {_kind(value)}",
                hint=(f'quote it: {name} = "{value}"' + (
                    f' (with its unit, as "{value}s")' if name == "time-to-reproduce" else ""))
                if isinstance(value, int | float) else "",
            )
        return value

    def choice(self, t: dict[str, Any], key: str, name: str, choices: tuple[str, ...]) -> str:
        value = self.string(t, key, name, choices[0])
        if value not in choices:
            raise self.error(
                f"{key}.{name}",
                f"`{key}.{name}` is {value!r}{did_you_mean(value, choices)}",
                hint=f"use one of: {', '.join(choices)}",
            )
        return str(value)

    def integer(self, t: dict[str, Any], key: str, name: str, default: Any, low: int = 0,
                high: int = _EXACT) -> Any:
        value = t.get(name, default)
        if value is default:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(
                f"{key}.{name}", f"`{key}.{name}` must be an integer, not {_kind(value)}"
            )
        if value < low:
            raise self.error(f"{key}.{name}", f"`{key}.{name}` must be at least {low}")
        if value >= high:
            raise self.error(f"{key}.{name}", f"`{key}.{name}` must be less than {high}")
        return value

    def number(self, t: dict[str, Any], key: str, name: str) -> float | None:
        value = t.get(name)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 \
                or not math.isfinite(value):
            raise self.error(
                f"{key}.{name}", f"`{key}.{name}` must be a number >= 0 (and finite), not {value!r}"
            )
        return float(value)

    def json_number(self, key: str, value: Any) -> None:
        """A number an identity can hold: finite, and an integer within ±2^53."""
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"`{key}` is {value!r}; identities hold finite numbers only")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _EXACT:
            raise self.error(key, f"`{key}` = {value} is beyond ±2^53, which JSON numbers "
                                  "(and so identities) cannot hold exactly",
                             hint=f'write it as a string: {key.rsplit(".", 1)[-1]} = "{value}"')

    def strings(self, t: dict[str, Any], key: str, name: str, default: Any = ()) -> Any:
        if name not in t:
            if default is ...:
                raise self.error(f"{key}.{name}", f"missing required key `{key}.{name}`")
            return tuple(default)
        value = t[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(
                f"{key}.{name}",
                f"`{key}.{name}` must be an array of strings, not {_kind(value)}",
                hint=f'write it as {name} = ["…", "…"]',
            )
        return tuple(value)

    def string_table(self, t: dict[str, Any], key: str, name: str) -> dict[str, str]:
        value = t.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(
                f"{key}.{name}", f"`{key}.{name}` must be a table of strings, not {_kind(value)}"
            )
        return dict(value)

    # -- sections -----------------------------------------------------------------------
    def recipe(self, data: dict[str, Any]) -> Recipe:
        self.table(data, "", SECTIONS)
        if "recipe" not in data:
            raise self.error("recipe", "missing the [recipe] section", hint=_RECIPE_HINT)
        head = self.table(data["recipe"], "recipe", ("name", "schema", "description"))
        name = self.string(head, "recipe", "name")
        if not _NAME.match(name):
            raise self.error(
                "recipe.name",
                f"`recipe.name` {name!r} is not a valid name",
                hint="use lower-case letters, digits, '.', '_' and '-' "
                     "(it names lockfiles/<name>/)",
            )
        schema = self.integer(head, "recipe", "schema", ..., low=1)
        if schema is ...:
            raise self.error("recipe.schema", "missing required key `recipe.schema`",
                             hint=f"add schema = {SCHEMA} under [recipe]")
        if schema != SCHEMA:
            raise self.error(
                "recipe.schema",
                f"`recipe.schema` is {schema}; this repro reads schema {SCHEMA}",
                hint=f"set schema = {SCHEMA}, or upgrade repro",
            )
        if "environment" not in data:
            raise self.error("environment", "missing the [environment] section",
                             hint='add [environment] with at least python = "3.11"')
        train = self.train(data["train"]) if "train" in data else None
        data_inputs = self.data(data.get("data", {}))
        if train is not None:
            self.placeholders(train, data_inputs)
        return Recipe(
            path=self.path,
            name=name,
            description=self.string(head, "recipe", "description", ""),
            schema=schema,
            environment=self.environment(data["environment"]),
            image=self.image(data.get("image", {})),
            code=self.code(data.get("code", {})),
            data=data_inputs,
            train=train,
            reproducibility=self.reproducibility(data.get("reproducibility", {}), train),
        )

    def environment(self, value: Any) -> Environment:
        key = "environment"
        t = self.table(value, key, ("python", "platform", "dependencies", "accelerator",
                                    "sources", "exclude-newer", "system-packages", "debian"))
        python = self.string(t, key, "python")
        if not _PYTHON.match(python):
            raise self.error(f"{key}.python", f"`{key}.python` {python!r} is not a version",
                             hint='write a CPython version such as "3.11" or "3.11.7"')
        platform = self.choice(t, key, "platform", tuple(PLATFORMS))
        accelerator = self.string(t, key, "accelerator", "cpu")
        if not _ACCELERATOR.match(accelerator):
            raise self.error(f"{key}.accelerator",
                             f"`{key}.accelerator` {accelerator!r} is unknown",
                             hint='use "cpu", "cuda", "cuda-12.4", "rocm" or "rocm-6.2"')
        dependencies = tuple(
            self.requirement(i, s) for i, s in enumerate(self.strings(t, key, "dependencies"))
        )
        names = [canonical_name(re.split(r"[\s\[;@<>=!~(]", d, maxsplit=1)[0])
                 for d in dependencies if ";" not in d]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise self.error(f"{key}.dependencies", f"`{key}.dependencies` names {dupes[0]} twice",
                             hint="merge the specifiers into one requirement")
        system = self.strings(t, key, "system-packages")
        for pkg in system:
            if not _DEB.match(pkg):
                raise self.error(f"{key}.system-packages",
                                 f"`{key}.system-packages` entry {pkg!r} is not a Debian package",
                                 hint='write "name" or "name=version", e.g. '
                                      '"libgomp1=12.2.0-14+deb12u1"')
        return Environment(
            python=python,
            platform=platform,
            dependencies=dependencies,
            accelerator=accelerator,
            sources=self.sources(t.get("sources", [])),
            exclude_newer=self.exclude_newer(t),
            system_packages=system,
            debian=self.debian(t.get("debian", {})),
        )

    def debian(self, value: Any) -> Debian:
        key = "environment.debian"
        t = self.table(value, key, ("suites", "components", "mirror", "security-mirror",
                                    "snapshot"))
        default = Debian()
        suites = self.strings(t, key, "suites", default.suites)
        components = self.strings(t, key, "components", default.components)
        for name, values in (("suites", suites), ("components", components)):
            bad = [v for v in values if not re.fullmatch(r"[a-z0-9][a-z0-9.+/-]*", v)]
            if not values or bad:
                raise self.error(f"{key}.{name}", f"`{key}.{name}` "
                                 + (f"entry {bad[0]!r} is not a Debian {name[:-1]}" if bad
                                    else "is empty"),
                                 hint='e.g. suites = ["bookworm", "bookworm-security"]'
                                 if name == "suites" else 'e.g. components = ["main"]')
        mirror = self.string(t, key, "mirror", default.mirror).rstrip("/")
        security = self.string(t, key, "security-mirror", default.security_mirror).rstrip("/")
        for name, url in (("mirror", mirror), ("security-mirror", security)):
            if not url.startswith(("http://", "https://", "file:/")):
                raise self.error(f"{key}.{name}", f"`{key}.{name}` {url!r} is not a URL",
                                 hint=f'e.g. {name} = "{getattr(default, name.replace("-", "_"))}"')
        snapshot = self.string(t, key, "snapshot", "")
        if snapshot and (not re.fullmatch(r"\d{8}T\d{6}Z", snapshot) or snapshot > _now()):
            raise self.error(f"{key}.snapshot", f"`{key}.snapshot` {snapshot!r} is not a "
                             "snapshot.debian.org instant before now",
                             hint='e.g. "20241201T000000Z"')
        return Debian(tuple(suites), tuple(components), mirror, security, snapshot)

    def requirement(self, index: int, text: str) -> str:
        key = "environment.dependencies"
        simple = normalise_simple_requirement(text)
        if simple is not None:
            return simple
        from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415

        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise self.error(key, f"`{key}[{index}]` {text!r} is not a valid requirement: {exc}",
                             hint='write PEP 508 requirements such as "numpy>=2,<3"') from exc
        if req.url and req.url.startswith("file:"):
            raise self.error(key, f"`{key}[{index}]` {text!r} points at a local file",
                             hint="a host path cannot be locked; publish it to an index or "
                                  "declare a source in [[environment.sources]]")
        return str(req)

    def exclude_newer(self, t: dict[str, Any]) -> str | None:
        key = "environment.exclude-newer"
        value = t.get("exclude-newer")
        if value is None:
            return None
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        if isinstance(value, str):
            try:
                (dt.date if len(value) == 10 else dt.datetime).fromisoformat(value)
            except ValueError:
                pass
            else:
                return value
        raise self.error(key, f"`{key}` {value!r} is not a date",
                         hint='write a date such as "2026-11-01" or "2026-11-01T00:00:00Z"')

    def sources(self, value: Any) -> tuple[Source, ...]:
        key = "environment.sources"
        if not isinstance(value, list):
            raise self.error(key, f"`{key}` must be an array of tables",
                             hint="write each source as [[environment.sources]]")
        out = []
        for i, item in enumerate(value):
            k = f"{key}[{i}]"
            t = self.table(item, k, ("url", "kind", "packages"))
            url = self.string(t, k, "url")
            if not re.match(r"^https?://", url):
                raise self.error(f"{k}.url", f"`{k}.url` {url!r} is not an http(s) URL",
                                 hint="a recipe is shared, so its sources are URLs; give a local "
                                      "folder for this machine with --find-links instead")
            packages = tuple(canonical_name(p) for p in self.strings(t, k, "packages"))
            out.append(Source(url.rstrip("/"), self.choice(t, k, "kind", SOURCE_KINDS), packages))
        return tuple(out)

    def image(self, value: Any) -> Image:
        key = "image"
        t = self.table(value, key, ("base", "workdir", "entrypoint", "env", "labels", "mtime"))
        base = self.string(t, key, "base", "scratch")
        m = _BASE.match(base)
        if base != "scratch" and (not m or (m.group("digest") is not None
                                            and len(m.group("digest")) != 64)):
            raise self.error("image.base", f"`image.base` {base!r} is not an image reference",
                             hint='write "scratch" or "registry/name@sha256:<64 hex digits>"')
        workdir = self.string(t, key, "workdir", "/work")
        if not workdir.startswith("/") or ".." in PurePosixPath(workdir).parts \
                or workdir != posixpath.normpath(workdir) or "\0" in workdir:
            raise self.error("image.workdir", f"`image.workdir` {workdir!r} must be an absolute, "
                                              "normal path (no `..`, no `//`)")
        for i, arg in enumerate(t.get("entrypoint", [])):
            if isinstance(arg, str):
                self.no_nul(f"image.entrypoint[{i}]", arg)
        for table in ("env", "labels"):
            for name, text in self.string_table(t, key, table).items():
                if table == "env":
                    self.variable_name(f"image.env.{name}", name)
                elif not name or "\0" in name:
                    raise self.error(f"image.labels.{name}", "a label name must not be empty "
                                                              "or hold a NUL character")
                self.no_nul(f"image.{table}.{name}", text)
        return Image(
            base=base,
            workdir=workdir,
            entrypoint=self.strings(t, key, "entrypoint"),
            env=self.string_table(t, key, "env"),
            labels=self.string_table(t, key, "labels"),
            mtime=self.integer(t, key, "mtime", 0, high=_YEAR_10000),
        )

    def code(self, value: Any) -> Code:
        t = self.table(value, "code", ("include", "exclude"))
        return Code(self.strings(t, "code", "include", ("**",)), self.strings(t, "code", "exclude"))

    def data(self, value: Any) -> tuple[DataInput, ...]:
        if not isinstance(value, dict):
            raise self.error("data", "`data` must be a table of named inputs")
        out = []
        for name, item in sorted(value.items()):
            k = f"data.{name}"
            self.variable_name(k, name)  # becomes REPRO_DATA_<NAME>
            if not isinstance(item, dict):
                raise self.error(k, f"`{k}` must be a table, not {_kind(item)}",
                                 hint=f'write {name} = {{ path = "…" }}')
            t = self.table(item, k, ("path", "url", "digest", "description"))
            description = self.string(t, k, "description", "")
            if "url" in t:
                out.append(self.fetched(k, name, t, description))
                continue
            if "digest" in t:
                raise self.error(f"{k}.digest", f"`{k}.digest` is for inputs fetched from a "
                                 "`url`; a local input's digest is computed from its bytes",
                                 hint=f"remove it, or give {k}.url too")
            self.no_nul(f"{k}.path", self.string(t, k, "path"))
            out.append(DataInput(name, self.string(t, k, "path"), description))
        return tuple(out)

    def fetched(self, k: str, name: str, t: dict[str, Any], description: str) -> DataInput:
        """A `[data]` input named by URL and digest, placed at `path` (default
        data/<name>/<the URL's file name>) for the run."""
        url = self.string(t, k, "url")
        self.no_nul(f"{k}.url", url)
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0]
        if scheme not in DATA_SCHEMES or not host or not rest.partition("/")[2]:
            raise self.error(f"{k}.url", f"`{k}.url` = {url!r} is not an http(s)://, s3:// or "
                             "gs:// URL of a file", hint='e.g. url = "https://example.org/'
                                                        'train.csv"')
        if "@" in host:
            raise self.error(f"{k}.url", f"`{k}.url` holds credentials (USER:PASSWORD@HOST), "
                             "which a recipe must never carry",
                             hint="public files need none; for s3:// and gs:// the usual "
                                  "AWS or Google credentials of the machine are used")
        digest = self.string(t, k, "digest", None)
        if digest is None:
            raise self.error(k, f"`{k}` names a url but no `digest`: what is fetched must be "
                             "checked against the bytes the recipe means",
                             hint=f'add digest = "blake3:…" (b3sum FILE) or "sha256:…" '
                                  f"(sha256sum FILE) of the file at {url}")
        if not re.fullmatch(r"(blake3|sha256):[0-9a-f]{64}", digest):
            raise self.error(f"{k}.digest", f"`{k}.digest` = {digest!r} is not blake3:<64 hex> "
                             "or sha256:<64 hex>", hint="b3sum FILE or sha256sum FILE gives it")
        leaf = PurePosixPath(rest.split("?", 1)[0].partition("/")[2]).name or name
        path = self.string(t, k, "path", f"data/{name}/{leaf}")
        self.no_nul(f"{k}.path", path)
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or path.endswith("/"):
            raise self.error(f"{k}.path", f"`{k}.path` = {path!r}: a fetched input is placed "
                             "at a file path inside the project", hint='e.g. path = "data/'
                                                                      'train.csv"')
        return DataInput(name, path, description, url, digest)

    def train(self, value: Any) -> Train:
        key = "train"
        t = self.table(value, key, ("command", "seed", "seeds", "params", "outputs", "metrics",
                                    "env", "threads", "sandbox", "network", "pass-env",
                                    "not-secret"))
        command = self.strings(t, key, "command", ...)
        for i, arg in enumerate(command):
            self.no_nul(f"train.command[{i}]", arg)
        if not command:
            raise self.error("train.command", "`train.command` is empty",
                             hint='write the argv, e.g. ["python", "train.py"]')
        if "seed" in t and "seeds" in t:
            raise self.error("train.seeds", "give `train.seed` or `train.seeds`, not both")
        seeds = t.get("seeds", [t.get("seed", 0)])
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < _EXACT
                           for s in seeds)):
            which = "seeds" if "seeds" in t else "seed"
            raise self.error(f"train.{which}", f"`train.{which}` must be a non-negative integer"
                             + (" array" if which == "seeds" else "") + " (below 2^53)")
        params = t.get("params", {})
        if not isinstance(params, dict):
            raise self.error("train.params", "`train.params` must be a table")
        for name, v in params.items():
            self.variable_name(f"train.params.{name}", name)  # becomes REPRO_PARAM_<NAME>
            if isinstance(v, str):
                self.no_nul(f"train.params.{name}", v)
            self.json_number(f"train.params.{name}", v)
            if not isinstance(v, str | int | float | bool):
                raise self.error(f"train.params.{name}",
                                 f"`train.params.{name}` must be a string, number or boolean, "
                                 f"not {_kind(v)}")
        outputs = self.strings(t, key, "outputs")
        metrics = self.string(t, key, "metrics", None)
        pass_env = self.variable_names(t, key, "pass-env")
        not_secret = self.variable_names(t, key, "not-secret")
        for i, out in enumerate([*outputs, *([metrics] if metrics else [])]):
            p = PurePosixPath(out)
            if p.is_absolute() or ".." in p.parts or not out or posixpath.normpath(out) != out \
                    or out in (".", "") or out.endswith("/"):
                which = f"outputs[{i}]" if i < len(outputs) else "metrics"
                raise self.error(f"train.{which}", f"`train.{which}` {out!r} must be a relative "
                                 "path inside the project, written plainly (no `.`, `..`, "
                                 "`//` or trailing `/`)")
        return Train(
            command=command,
            seeds=tuple(seeds),
            params=params,
            outputs=outputs,
            metrics=metrics,
            env=self.environment_variables(t, key, not_secret),
            threads=self.integer(t, key, "threads", None, low=1),
            sandbox=self.boolean(t, key, "sandbox", True),
            network=self.boolean(t, key, "network", False),
            pass_env=pass_env,
            not_secret=not_secret,
        )

    def boolean(self, t: dict[str, Any], key: str, name: str, default: bool) -> bool:
        value = t.get(name, default)
        if not isinstance(value, bool):
            raise self.error(f"{key}.{name}", f"`{key}.{name}` must be true or false, not "
                                              f"{_kind(value)}")
        return value

    def variable_names(self, t: dict[str, Any], key: str, name: str) -> tuple[str, ...]:
        names = self.strings(t, key, name)
        for i, item in enumerate(names):
            self.variable_name(f"{key}.{name}[{i}]", item)
            if name == "pass-env" and (RESERVED.fullmatch(item) or NOT_PASSED.fullmatch(item)):
                raise self.error(f"{key}.{name}[{i}]",
                                 f"`{key}.{name}` cannot pass {item}: it changes what the "
                                 "command computes, and pass-env values are in no identity",
                                 hint="set it in [train] env (part of the run key), or leave "
                                      "it to repro" if not RESERVED.fullmatch(item)
                                 else "REPRO_* names are repro's own (its settings and "
                                 "credentials stay out of training)" if item.startswith("REPRO_")
                                 else f"repro sets {item} itself for every run")
        return tuple(names)

    def environment_variables(self, t: dict[str, Any], key: str,
                              not_secret: tuple[str, ...]) -> dict[str, str]:
        env = self.string_table(t, key, "env")
        for name, value in env.items():
            self.variable_name(f"{key}.env.{name}", name)
            self.no_nul(f"{key}.env.{name}", value)
            if RESERVED.fullmatch(name):
                raise self.error(f"{key}.env.{name}", f"`{key}.env.{name}`: repro sets {name} "
                                                      "itself for every run",
                                 hint="use train.seed / params / threads for what they mean; "
                                      "drop it from [train] env")
            if looks_secret(name) and name not in not_secret:
                raise self.error(
                    f"{key}.env.{name}",
                    f"`{key}.env.{name}` looks like a credential: its value would be written "
                    "into every run record, the provenance export and the run key",
                    hint=f'pass it from your environment instead: pass-env = ["{name}"] '
                         f'(names recorded, values never); or, if it is no secret, '
                         f'not-secret = ["{name}"]')
        return env

    def variable_name(self, key: str, name: str) -> None:
        """A name that becomes an environment variable: no `=`, no NUL, not empty."""
        if not name or "=" in name or "\0" in name:
            raise self.error(key, f"`{key}`: {name!r} cannot name an environment variable "
                                  "(it is empty, or holds `=` or a NUL character)",
                             hint="use letters, digits and underscores")

    def no_nul(self, key: str, value: str) -> None:
        if "\0" in value:
            raise self.error(key, f"`{key}` holds a NUL character, which no command line or "
                                  "environment variable can carry", hint="remove it")

    def placeholders(self, train: Train, data: tuple[DataInput, ...]) -> None:
        known = {"seed", *(f"params.{p}" for p in train.params), *(f"data.{d.name}" for d in data)}
        for arg in train.command:
            for name in _PLACEHOLDER.findall(arg):
                if name not in known:
                    raise self.error("train.command",
                                     f"`train.command` uses {{{name}}}, which is not defined"
                                     f"{did_you_mean(name, known)}",
                                     hint="placeholders are {seed}, {params.NAME} and {data.NAME}")

    def reproducibility(self, value: Any, train: Train | None) -> Reproducibility:
        key = "reproducibility"
        t = self.table(value, key, ("standard", "tolerance", "nondeterminism", "evaluate",
                                    "time-to-reproduce"))
        standard = self.choice(t, key, "standard", STANDARDS)
        tolerance = {}
        raw = t.get("tolerance", {})
        if not isinstance(raw, dict):
            raise self.error("reproducibility.tolerance", "`reproducibility.tolerance` must be a "
                             "table of metric = { abs = …, rel = … }")
        for metric, bound in raw.items():
            tolerance[metric] = self.tolerance(bound, f"reproducibility.tolerance.{metric}")
        nondet = []
        raw_nd = t.get("nondeterminism", [])
        if not isinstance(raw_nd, list):
            raise self.error("reproducibility.nondeterminism",
                             "write each source as [[reproducibility.nondeterminism]]")
        for i, item in enumerate(raw_nd):
            k = f"reproducibility.nondeterminism[{i}]"
            nd = self.table(item, k, ("source", "reason", "metric", "abs", "rel"))
            nondet.append(Nondeterminism(
                source=self.string(nd, k, "source"),
                reason=self.string(nd, k, "reason"),
                metric=self.string(nd, k, "metric", None),
                tolerance=Tolerance(self.number(nd, k, "abs"), self.number(nd, k, "rel")),
            ))
        evaluate = self.strings(t, key, "evaluate")
        if standard == "functional" and not evaluate:
            raise self.error("reproducibility.evaluate",
                             "a `functional` standard needs `reproducibility.evaluate`",
                             hint='give the evaluation command, e.g. ["python", "eval.py"]')
        if standard in ("statistical", "functional") and not tolerance:
            raise self.error("reproducibility.tolerance",
                             f"a `{standard}` standard needs at least one metric tolerance",
                             hint="add tolerance = { accuracy = { abs = 0.01 } }")
        return Reproducibility(standard, tolerance, tuple(nondet), evaluate,
                               self.duration(t, key, "time-to-reproduce"))

    def duration(self, t: dict[str, Any], key: str, name: str) -> float | None:
        """`"90s"`, `"30m"`, `"2h"`, `"1h30m"`: seconds, or None when the key is absent."""
        value = self.string(t, key, name, None)
        if value is None:
            return None
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                             r"(?:(\d+(?:\.\d+)?)s)?\s*", value)
        if not value.strip() or parts is None or not any(parts.groups()):
            raise self.error(f"{key}.{name}", f"`{key}.{name}` is {value!r}, not a duration",
                             hint='write hours, minutes and seconds: "90s", "30m", "1h30m"')
        h, m, sec = (float(x or 0) for x in parts.groups())
        if h * 3600 + m * 60 + sec <= 0:
            raise self.error(f"{key}.{name}", f"`{key}.{name}` must be longer than 0s",
                             hint='e.g. "30m"; remove the key for no target')
        return h * 3600 + m * 60 + sec

    def tolerance(self, value: Any, key: str) -> Tolerance:
        t = self.table(value, key, ("abs", "rel"))
        tol = Tolerance(self.number(t, key, "abs"), self.number(t, key, "rel"))
        if tol.abs is None and tol.rel is None:
            raise self.error(key, f"`{key}` needs `abs`, `rel` or both")
        return tol


_RECIPE_HINT = 'start the file with [recipe] name = "my-model" and schema = 1'


_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|_KEY$|^KEY$|APIKEY|API_KEY|"
                     r"ACCESS_KEY|PRIVATE|CREDENTIAL|(^|_)PAT$|(^|_)AUTH(_|$)|DATABASE_URL|"
                     r"(^|_)DSN$", re.IGNORECASE)
# Variables repro sets for every run: a recipe's env may not set them, pass-env may not pass
# them (the run key and the record would say one thing, the command see another).
RESERVED = re.compile(r"REPRO_.*|PYTHONHASHSEED|CUBLAS_WORKSPACE_CONFIG|PATH|HOME|TMPDIR|"
                      r"PYTHONPATH|VIRTUAL_ENV")
# ...and what pass-env may never carry: anything that changes what a command computes
# without being in the run key (credentials only).
NOT_PASSED = re.compile(r"LANG|LC_.*|TZ|PYTHON.*|LD_.*|OMP_.*|MKL_.*|OPENBLAS_.*|CUDA_LAUNCH_.*|"
                        r"TORCH_.*|TF_.*|XLA_.*|JAX_.*|NCCL_.*")


def looks_secret(name: str) -> bool:
    """A variable named like a credential: *TOKEN*, *SECRET*, *PASSWORD*, *_KEY, …"""
    return _SECRET.search(name) is not None


def _now() -> str:
    import datetime as dt  # noqa: PLC0415

    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe file.

    Raises:
        RecipeError: the file is not TOML, or a key is unknown, missing or of the wrong type.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, f"cannot read the recipe: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(path, f"not UTF-8: byte {raw[exc.start]:#04x} cannot be decoded",
                          line=line, hint="save the file as UTF-8") from exc
    return parse_recipe(text, path)


def parse_recipe(text: str, path: Path) -> Recipe:
    """Validate recipe text; `path` names the file in errors and anchors relative paths."""
    if text.startswith("\ufeff"):
        raise RecipeError(path, "the file starts with a byte-order mark, which TOML does not "
                                "allow", line=1, hint="save it as UTF-8 without a BOM")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _decode_error_line(str(exc))
        raise RecipeError(
            path,
            f"not valid TOML: {exc}",
            line=line,
            source_line=line_text(text, line),
            hint="fix the TOML syntax at that line (https://toml.io)",
        ) from exc
    except RecursionError:
        raise RecipeError(path, "not valid TOML: nested too deeply to read",
                          hint="a recipe is a few flat tables; look for a runaway [ or {") from None
    return Validator(path, text).recipe(data)


def _decode_error_line(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None
