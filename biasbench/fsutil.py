"""Files that survive crashes: atomic writes, a writability probe, and folder locks.

`atomic_write` writes a temporary file `.NAME.XXXX.tmp` in the same folder, fsyncs it, then
renames it over NAME, so a crash, a kill or Ctrl-C leaves the previous file intact, never half
of one. A kill -9 in the middle leaves the temporary file behind: `remove_orphans` deletes them
on the next start. Any OS error (read-only folder, full disk) becomes one `UserError` line
naming the path and the cause.

`hold_lock` is an OS-level lock (`fcntl.flock`) on a lock file that records the holder's PID:
the kernel releases it when the process ends, however it ends, so a crash never leaves it stuck
(the file a killed holder leaves behind holds a PID but no lock, and is taken over).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from biasbench.errors import UserError

TMP_SUFFIX = ".tmp"


def ensure_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder `{path}` is a file; choose another folder with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise UserError(f"cannot create output folder `{path}`: a parent is a file ({e.filename})") from None
    except OSError as e:
        raise UserError(f"cannot create output folder `{path}`: {os_reason(e)}") from None
    return path


class WriteError(UserError):
    """An OS error while writing `path` (read-only folder, full disk, a parent that is a file):
    one `error:` line; the file's previous version, if any, is intact (temporary file, then
    rename). On a full disk the fix is space, whatever `fix` says about permissions."""

    def __init__(self, path: Path, reason: str, fix: str = ""):
        kept = "the previous file is intact" if Path(path).exists() else "nothing was written there"
        if "(ENOSPC)" in reason or "(EDQUOT)" in reason:
            fix = "free some space there or choose another --out"
        super().__init__(f"cannot write `{path}`: {reason}; {kept}" + (f"; {fix}" if fix else ""))
        self.path, self.reason, self.fix = path, reason, fix


@contextlib.contextmanager
def writing(path: Path, fix: str) -> Iterator[None]:
    """Writes of `path` under this context that fail (an OSError, or a `WriteError` from
    `atomic_write`) end in one line that also says how to fix it (`fix`)."""
    try:
        yield
    except WriteError as e:
        raise WriteError(e.path, e.reason, fix) from None
    except OSError as e:
        raise WriteError(path, os_reason(e), fix) from None


def os_reason(e: OSError) -> str:
    """'Permission denied (EACCES)': the cause of an OS error, without Python's repr."""
    name = errno.errorcode.get(e.errno or 0)
    return f"{e.strerror or e}" + (f" ({name})" if name else "")


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path) -> None:
    """Create and remove a probe file in `folder` (or its nearest existing parent, when it does
    not exist yet): a read-only or full output folder is refused before any training."""
    where = nearest_existing(folder)
    if not where.is_dir():
        raise UserError(f"output folder `{folder}` is below `{where}`, which is a file; choose another --out")
    try:
        _write_probe(where)
    except OSError as e:
        raise UserError(f"cannot write in `{where}`: {os_reason(e)}; choose another --out or make it writable") \
            from None


def _write_probe(folder: Path) -> None:
    """Create and remove a temporary file in `folder`: OSError when it takes no new file."""
    fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TMP_SUFFIX, dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Path, option: str) -> None:
    """An output file an option names (`--json OUT`), checked before any work: not a folder, not
    below a file, in a folder that takes a new file (a probe), so a long training never ends in
    a refusal to write its last file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} `{path}` is a folder; give a file name")
    where = nearest_existing(path.parent)
    if not where.is_dir():
        raise UserError(f"{option} `{path}` is below `{where}`, which is a file; give another path")
    try:
        _write_probe(where)
    except OSError as e:
        raise UserError(f"{option} `{path}`: cannot write in `{where}`: {os_reason(e)}; give a path in a "
                        "writable folder") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], also: Iterable[Path] = (),
                 durable: bool = True) -> None:
    """Write `path` atomically. `also`: more names for the same content (hard links where the
    file system allows, copies otherwise), each replaced atomically *before* `path`, so a kill
    between the two renames leaves `also` newer than `path`, never older. `durable=False` skips
    the fsync (still all or nothing for a killed process; for files rewritten often from data
    kept elsewhere, such as metrics.csv, where an fsync per epoch is a visible cost)."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are for sharing
        for other in also:
            _replace_with_copy(Path(tmp), Path(other))
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, os_reason(e)) from None
    except RuntimeError as e:  # torch.save's zip writer wraps the OS error (a full disk) in its own
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise WriteError(path, os_reason(cause)) from None
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """Where to write a folder of files: a new `out` is written all or nothing (into a hidden
    sibling, renamed to `out` once every file is there, removed if a write fails); an existing
    `out` is written in place, file by file atomically (replacing the whole folder could delete
    files of the user's)."""
    import shutil

    out = Path(out)
    if out.exists():
        yield out
        return
    parent = ensure_dir(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=parent))
    except OSError as e:
        raise WriteError(out, os_reason(e)) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        os.rename(tmp, out)
    except WriteError as e:  # name the file as the user will look for it (the draft goes below)
        inside = Path(e.path).relative_to(tmp) if Path(e.path).is_relative_to(tmp) else None
        raise WriteError(out / inside if inside else Path(e.path), e.reason, e.fix) from None
    except OSError as e:
        raise WriteError(out, os_reason(e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_with_copy(src: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FAT file systems): copy
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda f: f.write(text.encode()), durable=durable)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def remove_orphans(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files `atomic_write` leaves when killed mid-write (`.NAME.*.tmp` for
    each of `names`, and write probes). Call it holding the folder's lock: nobody else writes."""
    patterns = [f".{name}.*{TMP_SUFFIX}" for name in names] + [f".write-probe.*{TMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for p in Path(folder).glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# Folder locks.
# ---------------------------------------------------------------------------------------------


def lock_holder(lock_file: Path) -> int | None:
    """The PID holding `lock_file`, or None when nobody holds it (a PID left in the file by a
    process that died does not count: the lock died with it)."""
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable: the write probe or the lock itself will say why
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    finally:
        os.close(fd)  # closing drops our probe lock too
    return None


def refuse_if_locked(lock_file: Path, what: str) -> None:
    """One line naming the holder when another process holds `lock_file`."""
    pid = lock_holder(lock_file)
    if pid is not None:
        raise UserError(_in_use(what, pid))


def _in_use(what: str, pid: int | None) -> str:
    return (f"{what} is in use by another biasbench process" + (f" (PID {pid})" if pid and pid > 0 else "")
            + "; wait for it to end, or write elsewhere with --out")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


@contextlib.contextmanager
def hold_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (creating it) with this PID written in it; refuse in
    one line naming the holder when another process has it. `what` names the locked thing. The
    file is removed on release (a crash leaves it, unlocked: harmless)."""
    import fcntl

    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise WriteError(lock_file, os_reason(e), "choose another --out or make it writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise UserError(_in_use(what, pid)) from None
        if _same_file(fd, lock_file):
            break
        os.close(fd)  # the holder removed the file between our open and our lock: try again
    write_lock_pid(fd, lock_file)  # on failure it has removed and closed the file
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # still holding the lock, so nobody can hold this file now
        os.close(fd)


def write_lock_pid(fd: int, lock_file: Path) -> None:
    """Write this PID into a lock file just locked through `fd`; on an OS error (a full disk,
    ENOSPC at the first page) remove the file, still locked, close it and say so in one line."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
        os.close(fd)
        raise WriteError(lock_file, os_reason(e), "choose another --out") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
