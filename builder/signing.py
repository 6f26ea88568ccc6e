"""ed25519 keys and signatures for what a remote serves (the `cryptography` package).

A signature covers one line-based fingerprint, never a whole JSON document, so what it means
is plain (as a Nix narinfo's `Sig:` covers its fingerprint line):

    repro-signature/v1
    <kind: run | env>
    <identity: the run key or env id>
    <content: the sha256 of the manifest, its signature annotations left out>

Public keys are written `repro-ed25519:<base64 of the 32 raw bytes>`.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import NamedTuple

from builder.errors import InputError

PREFIX = "repro-ed25519:"


def fingerprint(kind: str, identity: str, content: str) -> bytes:
    return f"repro-signature/v1\n{kind}\n{identity}\n{content}\n".encode()


def public_key(text: str, *, where: str = "the key") -> bytes:
    """The 32 raw bytes of a `repro-ed25519:…` public key.

    Raises:
        InputError: not one.
    """
    raw = b""
    if text.startswith(PREFIX):
        try:
            raw = base64.b64decode(text[len(PREFIX):], validate=True)
        except binascii.Error:
            raw = b""
    if len(raw) != 32:
        raise InputError(f"{where} is not an ed25519 public key",
                         hint="write it as `repro key generate` prints it: "
                              f"{PREFIX}<44 characters of base64>")
    return raw


class Signer(NamedTuple):
    private: bytes  # the 32-byte seed
    public: str  # repro-ed25519:…

    def sign(self, message: bytes) -> str:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        key = Ed25519PrivateKey.from_private_bytes(self.private)
        return base64.b64encode(key.sign(message)).decode()


def _public_of(seed: bytes) -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def generate(path: Path) -> str:
    """Write a new private key to `path` (PEM, PKCS#8, mode 0600; never over a file) and
    return its public key.

    Raises:
        InputError: `path` exists.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} exists; a key is never written over another",
                         hint="choose another file name, or remove the old key first") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return _public_of(seed)


def load(path: Path) -> Signer:
    """The private key in `path` (as `generate` writes it).

    Raises:
        InputError: it cannot be read, or it is not an ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InputError(f"cannot read the signing key {path}: {exc.strerror}",
                         hint="give --sign-key FILE (or REPRO_SIGNING_KEY) a key written by "
                              "`repro key generate`") from exc
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path} is not a PEM private key without a passphrase",
                         hint="write one with `repro key generate FILE`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} holds a {type(key).__name__}, not an ed25519 key",
                         hint="write one with `repro key generate FILE`")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return Signer(seed, _public_of(seed))


def verify(public: str, signature: str, message: bytes) -> bool:
    """Whether `signature` (base64) is `public`'s over `message`."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    try:
        key = Ed25519PublicKey.from_public_bytes(public_key(public))
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InputError, InvalidSignature, binascii.Error, ValueError):
        return False
    return True
