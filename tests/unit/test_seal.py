"""Sealing with age (`edgeguard.seal`): real keys, Debian's `age` opens what it writes, memory stays
flat, a stop is honoured, public keys are read strictly and a secret key is never echoed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from edgeguard import seal
from edgeguard.errors import Cancelled


@pytest.fixture(scope="module")
def pair() -> seal.KeyPair:
    return seal.keygen()


def identity_file(pair: seal.KeyPair, folder: Path) -> Path:
    path = folder / "key.txt"
    seal.write_identity(pair, path)
    return path


def sealed_bytes(data: bytes, recipients: list[str]) -> tuple[bytes, seal.Sealed]:
    out = io.BytesIO()
    made = seal.seal(io.BytesIO(data), out, recipients)
    return out.getvalue(), made


# ------------------------------------------------------------------ round trips


def test_debian_age_opens_what_seal_writes(pair: seal.KeyPair, age: str, tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail not on a chunk boundary"
    plain, sealed_file = tmp_path / "clip.mp4", tmp_path / "clip.mp4.age"
    plain.write_bytes(data)
    with plain.open("rb") as src, sealed_file.open("wb") as dst:
        made = seal.seal(src, dst, [pair.recipient])
    assert made.size == len(data)
    assert made.recipients == (pair.recipient,)
    assert data[:4096] not in sealed_file.read_bytes()
    done = subprocess.run(
        [age, "-d", "-i", str(identity_file(pair, tmp_path)), str(sealed_file)], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == data


def test_any_of_several_recipients_can_open_it(age: str, tmp_path: Path) -> None:
    first, second = seal.keygen(), seal.keygen()
    data = os.urandom(100_000)
    ciphertext, _ = sealed_bytes(data, [first.recipient, second.recipient])
    for i, pair in enumerate((first, second)):
        folder = tmp_path / str(i)
        folder.mkdir()
        done = subprocess.run(
            [age, "-d", "-i", str(identity_file(pair, folder))], input=ciphertext, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == data


def test_unseal_checks_the_record(pair: seal.KeyPair) -> None:
    data = os.urandom(1 << 20)
    ciphertext, made = sealed_bytes(data, [pair.recipient])
    record = json.loads(json.dumps(made.record(job=7)))  # as it is read back from NAME.age.json
    identities = [x25519.Identity.from_str(pair.identity)]
    out = io.BytesIO()
    assert seal.unseal(io.BytesIO(ciphertext), out, identities, record) is True
    assert out.getvalue() == data
    out = io.BytesIO()
    assert seal.unseal(io.BytesIO(ciphertext), out, identities, None) is False, "nothing to check against"
    assert out.getvalue() == data


def test_unseal_detects_a_tampered_record(pair: seal.KeyPair) -> None:
    ciphertext, made = sealed_bytes(b"the original", [pair.recipient])
    record = made.record()
    digest = record["hmac_sha256"]
    record["hmac_sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    identities = [x25519.Identity.from_str(pair.identity)]
    with pytest.raises(seal.SealError, match="does not match"):
        seal.unseal(io.BytesIO(ciphertext), io.BytesIO(), identities, record)


def test_unseal_refuses_a_wrong_identity(pair: seal.KeyPair) -> None:
    ciphertext, made = sealed_bytes(b"the original", [pair.recipient])
    stranger = [x25519.Identity.generate()]
    with pytest.raises(seal.SealError, match="cannot open it"):
        seal.unseal(io.BytesIO(ciphertext), io.BytesIO(), stranger, made.record())
    out = io.BytesIO()
    with pytest.raises(seal.SealError, match="cannot unseal"):
        seal.unseal(io.BytesIO(ciphertext), out, stranger, None)
    assert out.getvalue() == b""


def test_the_record_does_not_identify_the_content(pair: seal.KeyPair) -> None:
    """Whoever finds the gateway's disk must not match a sealed file against a known video by its hash."""
    data = os.urandom(200_000)
    _, made = sealed_bytes(data, [pair.recipient])
    text = json.dumps(made.record(job=1, file="clip.mp4", output="/srv/output/clip.mp4"))
    record = json.loads(text)
    for digest in (hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest()):
        assert digest[:16] not in text
    assert "sha256" not in record
    assert record["hmac_sha256"] != hashlib.sha256(data).hexdigest()
    assert record["recipients"] == [seal.fingerprint(pair.recipient)]
    assert pair.recipient not in text and pair.identity not in text
    assert record["format"] == seal.FORMAT and record["size"] == len(data)
    key = pyrage.decrypt(record["hmac_key"].encode(), [x25519.Identity.from_str(pair.identity)])
    assert len(key) == 32, "the HMAC key is there, sealed to the same recipients"


# ------------------------------------------------------------------ memory and stopping

