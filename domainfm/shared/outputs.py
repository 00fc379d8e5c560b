"""Output folders: one writer per output, and nothing deleted that domainfm did not write.

Every command that writes an output folder or file (``--out``) goes through this module:

* **One writer.** :class:`OutputLock` holds an advisory ``fcntl.flock`` on ``.NAME.domainfm-lock`` beside
  the output (a sibling, so it survives the output being replaced by a rename). The lock file records the
  holder (pid, host, command line, start time) as JSON. A second writer fails at once with an
  :class:`OutputError` (exit status 2) naming the holder. The kernel releases a flock when its process
  dies, so a lock left by a killed run is taken over by the next one; the stale record is replaced.
* **Never delete what is not ours.** Outputs are built under a name unique to the run
  (``OUT.partial-<pid>-<hex>``, :func:`partial_path`) and renamed into place (:func:`replace_output`).
  ``--overwrite`` replaces only an output that domainfm wrote, recognised by its own marker (the
  ``.domainfm.json`` file of :func:`write_marker`, or a store's own attributes); a fixed-name sibling
  such as ``OUT.partial`` or ``OUT.old`` is never touched, and leftovers of dead runs are removed only
  when they carry domainfm's marker (:func:`remove_leftovers`).
* **Run folders** (:func:`run_folder`) of training commands may be new, empty, or a folder an earlier
  domainfm run wrote; files of anyone else are refused rather than overwritten.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from domainfm.shared.errors import DomainfmError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the recorded pid is checked instead
    fcntl = None  # type: ignore[assignment]

MARKER = ".domainfm.json"
RUN_KIND = "run"


class OutputError(DomainfmError):
    """An output that is in use by another run, or that holds something domainfm did not write."""


def lock_path(out: str | Path) -> Path:
    """The lock file of ``out``: ``.NAME.domainfm-lock`` in the same folder."""
    out = Path(out)
    return out.parent / f".{out.name}.domainfm-lock"


def _command_line() -> str:
    from domainfm.shared.config import current_run

    record = current_run()
    if record is not None:
        return "domainfm " + " ".join(record.argv)
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not recorded itself yet)"
    pid, host = holder.get("pid"), holder.get("host")
    text = f"pid {pid} on {host}, started {holder.get('started')}: {holder.get('command')!r}"
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        text += " (that process has ended; a child process of it may still hold the lock)"
    return text


def read_holder(path: Path) -> dict[str, Any]:
    """The holder record of a lock file (empty when missing or unreadable)."""
    try:
        value = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class OutputLock:
    """An advisory, exclusive lock on one output (see the module docstring); a context manager.

    Args:
        out: The output folder or file.
        what: What is written there, for messages (``"tile store"``, ``"bundle"``, ...).
    """

    def __init__(self, out: str | Path, what: str = "output") -> None:
        self.out = Path(out)
        self.what = what
        self.path = lock_path(self.out)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Takes the lock, or raises :class:`OutputError` naming its holder; takes over a dead run's lock."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the holder may unlink the file between our open and our lock: then retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    holder = read_holder(self.path)
                    raise OutputError(
                        f"{self.out} is being written by another domainfm run ({_describe(holder)}); wait for it "
                        f"to finish or stop it, or choose another --out (lock file: {self.path})"
                    )
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self._fd = fd
                self._record()
                return self
            os.close(fd)
        raise OutputError(f"could not lock {self.out} (lock file {self.path} keeps changing); try again")

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as error:  # a filesystem without flock: fall back on the recorded pid
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        holder = read_holder(self.path)
        pid = holder.get("pid")
        same_host = holder.get("host") == socket.gethostname()
        return not holder or (same_host and isinstance(pid, int) and (pid == os.getpid() or not pid_alive(pid)))

    def _record(self) -> None:
        assert self._fd is not None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "output": str(self.out.resolve()),
            "what": self.what,
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record, indent=1) + "\n").encode(), 0)

    def release(self) -> None:
        """Removes the lock file and releases the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.path.unlink()
        finally:
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_output(out: str | Path, what: str = "output") -> OutputLock:
    """The :class:`OutputLock` of ``out``; use it as a context manager around the whole write."""
    return OutputLock(out, what)


