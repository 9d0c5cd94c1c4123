"""Reading and writing key files safely: one implementation for every kind of key.

Written 0600 from the first byte (``O_CREAT | O_EXCL``), synced, then moved into place with
a hard link (which fails if the target exists, so a key is never clobbered by a race) or, when
asked, ``os.replace``; read through ``O_NOFOLLOW`` and checked with ``fstat`` on the very file
descriptor that is read, so a symlink or a swapped file is refused rather than trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from contactmatch.errors import InvalidKey

__all__ = ["read_secret_file", "write_secret_file"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_SECRET_FILE = 64 * 1024


def write_secret_file(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically and durably.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: the directory is not writable.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} already exists")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(target.parent)


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a key file written by :func:`write_secret_file`.

    Raises:
        InvalidKey: a symbolic link, not a regular file, accessible by group or others, or
            too large to be a key file.
        FileNotFoundError: no such file.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | _O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidKey(f"{target} is a symbolic link; point to the key file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidKey(f"{target} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if os.name == "posix" and st.st_mode & 0o077:
            raise InvalidKey(
                f"{target} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {target}"
            )
        raw = fh.read(MAX_SECRET_FILE + 1)
    if len(raw) > MAX_SECRET_FILE:
        raise InvalidKey(f"{target} is too large to be a key file")
    return raw


def _fsync_dir(directory: Path) -> None:
    # Make the rename durable; not possible (nor needed) on every platform.
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
