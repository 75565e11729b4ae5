"""Atomic file writes: the one helper behind every file yoda writes (images, checkpoints, model files).

    atomic_write(path, write)   write(tmp) fills a new temporary file ``tmp`` in path's folder, then
                                os.replace(tmp, path): a reader (or a crash) sees the old file or the new
                                one, never a half-written one; on any error the temporary file is removed.
                                The new file is fsynced before the rename and the folder after it, so that
                                a power loss also leaves the old file or the new one. A symbolic link is
                                written through, as open() would: its target is replaced and the link stays
                                (not another user's link in a shared /tmp-like folder, as open() refuses it).
    atomic_write_text(path, s)  the same for a text file (UTF-8; newline as open()'s)
    atomic_write_bytes(path, b) the same for bytes (what torch.save and safetensors serialise: a full disk is then
                                an OSError naming path, not a serialiser's error of its own)
    append_whole(path, b)       append and fsync, or cut the file back: a log never ends in half a row
    check_writable(path)        before any long work: path is not a folder, its folder exists and a file can
                                be created there (tried, then removed); errors name ``path``.
    made_dirs / remove_empty    mkdir -p that remembers what it created, and the cleanup of those folders that
                                are still empty after a failure (no empty output folder is left behind);
    made_folder(folder)         the two around a block
    folder_lock(folder, what)   exclusive use of a folder by one process (a training run, a data build): a second
                                process is refused at once, naming ``what``.
    output_claim(path)          a claim on one output file while it is made (`yoda upscale --skip-existing`): a
                                second process is told the file is taken and leaves it to the first.
    unportable(name)            why a name a config or option gives cannot be one plain file or folder name on
                                Linux, macOS and Windows alike (None where it can)

The temporary file is created with os.open(..., 0o666), so the kernel applies the process umask (and a
folder's default ACL) exactly as for any new file: a model saved with umask 022 is 0644, not the 0600 that
tempfile.mkstemp would give. A file that is overwritten keeps its own mode (a private 0600 checkpoint stays
private), as open(path, "w") keeps it. Some writers replace the file they are given by their own temporary file
(safetensors' save_file does, and its file is 0600), so the mode the kernel chose at creation is restored
before the rename. No os.umask() call is needed, which matters because reading the umask with os.umask(0)
+ restore briefly changes it for every thread of the process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import UserError
from .names import NAME_MAX

PathLike = Union[str, "os.PathLike[str]"]

_TRIES = 100  # O_EXCL name collisions with 48 random bits are not expected; bound the loop anyway


_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10))}


def unportable(name: str) -> Optional[str]:
    """Why ``name`` cannot be one plain file or folder name on every system (None where it can): empty, "." or
    "..", a folder part, a character Windows refuses (``<>:"/\\|?*`` and control characters; ``C:x`` is
    another drive's folder there and ``x:y`` a hidden stream of the file x), a trailing dot or space (which
    Windows drops), or a device name (CON, NUL, COM1, ... with any extension: a write there goes to the device).
    One rule on every system, so that a config written on one runs on the others."""
    if not name.strip() or name in (".", ".."):
        return "not a name"
    if any(sep in name for sep in ("/", "\\", os.sep)):
        return "a folder part"
    bad = sorted({c for c in name if c in '<>:"|?*' or ord(c) < 32})
    if bad:
        return f"characters Windows refuses: {' '.join(map(repr, bad))}"
    if name[-1] in ". ":
        return "a name ending in a dot or a space (Windows drops it)"
    if len(os.fsencode(name)) > NAME_MAX:
        return f"longer than {NAME_MAX} bytes, the most a file system takes"
    if name.split(".")[0].strip().upper() in _WINDOWS_DEVICES:
        return f"a device name on Windows ({name.split('.')[0]})"
    return None


def _create_temp(folder: str, name: str) -> tuple[str, int]:
    """(a new empty file's path in ``folder``, the permission bits the kernel gave it). Its name is
    .NAME.RANDOM.tmp, NAME cut short so that a name that fits the file system gives a temporary name that fits."""
    stem = _temp_stem(name)
    for _ in range(_TRIES):
        tmp = os.path.join(folder, f".{stem}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            try:
                mode = os.fstat(fd).st_mode & 0o7777
            finally:
                os.close(fd)
        except BaseException:  # (a Ctrl-C here left an empty .NAME.RANDOM.tmp behind)
            os.unlink(tmp)
            raise
        return tmp, mode
    raise FileExistsError(f"could not create a temporary file next to {os.path.join(folder, name)}")


def _temp_stem(name: str) -> str:
    """The NAME of _create_temp's .NAME.RANDOM.tmp for a file called ``name``."""
    stem = name
    while len(os.fsencode(f".{stem}.{'0' * 12}.tmp")) > NAME_MAX:
        stem = stem[:-1]
    return stem


# A temporary file of atomic_write untouched this long belongs to a process that was killed while writing (a
# write lasts seconds): remove_stale_temps takes it away
STALE_TEMP_S = 3600


def remove_stale_temps(paths, max_age: float = STALE_TEMP_S) -> int:
    """Remove the temporary files that atomic_write left for any of ``paths`` in processes killed while writing
    them (SIGKILL, a power loss): .NAME.RANDOM.tmp untouched for ``max_age`` seconds (0 where the caller holds the
    folder's lock, so that no live writer can own one: a requeued training job resumes within minutes of the kill),
    and the claim files of output_claim that no process holds (a run with --skip-existing killed so). One listing
    per folder. Returns how many went."""
    import re
    import time

    stems: dict = {}
    claims: dict = {}
    for p in paths:
        folder, name = os.path.split(os.path.abspath(os.fspath(p)))
        stems.setdefault(folder, set()).add(_temp_stem(name))
        claims.setdefault(folder, set()).add(os.path.basename(claim_path(p)))
    gone, now = 0, time.time()
    for folder, names in stems.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = re.fullmatch(r"\.(.+)\.[0-9a-f]{12}\.tmp", e.name, re.DOTALL)
            try:
                if m and m.group(1) in names and e.is_file(follow_symlinks=False) and \
                        now - e.stat(follow_symlinks=False).st_mtime >= max_age:
                    os.unlink(e.path)
                    gone += 1
                elif e.name in claims[folder] and (fd := _take_claim(e.path)) is not None and fd >= 0:
                    try:  # held by no process (a link or another user's file: not taken, not counted)
                        os.unlink(e.path)
                        gone += 1
                    finally:
                        os.close(fd)
            except OSError:
                continue
    return gone


def _target(p: Path) -> Path:
    """The file that writing ``p`` changes: p itself, or the file a symbolic link p points to (which need not
    exist yet), so that a link is written through and not replaced by a plain file. As open() does under Linux's
    fs.protected_symlinks, a link in a world-writable sticky folder (/tmp) is followed only if it belongs to this
    user or to the folder's owner: another user's link planted at an output name there is a PermissionError (the
    rename would otherwise replace whatever file it points to). A loop of links is an OSError (ELOOP)."""
    cur = Path(os.path.realpath(os.path.dirname(p) or "."), os.path.basename(p))  # "L/../x" as open() reads it
    for _ in range(40):  # the kernel's limit on links followed
        if not os.path.islink(cur):
            return cur
        _check_link_owner(cur)
        nxt = os.path.join(os.path.dirname(os.path.abspath(cur)), os.readlink(cur))
        cur = Path(os.path.realpath(os.path.dirname(nxt)), os.path.basename(nxt))
    raise OSError(errno.ELOOP, f"cannot write {p}: too many levels of symbolic links")


def _check_link_owner(link: Path) -> None:
    if not hasattr(os, "geteuid"):  # no owners to compare (Windows)
        return
    st, folder = os.lstat(link), os.path.dirname(os.path.abspath(link))
    d = os.stat(folder)
    if d.st_mode & stat.S_ISVTX and d.st_mode & stat.S_IWOTH and st.st_uid not in (os.geteuid(), d.st_uid):
        raise PermissionError(errno.EACCES, f"cannot write through {link}: a symbolic link of another user "
                              f"(uid {st.st_uid}) in the shared folder {folder}; the kernel refuses to follow such "
                              "links (fs.protected_symlinks), and so does yoda", str(link))


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes the whole content to the (empty, existing) file named
    ``tmp`` in the same folder as ``path``, which then replaces ``path`` (a link's target, for a link).
    Returns ``Path(path)``.

    The folder must exist (FileNotFoundError otherwise). If ``write`` raises, ``path`` is untouched and the
    temporary file is removed before the exception propagates."""
    p = Path(os.fspath(path))
    target = _target(p)
    folder = os.path.dirname(os.path.abspath(target))
    _not_special(target, f"cannot write {p}: it")
    _not_read_only(target, f"cannot write {p}")
    try:
        tmp, mode = _create_temp(folder, target.name)
    except OSError as e:
        raise _named(e, p) from None
    try:
        if os.path.exists(target):  # an existing file keeps its mode, as open(path, "w") keeps it
            st = os.stat(target)
            mode = st.st_mode & 0o7777
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid() and os.access(target, os.W_OK):
                mode |= stat.S_IWUSR  # another's file this user may write (an ACL): its new owner can write it again
        write(tmp)
        _fsync(tmp)  # the data is on disk before the name points at it (before a mode that may forbid writing)
        if os.stat(tmp).st_mode & 0o7777 != mode:  # the writer made a new file (safetensors: 0600)
            os.chmod(tmp, mode)
        _replace(tmp, target)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or tmp in (e.filename, e.filename2)):
            raise _named(e, p) from None  # e.g. a full disk: name the user's file, not the temporary one
        raise
    _fsync(folder)  # and the rename itself (best effort: not every file system syncs a folder)
    return p


# Windows refuses to replace a file another process holds open (an image viewer, a virus scan of the new file): tried
# again there, after 50 ms doubling to 3.2 s (6.35 s in all), as pip does
_REPLACE_TRIES = 8 if os.name == "nt" else 1


def _replace(src: str, dst) -> None:
    for i in range(_REPLACE_TRIES):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if i + 1 == _REPLACE_TRIES:
                raise
            time.sleep(0.05 * 2 ** i)


def _fsync(path: str) -> None:
    """os.fsync of a file or folder by name (a folder that cannot be opened or synced is skipped)."""
    try:  # a file for writing (Windows' fsync needs it), a folder for reading (POSIX allows nothing else)
        fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDWR)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: PathLike, text: str, newline: Optional[str] = None) -> Path:
    """Write the string ``text`` to ``path`` atomically (UTF-8; a path's undecodable bytes, Python's surrogates, as
    they were: TRAINING.md of an --out named in Latin-1 failed at the end of the run), through :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline=newline) as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: PathLike, data) -> Path:
    """Write the bytes ``data`` to ``path`` atomically, through :func:`atomic_write`. For serialisers that wrap a
    failed write in their own exception (torch.save's RuntimeError, safetensors' SafetensorError): serialised to
    bytes first and written here, a full disk is an OSError naming ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def append_whole(path: PathLike, data: bytes) -> None:
    """Append ``data`` to the existing file ``path`` and fsync it, or nothing: a write that fails (a full disk)
    is cut back off, so that the file never ends in part of a record, and raised as an OSError naming ``path``."""
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))  # Windows: no \r\r\n
    try:
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, end)
            raise _named(e, Path(os.fspath(path))) from None
    finally:
        os.close(fd)


def _named(e: OSError, path: Union[str, Path]) -> OSError:
    """The same OSError, naming the user's ``path`` instead of a temporary file."""
    if e.errno is None:
        return e
    named = type(e)(e.errno, f"cannot write {path}: {e.strerror}")
    named.reason = getattr(e, "reason", e.strerror)  # for renamed
    return named