def write_marker(folder: str | Path, kind: str, **extra: Any) -> Path:
    """Writes ``folder/.domainfm.json``: domainfm wrote this folder as a ``kind`` output."""
    from domainfm import __version__

    path = Path(folder) / MARKER
    record = {"kind": kind, "domainfm": __version__, "command": _command_line(), "pid": os.getpid(), **extra}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker record of ``folder``, or ``None`` when it has none (or it is not domainfm's)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    record = read_holder(path)
    return record if isinstance(record.get("kind"), str) else None


def has_marker(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` carries domainfm's marker for a ``kind`` output."""
    record = read_marker(folder)
    return record is not None and record["kind"] == kind


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def check_output(
    out: str | Path,
    what: str,
    overwrite: bool,
    ours: Callable[[Path], bool],
    error: type[DomainfmError] = OutputError,
) -> bool:
    """Checks that ``out`` may be written; returns whether an existing output will be replaced.

    A missing ``out`` (or an empty folder) is free. An existing one needs ``overwrite`` and must be a
    ``what`` that domainfm wrote (``ours(out)``); anything else is refused with the fix (an ``error``),
    never deleted.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return True
    if not ours(out):
        kind = "folder" if out.is_dir() else "file"
        held = f" (it holds {_listing(out)})" if out.is_dir() else ""
        raise error(
            f"{out} is a {kind} that domainfm did not write as a {what}{held}; domainfm never deletes or writes "
            f"into it, even with --overwrite: choose another --out, or move it away yourself"
        )
    if not overwrite:
        raise error(f"{out} holds a {what} already; pass --overwrite to replace it, or choose another --out")
    return True


def partial_path(out: str | Path, kind: str = "partial") -> Path:
    """A sibling of ``out`` unique to this run: ``OUT.partial-<pid>-<hex>`` (never a name a user picks)."""
    out = Path(out)
    return out.with_name(f"{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def leftovers(out: str | Path, kind: str = "partial") -> list[Path]:
    """Siblings of ``out`` named as :func:`partial_path` names them (runs that ended before renaming)."""
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\." + re.escape(kind) + r"-\d+-[0-9a-f]{8}")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))


def remove_leftovers(
    out: str | Path, ours: Callable[[Path], bool], kinds: tuple[str, ...] = ("partial", "old")
) -> None:
    """Removes leftovers of dead runs that ``ours`` recognises; call it holding ``out``'s lock.

    Holding the lock, no other run writes these; a sibling that only looks like one (no marker) stays.
    """
    for kind in kinds:
        for path in leftovers(out, kind):
            if path.is_dir() and not path.is_symlink() and ours(path):
                shutil.rmtree(path, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_output(partial: str | Path, out: str | Path) -> Path:
    """Renames the finished ``partial`` to ``out``; an existing ``out`` (checked to be ours) is replaced.

    The old output is first renamed to a run-unique ``OUT.old-<pid>-<hex>`` and removed only once the new one
    is in place; if the final rename fails, it is put back.
    """
    partial, out = Path(partial), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        old = partial_path(out, "old")
        out.rename(old)
    try:
        partial.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        _remove(old)
    return out


def is_run_folder(folder: Path) -> bool:
    """A folder a domainfm command wrote: its marker, or (before markers) its resolved ``config.yaml``."""
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"] == RUN_KIND
    config = folder / "config.yaml"
    try:
        head = config.read_text()[:400] if config.is_file() else ""
    except OSError:
        return False
    return head.startswith("# command:") and "written by domainfm" in head


@contextlib.contextmanager
def run_folder(out: str | Path, lead: bool = True, what: str = "run folder") -> Iterator[Path]:
    """Claims ``out`` for a training run for the duration of the ``with`` block.

    The folder may be new, empty, or one an earlier domainfm run wrote (a killed run resumes there);
    anything else is refused. The lead process (global rank zero) takes the lock and writes the marker;
    the others only create the folder. A run that fails before writing anything removes the folder it
    created (bad input leaves no empty run folder behind).
    """
    out = Path(out)
    if not lead:
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    with lock_output(out, what):
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} is a file, not a {what}; choose another --out")
        if out.is_dir() and any(out.iterdir()) and not is_run_folder(out):
            raise OutputError(
                f"{out} holds files domainfm did not write ({_listing(out)}); a {what} must be new, empty or an "
                f"earlier domainfm run's folder: choose another --out, or move those files away yourself"
            )
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if read_marker(out) is None:
            write_marker(out, RUN_KIND)
        try:
            yield out
        except BaseException:
            own = {MARKER, "config.yaml"}  # the marker and the resolved config this run wrote first
            if created and {p.name for p in out.iterdir()} <= own:  # failed before writing any result
                for name in own:
                    (out / name).unlink(missing_ok=True)
                out.rmdir()  # only the folder this run created, and only while it holds nothing else
            raise
