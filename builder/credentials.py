"""Registry credentials, from where Docker and its tools keep them.

In order: REPRO_REGISTRY_USERNAME and REPRO_REGISTRY_PASSWORD; then the Docker config
($DOCKER_CONFIG/config.json, else ~/.docker/config.json): `credHelpers[host]`, `auths[host]`
(base64 `user:password`), `credsStore`; a helper is `docker-credential-<name> get`, given the
host on stdin, answering `{"Username": …, "Secret": …}`. Credentials live in memory only:
never written to the store, a record, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

from builder.errors import InputError

log = logging.getLogger(__name__)


class Credentials(NamedTuple):
    username: str
    secret: str
    source: str  # where they came from, to name in messages (never the secret)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()


def _docker_config() -> Path:
    folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    return Path(folder) / "config.json"


def _helper(name: str, host: str) -> Credentials | None:
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, "get"], input=host, capture_output=True, text=True,
                              timeout=60, check=False)
    except FileNotFoundError:
        raise InputError(f"{_docker_config()} names the credential helper {name!r}, but "
                         f"{program} is not on PATH",
                         hint=f"install {program}, or remove it from the Docker config") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"{program} get did not answer within 60 s for {host}") from None
    if done.returncode != 0:  # "credentials not found in native keychain": none for this host
        log.debug("%s has no credentials for %s", program, host)
        return None
    try:
        answer = json.loads(done.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]), program)
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{program} get answered something that is not "
                         '{"Username": …, "Secret": …} for ' + host) from None


def _keys(host: str) -> list[str]:
    """The names a Docker config may file a registry under."""
    names = [host, f"https://{host}", f"http://{host}"]
    if host in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        names.append("https://index.docker.io/v1/")
    return names


def for_host(host: str) -> Credentials | None:
    """The credentials for a registry host, or None (anonymous).

    Raises:
        InputError: the Docker config or a helper it names is broken.
    """
    name = os.environ.get("REPRO_REGISTRY_USERNAME")
    password = os.environ.get("REPRO_REGISTRY_PASSWORD")
    if name and password:
        return Credentials(name, password, "REPRO_REGISTRY_USERNAME/_PASSWORD")
    path = _docker_config()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the Docker config {path}: {exc}",
                         hint="fix it, or point DOCKER_CONFIG at another folder") from None
    if not isinstance(config, dict):
        raise InputError(f"the Docker config {path} is not a JSON object")
    helpers = config.get("credHelpers") or {}
    for key in _keys(host):
        if key in helpers:
            return _helper(str(helpers[key]), host)
    auths = config.get("auths") or {}
    for key in _keys(host):
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, sep, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, TypeError):
                sep = ""
            if not sep:
                raise InputError(f"{path}: auths[{key!r}].auth is not base64 of "
                                 "`user:password`", hint="log in again (docker login)")
            return Credentials(user, secret, str(path))
    if config.get("credsStore"):
        return _helper(str(config["credsStore"]), host)
    return None
