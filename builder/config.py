"""Where the remote is, and whom to trust: flags, environment, and two config files.

    $XDG_CONFIG_HOME/repro/config.toml   the user's: [remote] url, push, trust, trusted-keys
    <project>/.repro/config.toml         the project's: [remote] url, push (never trust)

The remote's url and push come from the first of: the flag, REPRO_REMOTE, the project's
config, the user's config. Trust comes only from the user (`trusted-keys` and `trust` in the
user's config, REPRO_TRUSTED_KEYS, --trust): a pull request can change the project's config,
so a key or a `trust` there is ignored, with a warning. Nothing here is part of any identity.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError, did_you_mean

log = logging.getLogger(__name__)
PROJECT_CONFIG = Path(".repro") / "config.toml"
_KEYS = {"url", "push", "trust", "trusted-keys"}
_TRUST_KEYS = {"trust", "trusted-keys"}


def user_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "repro" / "config.toml"


@dataclass(frozen=True)
class RemoteSettings:
    """The remote one command uses (url None: no remote), and the trust it brings."""

    url: str | None = None
    source: str = ""  # where the url came from: a flag, a variable, a file
    push: bool = False  # `push = true` in a config: runs push what they train
    trusted: tuple[str, ...] = ()  # public keys (repro-ed25519:…)
    trust_registry: bool = False  # the user's config says this remote's access control is trust
    require: bool = False  # --require-remote: a remote failure is fatal (exit 3)
    sign_key: Path | None = None  # --sign-key / REPRO_SIGNING_KEY
    user_named: bool = True  # the url came from the user (flag, variable, own config), not
    # from the project's files: only then do REPRO_REGISTRY_* credentials go to its host


def _remote_table(path: Path) -> dict[str, Any]:
    """The [remote] table of a config file ({} when there is no file).

    Raises:
        InputError: the file is not TOML, or [remote] holds a key repro does not know.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read it as TOML: {exc}",
                         hint="fix the file, or remove it") from exc
    table = data.get("remote", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: `remote` must be a table ([remote])")
    for key, value in table.items():
        if key not in _KEYS:
            raise InputError(f"{path}: [remote] has no key `{key}`{did_you_mean(key, _KEYS)}",
                             hint=f"known keys: {', '.join(sorted(_KEYS))}")
        want = {"url": str, "push": bool, "trust": str, "trusted-keys": list}[key]
        if not isinstance(value, want):
            raise InputError(f"{path}: [remote] {key} must be a {want.__name__}, not "
                             f"{type(value).__name__}")
    if table.get("trust", "registry") != "registry":
        raise InputError(f"{path}: [remote] trust = {table['trust']!r}: the one value is "
                         '"registry" (trust whatever this remote serves)',
                         hint="or list public keys in trusted-keys")
    return table


def settings(project_root: Path | None, *, flag: str | None = None,
             trust: tuple[str, ...] = (), require: bool = False,
             sign_key: str | None = None) -> RemoteSettings:
    """The remote settings for a command run from `project_root` (None: no project).

    Raises:
        InputError: a config file that cannot be read, or a bad trusted key.
    """
    from builder import signing  # noqa: PLC0415

    user_path = user_config()
    user = _remote_table(user_path)
    project: dict[str, Any] = {}
    project_path = project_root / PROJECT_CONFIG if project_root else None
    if project_path is not None:
        project = _remote_table(project_path)
        ignored = sorted(_TRUST_KEYS & set(project))
        if ignored:
            log.warning("%s sets %s: trust is read only from your own config (%s), "
                        "REPRO_TRUSTED_KEYS or --trust, so it is ignored", project_path,
                        " and ".join(ignored), user_path)
    env = os.environ.get("REPRO_REMOTE") or None
    chosen = [(flag, "--remote", {}), (env, "REPRO_REMOTE", {}),
              (project.get("url"), str(project_path), project),
              (user.get("url"), str(user_path), user)]
    url, source, table = next(((u, s, t) for u, s, t in chosen if u), (None, "", {}))
    push = bool(table.get("push", False))
    from_project = table is project and bool(project)
    if push and from_project and url != user.get("url"):
        # a pull request must not be able to send the project's code and data elsewhere
        log.warning("%s sets push = true for %s, a remote your own config (%s) does not "
                    "name: nothing is pushed unless you say so (--push)", project_path, url,
                    user_path)
        push = False
    for where, keys in ((str(user_path), user.get("trusted-keys", [])), ("--trust", trust),
                        ("REPRO_TRUSTED_KEYS",
                         [k.strip() for k in os.environ.get("REPRO_TRUSTED_KEYS", "").split(",")
                          if k.strip()])):
        for key in keys:
            signing.public_key(str(key), where=f"{where}: trusted key {key!r}")
    keys = [*user.get("trusted-keys", []), *trust,
            *(k.strip() for k in os.environ.get("REPRO_TRUSTED_KEYS", "").split(",")
              if k.strip())]
    signing_key = sign_key or os.environ.get("REPRO_SIGNING_KEY") or None
    # `trust = "registry"` covers the user's own remote only, never one a project names
    trust_registry = user.get("trust") == "registry" and url == user.get("url")
    return RemoteSettings(url, source, push, tuple(dict.fromkeys(keys)), trust_registry,
                          require, Path(signing_key) if signing_key else None,
                          user_named=not from_project)