def renamed(e: OSError, shown: str) -> OSError:
    """``e``, an OSError of a write (perhaps _named after a file in a staging folder, which is gone when the
    message is read), as "cannot write ``shown``: the reason"."""
    if e.errno is None:
        return e
    return _named(OSError(e.errno, getattr(e, "reason", e.strerror)), shown)


def _probe(folder: str, name: str, named: str) -> None:
    """Create and remove a temporary file in ``folder`` (which also catches read-only file systems); a failure is
    the same OSError type, its message starting with ``named`` (the argument and its value)."""
    try:
        tmp, _ = _create_temp(folder, name)
    except OSError as e:
        raise type(e)(f"{named}: cannot write in {folder}: {e.strerror or e}") from None
    os.unlink(tmp)


def check_name_length(path: PathLike, what: str = "output") -> None:
    """OSError (ENAMETOOLONG) naming ``path`` when its file name is longer than a file system takes: checked before
    any long work, also where the folder is yet to be made (the write failed after sampling, without the
    argument's name)."""
    n = len(os.fsencode(Path(os.fspath(path)).name))
    if n > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, f"{what} {path}: its file name is {n} bytes long, more than the "
                                          f"{NAME_MAX} a file system takes; give a shorter one")


def check_writable(path: PathLike, what: str = "output", kept: bool = False) -> Path:
    """Check, before any long work, that ``path`` can be written: it is not a folder, its folder exists and is
    a folder, and a file can be created there (a temporary file is created and removed, which also catches
    read-only file systems), and an existing file there is not read-only, unless ``kept`` (--skip-existing: an
    existing file is kept, never written). Errors name ``path`` (``what`` says which argument it is):
    IsADirectoryError, FileNotFoundError, NotADirectoryError, PermissionError / OSError. Returns ``Path(path)``."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a folder; give a file name")
    check_name_length(p, what)
    target = _target(p)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{what} {p}: the folder {folder} does not exist (create it first, mkdir -p)")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what} {p}: {folder} is not a folder")
    _probe(folder, p.name, f"{what} {p}")
    _not_special(target, f"{what} {p}")
    if not kept:
        _not_read_only(target, f"{what} {p}")
    return p


def _not_special(target: Path, said: str) -> None:
    """OSError when ``target`` exists and is neither a regular file nor a folder (a device such as /dev/null, a
    FIFO, a socket): outputs are written whole and renamed over the old file, which would put a plain file in its
    place (as root, /dev/null itself was replaced)."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(f"{said} is not a regular file (a device or a pipe): yoda writes its outputs whole and renames "
                      f"them into place, which would replace it; give a file name")


