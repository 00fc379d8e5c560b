"""Verification stamps: shard files checked in full, remembered across processes by their file identity.

A tile shard file checked against its recorded CRC-32C is stamped in ``STORE/_verified.json`` with what
``stat`` says of it then (inode, size, modification and change time, in ns), the CRC it matched and when the
check began. A later reader, in any process, skips the check while the file's ``stat`` is unchanged, and checks
it again in full as soon as anything differs. Any write to a file moves its change time (``ctime``), which
no user-level call can set back (``os.utime`` sets the modification time and moves the change time too); a
file swapped in by a rename or a copy has another inode or change time. So a shard that was changed, damaged
through the filesystem, or swapped after its check is checked again before its bytes are used.

As in git's index ("racily clean" entries), a stamp is trusted only when the file's change time lies well
before the check began (``RACY_NS``): a file written in the same clock tick as its check, or just before, is
checked again next time instead of being trusted. Stamps are written best-effort (a read-only store keeps
them in memory only) through a unique temporary file and a rename, so concurrent readers never see half a
file; two writers at once can drop each other's newest stamps, which only costs a check.

What stamps do not cover: bytes that change beneath the filesystem without any write (media decay after
the check). ``domainfm tiles verify`` always checks every byte, stamps or not.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

STAMPS = "_verified.json"
RACY_NS = 2_000_000_000  # a file changed less than 2 s before its check began is checked again next time


class VerificationStamps:
    """The stamps of one store (loaded once, shared by the reading threads of one ``TileStore``)."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = self.store / STAMPS
        self._lock = threading.Lock()
        self._stamps: dict[str, list[int]] | None = None
        self._writable = True

    def __getstate__(self) -> dict:
        return {"store": self.store}  # a copy in another process reloads the stamps and makes its own lock

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store"])

    def _load(self) -> dict[str, list[int]]:
        if self._stamps is None:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):  # none yet, unreadable or cut short: check everything again
                data = {}
            valid = isinstance(data, dict) and all(
                isinstance(v, list) and len(v) == 6 and all(isinstance(x, int) for x in v) for v in data.values()
            )
            self._stamps = dict(data) if valid else {}
        return self._stamps

    def _name(self, file: Path) -> str:
        return Path(file).relative_to(self.store).as_posix()

    def holds(self, file: Path, stat: os.stat_result, crc: int) -> bool:
        """True when ``file`` was checked in full against ``crc`` and its ``stat`` has not changed since."""
        with self._lock:
            stamp = self._load().get(self._name(file))
        if stamp is None:
            return False
        identity = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, int(crc)]
        return stamp[:5] == identity and stamp[3] < stamp[5] - RACY_NS

    def record(self, file: Path, stat: os.stat_result, crc: int, started_ns: int) -> None:
        """Stamps ``file`` (its ``stat`` taken before a full check that began at ``started_ns`` and passed)."""
        if stat.st_ctime_ns >= started_ns - RACY_NS:
            return  # changed just before the check: not trusted later, so not worth writing
        stamp = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, int(crc), int(started_ns)]
        with self._lock:
            stamps = self._load()
            if stamps.get(self._name(file)) == stamp:
                return
            stamps[self._name(file)] = stamp
            if self._writable:
                self._write(stamps)

    def _write(self, stamps: dict[str, list[int]]) -> None:
        temporary = self.path.with_name(f"{STAMPS}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            temporary.write_text(json.dumps(stamps, separators=(",", ":")))
            os.replace(temporary, self.path)
        except OSError:  # a read-only store or a full disk: keep the stamps in memory only
            self._writable = False
            temporary.unlink(missing_ok=True)


def settle(folder: Path) -> None:
    """Waits until every file under ``folder`` last changed more than ``RACY_NS`` ago, so a check now is stamped.

    For benchmarks and tests that check a store right after writing it.
    """
    changed = [p.stat().st_ctime_ns for p in Path(folder).rglob("*") if p.is_file()]
    delay = max(changed, default=0) + RACY_NS - time.time_ns()
    if delay > 0:
        time.sleep(delay / 1e9 + 0.01)


def stamped_files(store: Path) -> int:
    """How many shard files the store's stamps hold (0 without a readable stamp file)."""
    return len(VerificationStamps(store)._load())
