"""Private files: directories only this user may enter, files only this user may read, written atomically.

Everything commlib writes (rendezvous records holding side-channel tokens,
calibrations, recorded runs, monitor dumps) goes through :func:`write_atomic`:
a temporary name made by :func:`tempfile.mkstemp` in the target's own
directory (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600, so a planted file
or symlink at that name is never opened), the data, ``fsync``, then
``os.replace`` onto the target (a rename replaces a symlink planted at the
target itself rather than following it). A reader sees the old file or the
new one, never half of one.

:func:`private_dir` makes or checks a directory chain: every level it is
asked to own is created 0700 or, when it exists, checked with ``lstat``
(a directory, not a symlink, owned by this user, no group or other
permission bits; a directory of this user's with looser bits is first made
0700); anything else raises :class:`UnsafePathError` naming the path and
the problem, and nothing is written there. :func:`read_private`
reads a small file without following a symlink and only when this user owns
it, up to a size limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["UnsafePathError", "check_private_dir", "ensure_dir", "private_dir", "read_private", "write_atomic"]


class UnsafePathError(PermissionError):
    """A directory or file that another user could have planted or could change: commlib will not use it."""


def _problem(info: os.stat_result, private: bool) -> str | None:
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    bits = stat.S_IMODE(info.st_mode)
    if private and bits & 0o077:
        return f"has mode {bits:04o}; it must give no access to group or others (0700)"
    if not private and bits & 0o022:
        return f"has mode {bits:04o}; group or others may write in it"
    return None


def check_private_dir(path: Path | str, what: str = "directory", *, private: bool = True) -> Path:
    """``path`` if ``lstat`` shows a real directory of this user's with no group/other bits, else raise.

    ``private=False`` only forbids group and other *write* bits (a directory
    this user keeps, such as a cache, that others may read).
    """
    path = Path(path)
    info = os.lstat(path)
    problem = _problem(info, private)
    if problem is not None:
        raise UnsafePathError(f"{what} {path} {problem}: refusing to use it")
    return path


def private_dir(path: Path | str, levels: int = 1, what: str = "directory") -> Path:
    """Create (mode 0700) or check (made 0700 when this user's) the last ``levels`` components of ``path``.

    Levels above those (``/tmp``, ``$XDG_RUNTIME_DIR``, a shared file system)
    are taken as they are, and made 0700 where missing. Each owned level
    that exists must pass :func:`check_private_dir`; one that does not is made
    with ``mkdir(0o700)`` and checked again (so a race with another user who
    plants it first is caught, not followed).
    """
    path = Path(path)
    chain = [path, *path.parents][:levels][::-1]
    base = ensure_dir(chain[0].parent, what, check=False)
    if not base.is_dir():
        raise FileNotFoundError(f"{what}: {base} is not a directory")
    for level in chain:
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            _tighten(level)
        check_private_dir(level, what)
    return path


def _tighten(path: Path) -> None:
    """Make a directory of this user's 0700 (an older commlib made them 0755); others' are left to be refused.

    The mode is changed through a descriptor opened without following a
    symlink, after checking that it is this user's directory, so a path
    swapped under us is never changed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # a symlink or not a directory: check_private_dir says which
    try:
        info = os.fstat(fd)
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def ensure_dir(path: Path | str, what: str = "directory", *, check: bool = True) -> Path:
    """A directory to write in: missing levels are made 0700; with ``check`` the last one is checked.

    Checked, the last level must be this user's and writable by nobody else
    (:func:`check_private_dir` with ``private=False``); a symlink there is
    refused. Levels above are taken as they are, and so is an existing last
    level without ``check`` (a place the user named, such as a project
    directory: :func:`write_atomic` is safe in it all the same).
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(level, 0o700)
    return check_private_dir(path, what, private=False) if check else path


def write_atomic(path: Path | str, data: bytes, mode: int = 0o600) -> Path:
    """Replace ``path`` with ``data``: mkstemp in its directory, write, fsync, ``os.replace``; mode ``mode``.

    The directory must exist. On any failure the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    return path


def read_private(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file this user owns, at most ``limit`` of them; no symlink is followed.

    Raises ``OSError`` (:class:`UnsafePathError` for a file of another user,
    a symlink or something not a regular file; ``ValueError`` for a file over
    ``limit`` bytes).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise UnsafePathError(f"{path} is a symbolic link: refusing to read it") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{path} is not a regular file: refusing to read it")
        if info.st_uid != os.getuid():
            raise UnsafePathError(f"{path} is owned by uid {info.st_uid}, not by this user: refusing to read it")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} holds more than {limit} bytes")
    return data
