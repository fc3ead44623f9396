"""CurveZMQ keys: how they are written to files and read back.

A key pair is two files in ZeroMQ's certificate format (the one ``zmq.auth``
and czmq use): ``NAME.key`` holds the public key and may be copied anywhere;
``NAME.key_secret`` holds both keys and must stay private (mode 0600). A
server's ``--authorized-keys`` directory is a directory of ``*.key`` files,
one per client allowed in.

Keys are 40-character Z85 text. Wherever a public key is expected, the key
text itself may be given instead of a file name.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Union

import zmq
import zmq.auth

KeySource = Union[str, bytes, "os.PathLike[str]"]

#: Length of a CURVE key written in Z85.
Z85_KEY_CHARS = 40


def _is_z85_key(text: str | bytes) -> bool:
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if len(text) != Z85_KEY_CHARS:
        return False
    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except Exception:
        return False


def load_public_key(source: KeySource) -> bytes:
    """The Z85 public key in a ``.key`` (or ``.key_secret``) file, or given as text.

    Raises:
        ValueError: no such file, or it holds no public key.
    """
    if isinstance(source, (str, bytes)) and _is_z85_key(source) and not os.path.exists(source):
        return source.encode("ascii") if isinstance(source, str) else bytes(source)
    path = Path(os.fsdecode(source))
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a public key from {str(path)!r}: {exc}") from None
    if not _is_z85_key(public):
        raise ValueError(f"{str(path)!r} holds no valid public key")
    return public


def load_key_pair(source: KeySource) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file.

    Raises:
        ValueError: no such file, or it lacks the secret key.
    """
    path = Path(os.fsdecode(source))
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a key pair from {str(path)!r}: {exc}") from None
    if secret is None or not _is_z85_key(secret) or not _is_z85_key(public):
        raise ValueError(f"{str(path)!r} holds no secret key (it is a public .key file?)")
    if zmq.curve_public(secret) != public:
        raise ValueError(f"the public and secret keys in {str(path)!r} do not belong together")
    return public, secret


def load_authorized_keys(directory: KeySource) -> set[bytes]:
    """The public keys of every ``*.key`` file in ``directory``.

    Raises:
        ValueError: the directory cannot be read, or a file in it is not a key.
    """
    path = Path(os.fsdecode(directory))
    if not path.is_dir():
        raise ValueError(f"authorized keys directory {str(path)!r} does not exist")
    return {load_public_key(file) for file in sorted(path.glob("*.key"))}


_BANNERS = {
    False: "#   ****  Generated on {stamp} by memlookup-keygen  ****\n"
           "#   ZeroMQ CURVE Public Certificate\n"
           "#   Exchange securely, or use a secure mechanism to verify the contents\n"
           "#   of this file after exchange.\n\n",
    True: "#   ****  Generated on {stamp} by memlookup-keygen  ****\n"
          "#   ZeroMQ CURVE **Secret** Certificate\n"
          "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n",
}


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    """A key file in ZeroMQ's certificate format, as ``zmq.auth`` and czmq write and read it."""
    text = _BANNERS[secret is not None].format(stamp=datetime.datetime.now().isoformat(" ", "seconds"))
    text += f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    return text.encode("ascii")


def _write_temp(folder: Path, content: bytes, mode: int) -> str:
    """``content`` in a new file of ``folder`` with a name nobody else has, created with
    O_EXCL|O_NOFOLLOW and mode 0600 (then ``mode``), fsynced; returns its path."""
    fd, temp = tempfile.mkstemp(prefix=".keygen-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    return temp


def create_key_pair(directory: KeySource, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` in ``directory``.

    The secret file is created with mode 0600. Each file is written under a
    temporary name (``mkstemp``) and then renamed into place, so a key is
    never written through a symbolic link: a name that is a symbolic link is
    refused, and one planted meanwhile is replaced by the rename, not
    followed. Returns the two paths.

    Raises:
        FileExistsError: a file of that name exists and ``overwrite`` is False.
        ValueError: ``name`` is not a plain file name, or a key file's name is
            a symbolic link.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    folder = Path(os.fsdecode(directory))
    folder.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; refusing to write a key through it (remove it first)")
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{path} exists; pass --force to replace it")
    public, secret = zmq.curve_keypair()
    temps: list[str] = []
    try:
        temps.append(_write_temp(folder, _certificate(public, None), 0o644))
        temps.append(_write_temp(folder, _certificate(public, secret), 0o600))
        for temp, path in zip(temps, (public_path, secret_path), strict=True):
            if overwrite:
                os.replace(temp, path)
            else:
                os.link(temp, path)  # fails if the name appeared meanwhile, as a file or a link
                os.unlink(temp)
    finally:
        for temp in temps:
            if os.path.lexists(temp):
                os.unlink(temp)
    return public_path, secret_path
