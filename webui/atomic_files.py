"""Crash-safe file writes: write a temp file in the target folder, fsync it, then rename it into place.

A reader never sees a half-written file, and a failed write leaves neither a partial file nor a temp file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike[str]


def temp_path_for(path: PathLike) -> Path:
    """Create an empty, uniquely named hidden temp file next to `path` and return its path.

    The temp name keeps the real suffix (tools that pick a format from the extension still work),
    starts with a dot (folder scans that number files ignore it) and is created with mode 0o666 so the
    process umask applies, exactly as for a plain open().
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: PathLike) -> None:
    """Persist a rename on POSIX; directories cannot be opened for fsync on Windows, so skip there."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_quietly(path: PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path`, on error it is deleted.

    The caller writes the temp file however it likes (open, PIL's save, torch.save ...).
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


# Errors from os.link that mean "this filesystem cannot hard-link", not "the name is taken".
_NO_LINK_ERRNOS = {errno.EPERM, errno.EACCES, errno.EXDEV, errno.EMLINK, getattr(errno, "ENOTSUP", -1),
                   getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOSYS", -1)}


def publish_exclusive(tmp: PathLike, dest: PathLike) -> None:
    """Move the finished file `tmp` to `dest` without ever overwriting; FileExistsError if `dest` exists.

    A hard link is atomic and fails if the name exists, even against other processes. Filesystems without
    hard links fall back to check-then-rename, which is only race-free among callers sharing a lock.
    `tmp` is consumed on success and left in place on failure (the caller owns its cleanup).
    """
    tmp, dest = Path(tmp), Path(dest)
    fsync_file(tmp)
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(dest)) from None
        os.replace(tmp, dest)
    else:
        remove_quietly(tmp)
    fsync_dir(dest.parent)