_SEAL_A_SPARSE_FILE = """
import io, sys
from edgeguard import seal

class Count(io.RawIOBase):  # the ciphertext counted, not kept: neither memory nor disk
    written = 0
    def writable(self): return True
    def write(self, data):
        self.written += len(data)
        return len(data)

path, size = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.truncate(size)
with open(path, "rb") as src:
    out = Count()
    made = seal.seal(src, out, [seal.keygen().recipient])
# This process's peak, in KiB: not ru_maxrss, which keeps the parent's peak across fork and exec.
(peak,) = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(made.size, out.written, peak)
"""


def test_sealing_a_large_file_keeps_memory_flat(tmp_path: Path) -> None:
    size = 1 << 30
    done = subprocess.run(
        [sys.executable, "-c", _SEAL_A_SPARSE_FILE, str(tmp_path / "big.mp4"), str(size)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    read, written, peak_kib = map(int, done.stdout.split())
    assert read == size and written > size, "it was all sealed"
    assert peak_kib < 100 << 10, f"sealing {size >> 20} MiB peaked at {peak_kib >> 10} MiB"


class Named(io.BytesIO):
    name = "clip.mp4"


def test_a_stop_set_beforehand_cancels(pair: seal.KeyPair) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        seal.seal(Named(b"x" * 1000), io.BytesIO(), [pair.recipient], cancel=stop)


def test_a_stop_set_while_sealing_cancels(pair: seal.KeyPair, tmp_path: Path) -> None:
    """The `alive` callback comes every 32 MiB; the stop set there is honoured at the next read."""
    stop = threading.Event()
    beats = []

    def alive() -> None:
        beats.append(1)
        stop.set()

    big = tmp_path / "clip.mp4"
    with big.open("wb") as f:
        f.truncate(96 << 20)
    out = io.BytesIO()
    with big.open("rb") as src, pytest.raises(Cancelled, match=r"clip\.mp4: stopped while sealing"):
        seal.seal(src, out, [pair.recipient], cancel=stop, alive=alive)
    assert beats == [1]
    assert len(out.getvalue()) < 40 << 20, "it stopped soon after the stop, not at the end"


# ------------------------------------------------------------------ keys


def test_fingerprint_is_the_documented_shell_pipeline(pair: seal.KeyPair) -> None:
    shell = subprocess.run(
        ["sh", "-c", 'printf %s "$1" | sha256sum | cut -c1-16', "sh", pair.recipient],
        capture_output=True,
        text=True,
        check=True,
    )
    assert seal.fingerprint(pair.recipient) == shell.stdout.strip()
    assert len(seal.fingerprint(pair.recipient)) == 16


def test_read_recipients_takes_keys_and_files_and_collapses_duplicates(tmp_path: Path) -> None:
    a, b, c = (seal.keygen().recipient for _ in range(3))
    keys = tmp_path / "reviewers.txt"
    keys.write_text(f"# the reviewers\n\n  {b}  \n# {c} left\n{a}\n\n{b}\n", encoding="utf-8")
    assert seal.read_recipients([a]) == [a]
    assert seal.read_recipients([f"  {a}\n"]) == [a]
    assert seal.read_recipients([str(keys)]) == [b, a]
    assert seal.read_recipients([a, str(keys), c, a]) == [a, b, c]


def test_read_recipients_refuses_an_invalid_key(tmp_path: Path) -> None:
    good = seal.keygen().recipient
    bad = good[:-1] + ("q" if good[-1] != "q" else "p")  # the checksum no longer matches
    with pytest.raises(ValueError, match="not a valid age X25519 public key"):
        seal.read_recipients([bad])
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(keys))}: .*not a valid age X25519 public key"):
        seal.read_recipients([str(keys)])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no age public key in it"):
        seal.read_recipients([str(empty)])


@pytest.mark.parametrize("case", ["as is", "lower case", "in a file"])
def test_a_private_key_is_refused_without_printing_it(tmp_path: Path, case: str) -> None:
    secret = seal.keygen().identity
    entry = {"as is": secret, "lower case": secret.lower(), "in a file": str(tmp_path / "key.txt")}[case]
    (tmp_path / "key.txt").write_text(f"# created: now\n{secret}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="private key") as raised:
        seal.read_recipients([entry])
    text = str(raised.value)
    body = secret.removeprefix(seal.IDENTITY_PREFIX)
    assert body[:8].lower() not in text.lower(), text


def test_read_recipients_names_an_unreadable_path(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.txt"
    with pytest.raises(ValueError, match=r"nobody\.txt.*neither an age public key .* nor a readable file"):
        seal.read_recipients([str(missing)])
    with pytest.raises(ValueError, match="nor a readable file"):
        seal.read_recipients([str(tmp_path)])  # a folder
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    with pytest.raises(ValueError, match="not text"):
        seal.read_recipients([str(binary)])