def _not_read_only(target: Path, said: str) -> None:
    """PermissionError when ``target`` exists and this user may not write it: atomic_write could replace it (the
    folder is writable), and open(path, "w") would refuse it; a read-only file is one somebody protected."""
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, f"{said}: the file exists and is read-only (chmod u+w it to replace it, "
                              f"or write another name)")


def check_folder_writable(folder: PathLike, what: str = "output") -> None:
    """Check, before any long work, that files can be written in ``folder``: an existing folder where a file can be
    created, or a missing one (made_dirs makes it later) whose nearest existing ancestor is a folder where a file
    can be created. Errors name ``folder`` (``what``: which argument): NotADirectoryError, check_writable's."""
    p = Path(os.fspath(folder)).absolute()
    up = p
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        raise NotADirectoryError(f"{what} {folder}: cannot create the folder, {up} is a file")
    # a file of its own in up: another process (a torchrun rank) may be making the folder right now
    _probe(str(up), "probe", f"{what} {folder}")


def made_dirs(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; returns the folders it created, deepest first (for cleanup)."""
    made = []
    up = folder.absolute()
    while not up.exists():
        if up.is_symlink():  # mkdir's bare "File exists" named neither the link nor why
            raise FileNotFoundError(errno.ENOENT, f"{folder}: {up} is a symbolic link to {os.readlink(up)}, which "
                                                  f"does not exist")
        made.append(up)
        up = up.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(made: list[Path]) -> None:
    """Remove the folders of made_dirs that are still empty (deepest first), e.g. after a failure."""
    for d in made:
        try:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        except FileNotFoundError:  # another process (a torchrun rank) removed it first
            continue


@contextlib.contextmanager
def made_folder(folder: Optional[PathLike]):
    """mkdir -p ``folder`` (None: nothing) for the block; at its end, however it ends, the folders it made are
    removed if they are still empty (every input failing, a full disk, an interrupt leave no empty folder)."""
    made = made_dirs(Path(folder)) if folder is not None else []
    try:
        yield
    finally:
        remove_empty(made)


def _flock_now(fd: int) -> Optional[bool]:
    """An exclusive flock on ``fd`` without waiting: True when taken, False when another process holds it, None
    where there is no flock (Windows, some NFS): then nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str):
    """Hold ``folder`` (which must exist) for this process while the block runs: an exclusive flock on the folder
    itself, so no lock file is left and a killed process releases it. A second process (a job launched twice)
    gets a FolderInUse naming ``what`` at once, instead of both writing the same files. Where flock is missing
    (Windows) or the file system refuses it (some NFS), nothing is locked."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        if _flock_now(fd) is False:
            raise FolderInUse(f"{what} {os.fspath(folder)} is in use by another yoda process; wait for it to end, "
                              "or use another folder")
        yield
    finally:
        os.close(fd)


CLAIM_SUFFIX = ".yoda-claim"


def claim_path(path: PathLike) -> str:
    """The hidden claim file of output_claim: ``.NAME.yoda-claim`` next to ``path`` (a hash of NAME where that name
    would be too long for the file system)."""
    folder, name = os.path.split(os.fspath(path))
    claim = "." + name + CLAIM_SUFFIX
    if len(os.fsencode(claim)) > NAME_MAX:
        claim = "." + hashlib.sha256(os.fsencode(name)).hexdigest()[:40] + CLAIM_SUFFIX
    return os.path.join(folder, claim)


def _take_claim(claim: str) -> Optional[int]:
    """The open, flocked claim file (its fd), -1 when another process holds it, None when nothing can be claimed
    here (no flock, a file that cannot be made, a link in its place). A lock taken on a file that its holder
    unlinked meanwhile is on no claim at all: then the file at the path is tried again."""
    for _ in range(8):
        try:
            fd = os.open(claim, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)  # never a link
        except OSError:
            return None
        locked = _flock_now(fd)
        if not locked:
            os.close(fd)
            if locked is None:  # nothing locks here (Windows, some NFS): no claim file left beside each output
                with contextlib.suppress(OSError):
                    os.unlink(claim)
            return -1 if locked is False else None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(claim, follow_symlinks=False))
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder finished (unlinked it) between our open and our lock
    return None


@contextlib.contextmanager
def output_claim(path: PathLike):
    """Yields False when another process is making the output ``path`` (it holds an flock on the claim file
    claim_path(path)), else True, holding the claim until the block ends; the claim file is removed then. A killed
    process releases its claim (a stale file is taken over by the next run). The caller must write ``path`` inside
    the block and look for it again after a True: the claim may come just after another process made the file.
    Where nothing can be claimed (no flock, as on Windows) it yields True."""
    claim = claim_path(path)
    fd = _take_claim(claim)
    if fd is None or fd < 0:
        yield fd is None
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(claim)  # while still locked: a process that opened this file finds it gone and tries anew
        os.close(fd)


class FolderInUse(UserError):
    """Another process holds the folder (folder_lock)."""


def file_sha256(path: str) -> str:
    """The hex SHA-256 of the file ``path``, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
