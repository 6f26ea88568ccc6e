"""Registry credentials, from where Docker and its tools keep them.

In order: REPRO_REGISTRY_USERNAME and REPRO_REGISTRY_PASSWORD, for a host the user named (the
remote from --remote, REPRO_REMOTE or the user's own config; `build --push REF`), never for one
a project's files name: they are for no host in particular. Then the Docker config
($DOCKER_CONFIG/config.json, else ~/.docker/config.json): `credHelpers`, `auths` (base64
`user:password`; keys like `https://HOST/v1/` match too), `credsStore`; a helper is
`docker-credential-<name> get`, given the host on stdin, answering `{"Username": …,
"Secret": …}`. Credentials live in memory only: never written to the store, a record, a log
line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

from builder.errors import RegistryError

log = logging.getLogger(__name__)
HELPER_TIMEOUT = 30  # seconds a docker-credential-* helper may take


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
    # Not through proc.py: its logs and errors carry a command's output, and this one's is a
    # secret. A session of its own: a helper that hangs is ended with whatever it started.
    try:
        helper = subprocess.Popen([program, "get"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
    except FileNotFoundError:
        raise RegistryError(f"{_docker_config()} names the credential helper {name!r}, but "
                            f"{program} is not on PATH",
                            hint=f"install {program}, or remove it from the Docker config"
                            ) from None
    try:
        out, _ = helper.communicate(host, timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(helper.pid, signal.SIGKILL)
        helper.communicate()
        raise RegistryError(f"{program} get did not answer within {HELPER_TIMEOUT} s for {host}",
                            hint=f"check {program}, or log in again") from None
    if helper.returncode != 0:  # "credentials not found in native keychain": none for this host
        log.debug("%s has no credentials for %s", program, host)
        return None
    try:
        answer = json.loads(out)
        return Credentials(str(answer["Username"]), str(answer["Secret"]), program)
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{program} get answered something that is not "
                            '{"Username": …, "Secret": …} for ' + host,
                            hint=f"check {program}, or remove it from {_docker_config()}"
                            ) from None


def _host_of(key: str) -> str:
    """The host a Docker config's key names: `https://HOST/v1/`, `HOST`, in any case."""
    return key.lower().split("://", 1)[-1].split("/", 1)[0]


def _entry(table: object, host: str) -> object:
    """The value a Docker config table files under this host, whatever the key's form."""
    if not isinstance(table, dict):
        return None
    hosts = {host.lower()}
    if host in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        hosts |= {"registry-1.docker.io", "docker.io", "index.docker.io"}
    return next((v for k, v in table.items() if isinstance(k, str) and _host_of(k) in hosts),
                None)


def for_host(host: str, *, variables: bool = False) -> Credentials | None:
    """The credentials for a registry host, or None (anonymous); REPRO_REGISTRY_* only with
    `variables` (a host the user named).

    Raises:
        RegistryError: the Docker config, or a helper it names, is broken.
    """
    user = os.environ.get("REPRO_REGISTRY_USERNAME") if variables else None
    password = os.environ.get("REPRO_REGISTRY_PASSWORD") if variables else None
    if user and password:
        return Credentials(user, password, "REPRO_REGISTRY_USERNAME/_PASSWORD")
    path = _docker_config()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the Docker config {path}: {exc}",
                            hint="fix it, or point DOCKER_CONFIG at another folder") from None
    if not isinstance(config, dict):
        raise RegistryError(f"the Docker config {path} is not a JSON object",
                            hint="fix it, or point DOCKER_CONFIG at another folder")
    helper = _entry(config.get("credHelpers"), host)
    if helper:
        return _helper(str(helper), host)
    entry = _entry(config.get("auths"), host)
    if isinstance(entry, dict) and entry.get("auth"):
        try:
            name, sep, secret = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            sep = ""
        if not sep:
            raise RegistryError(f"{path}: the auths entry for {host} is not base64 of "
                                "`user:password`", hint=f"log in again (docker login {host})")
        return Credentials(name, secret, str(path))
    if config.get("credsStore"):
        return _helper(str(config["credsStore"]), host)
    return None
