"""Sealing: originals encrypted with age to reviewers' public keys, so the gateway cannot read them back.

The format is age (https://age-encryption.org/v1), through pyrage (bindings of the rage
implementation); Debian's `age -d -i KEY` opens what this writes. Encryption and decryption
stream in age's 64 KiB chunks, so memory stays flat whatever the file's size.

Each sealed file has a plaintext record beside it (`NAME.age.json`). It must not identify the
content to whoever finds the gateway's disk, so it holds no plain hash: only an HMAC-SHA256 of
the content under a random key, and that key sealed to the same recipients. A reviewer who
holds an identity can check the HMAC (`edgeguard unseal` does); nobody else can compute it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pyrage
from pyrage import x25519

from edgeguard import __version__
from edgeguard.durable import create_new, take_name
from edgeguard.errors import Cancelled, EdgeguardError, UsageError

SUFFIX = ".age"
RECORD = ".json"  # the record is NAME.age.json
FORMAT = "edgeguard-sealed/1"
RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"


class SealError(EdgeguardError):
    """A key or a sealed file cannot be used (bad key, wrong identity, tampered file)."""


# ------------------------------------------------------------------ keys


def read_recipients(entries: Sequence[str]) -> list[str]:
    """The age X25519 public keys of `entries`: each a key (age1...) or a file of them, one per line
    (blank lines and # comments skipped, as age's -R files). ValueError names the bad entry."""
    keys: list[str] = []
    for entry in entries:
        text = entry.strip()
        if text.startswith(RECIPIENT_PREFIX) or _secret(text):
            keys.append(_recipient(text, "an AGE-SECRET-KEY-1... entry" if _secret(text) else text))  # never echoed
            continue
        path = Path(text).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ValueError(f"{text!r} is neither an age public key (age1...) nor a readable file: {detail}") from exc
        found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise ValueError(f"{path}: no age public key in it")
        keys += [_recipient(key, f"{path}: {'a private key' if _secret(key) else key[:16] + '...'}") for key in found]
    return list(dict.fromkeys(keys))


def _secret(key: str) -> bool:
    """Whether `key` is (or looks like, typos and quotes included) an age identity, never to be echoed."""
    return "SECRET-KEY" in key.upper() or "SECRETKEY" in key.upper()


def _recipient(key: str, where: str) -> str:
    if _secret(key):
        raise ValueError(f"{where} is a private key: the gateway must only ever hold public keys (age1...)")
    try:
        x25519.Recipient.from_str(key)
    except pyrage.RecipientError as exc:
        raise ValueError(f"{where} is not a valid age X25519 public key ({exc})") from exc
    return key


def fingerprint(recipient: str) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its text
    (`printf %s age1... | sha256sum | cut -c1-16`)."""
    return hashlib.sha256(recipient.encode("ascii")).hexdigest()[:16]


def read_identities(path: Path) -> list[x25519.Identity]:
    """The age identities (AGE-SECRET-KEY-1...) in an identity file, as age-keygen writes it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the identity file: {getattr(exc, 'strerror', None) or exc}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    identities = []
    for i, key in enumerate(keys, 1):
        try:
            identities.append(x25519.Identity.from_str(key))
        except pyrage.IdentityError as exc:
            raise UsageError(f"{path}: key {i} is not an age X25519 identity ({exc})") from exc
    if not identities:
        raise UsageError(f"{path}: no identity (AGE-SECRET-KEY-1...) in it")
    return identities


@dataclass(frozen=True)
class KeyPair:
    identity: str
    recipient: str

    def file_text(self) -> str:
        """The identity file, in age-keygen's layout (age -d -i reads it)."""
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return f"# created: {created}\n# public key: {self.recipient}\n{self.identity}\n"


def keygen() -> KeyPair:
    identity = x25519.Identity.generate()
    return KeyPair(str(identity), str(identity.to_public()))


# ------------------------------------------------------------------ sealing


class _Reader(io.RawIOBase):
    """The plaintext as age reads it: hashed, checked for cancellation and reported alive as it goes."""

    def __init__(
        self, stream: BinaryIO, mac: hmac.HMAC, cancel: threading.Event | None, alive: Callable[[], None] | None
    ) -> None:
        self.stream, self.mac, self.cancel, self.alive = stream, mac, cancel, alive
        self.size = 0
        self._calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(self.stream.name, "stopped while sealing")
        data = self.stream.read(size)
        self.mac.update(data)
        self.size += len(data)
        self._calls += 1
        if self.alive is not None and self._calls % 4096 == 0:  # every 32 MiB
            self.alive()
        return data


@dataclass(frozen=True)
class Sealed:
    """What sealing a file measured: its size and keyed hash, the HMAC key sealed, and to whom."""

    size: int
    hmac_sha256: str
    hmac_key: str  # armored age, to the same recipients
    recipients: tuple[str, ...]

    def record(self, **about: Any) -> dict[str, Any]:
        """The plaintext record kept beside the sealed file; `about` adds what the caller knows (job, output...)."""
        return {
            "format": FORMAT,
            "sealed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "version": __version__,
            "size": self.size,
            "hmac_sha256": self.hmac_sha256,
            "hmac_key": self.hmac_key,
            "recipients": [fingerprint(r) for r in self.recipients],
            **about,
        }


class Sink(Protocol):
    """Where sealed bytes go: a binary file, or a writer around one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


def sealed_size(size: int, recipients: int = 1) -> int:
    """At most how many bytes sealing `size` bytes takes: age's 16-byte tag per 64 KiB chunk, and a
    header of under 200 bytes per recipient (with room to spare; the record beside it adds a few KiB)."""
    return size + 16 * (size // (64 << 10) + 1) + 256 * recipients + (8 << 10)


def seal(
    src: BinaryIO,
    dst: Sink,
    recipients: Sequence[str],
    *,
    cancel: threading.Event | None = None,
    alive: Callable[[], None] | None = None,
) -> Sealed:
    """Encrypt the stream `src` into `dst` for `recipients` (age public keys); memory flat in size.

    Cancelled if `cancel` is set meanwhile (`dst` is then incomplete: the caller removes it).
    """
    keys = [x25519.Recipient.from_str(r) for r in recipients]
    mac_key = secrets.token_bytes(32)
    reader = _Reader(src, hmac.new(mac_key, digestmod=hashlib.sha256), cancel, alive)
    try:
        pyrage.encrypt_io(reader, dst, keys)  # type: ignore[arg-type]  # any object with read/write
    except pyrage.EncryptError as exc:
        # An exception raised in `read` reaches us wrapped in EncryptError.
        if cancel is not None and cancel.is_set():
            raise Cancelled(getattr(src, "name", "?"), "stopped while sealing") from None
        raise SealError(f"cannot seal: {exc}") from exc
    sealed_key = pyrage.encrypt(mac_key, keys, armored=True).decode("ascii")
    return Sealed(reader.size, reader.mac.hexdigest(), sealed_key, tuple(recipients))


# ------------------------------------------------------------------ unsealing


class _Writer(io.RawIOBase):
    """The plaintext as age writes it: hashed on its way to `stream`."""

    def __init__(self, stream: BinaryIO, mac: hmac.HMAC | None) -> None:
        self.stream, self.mac = stream, mac

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if self.mac is not None:
            self.mac.update(chunk)
        self.stream.write(chunk)
        return len(chunk)


def unseal(src: BinaryIO, dst: BinaryIO, identities: Sequence[x25519.Identity], record: dict[str, Any] | None) -> bool:
    """Decrypt `src` into `dst`; with its `record`, check the content's keyed hash.

    True when checked and equal, False when there was no record to check against;
    SealError when the identities do not open it, or the content is not what was sealed.
    """
    mac: hmac.HMAC | None = None
    if record is not None:
        try:
            key = pyrage.decrypt(str(record["hmac_key"]).encode("ascii"), list(identities))
        except (KeyError, UnicodeEncodeError, pyrage.DecryptError) as exc:
            raise SealError(
                f"this identity cannot open it, or the record beside it ({type(exc).__name__}: {exc}): it is"
                " sealed to other keys, or the record is another file's (age -d opens a file without the check)"
            ) from exc
        mac = hmac.new(key, digestmod=hashlib.sha256)
    try:
        pyrage.decrypt_io(src, _Writer(dst, mac), list(identities))  # type: ignore[arg-type]
    except pyrage.DecryptError as exc:
        raise SealError(f"cannot unseal: {exc}") from exc
    if mac is None:
        return False
    if not hmac.compare_digest(mac.hexdigest(), str(record and record.get("hmac_sha256"))):
        raise SealError("the content does not match the hash taken when it was sealed")
    return True


def record_path(sealed: Path) -> Path:
    return sealed.with_name(sealed.name + RECORD)


def read_record(sealed: Path) -> dict[str, Any] | None:
    """The record beside a sealed file, or None if there is none."""
    path = record_path(sealed)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SealError(f"{path}: cannot read the record: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SealError(f"{path}: not an edgeguard sealed-file record")
    return record


def default_output(sealed: Path) -> Path:
    """Where `edgeguard unseal` writes by default: the original's name, in the current folder."""
    return Path(sealed.name.removesuffix(SUFFIX) or "unsealed")


def unseal_file(sealed: Path, identities: Sequence[x25519.Identity], out: Path) -> bool:
    """Unseal `sealed` to `out` (never over an existing file): written under a hidden name
    (owner-only), checked against the record, then linked in. Returns whether it was checked."""
    record = read_record(sealed)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.unsealing")
    try:
        with sealed.open("rb") as src, create_new(tmp, 0o600) as dst:
            checked = unseal(src, dst, identities, record)
            dst.flush()
            os.fsync(dst.fileno())
        if not take_name(tmp, out):
            raise UsageError(f"{out} exists; not overwritten (choose another with -o)")
    except OSError as exc:
        raise SealError(f"cannot unseal {sealed} to {out}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return checked


def write_identity(pair: KeyPair, path: Path) -> None:
    """Write an identity file readable by its owner only; never over an existing file."""
    try:
        with create_new(path, 0o600) as out:
            out.write(pair.file_text().encode("ascii"))
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwritten") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
