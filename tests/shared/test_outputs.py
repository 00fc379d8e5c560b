"""One writer per output (flock beside it) and the helpers that never delete what domainfm did not write."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from domainfm.shared.outputs import (
    OutputError,
    OutputLock,
    check_output,
    is_run_folder,
    leftovers,
    lock_path,
    partial_path,
    remove_leftovers,
    replace_output,
    run_folder,
    write_marker,
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from domainfm.shared.outputs import OutputLock
    lock = OutputLock(sys.argv[1], "test output").acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path: Path):
    """Starts a process that holds the lock of an output; yields (out, process); kills it at the end."""
    started = []

    def start(out: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(out)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_second_writer_fails_at_once_naming_the_holder(tmp_path: Path, holder):
    out = tmp_path / "out"
    process = holder(out)
    record = json.loads(lock_path(out).read_text())
    assert record["pid"] == process.pid and record["host"] == socket.gethostname()
    assert str(out) in record["command"] and record["started"]  # the holder's command line and start time
    with pytest.raises(OutputError, match=rf"pid {process.pid} on {socket.gethostname()}") as raised:
        OutputLock(out).acquire()
    assert str(out) in str(raised.value) and "choose another --out" in str(raised.value)
    assert not out.exists()  # nothing was written by the refused writer


def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path, holder):
    out = tmp_path / "out"
    process = holder(out)
    os.kill(process.pid, signal.SIGKILL)  # a crash: the kernel releases its flock, the lock file stays
    process.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == process.pid
    with OutputLock(out) as lock:
        assert lock.held and json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()  # released: the lock file is removed


def test_lock_file_left_by_a_dead_pid_is_taken_over(tmp_path: Path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "command": "domainfm old", "started": "earlier"}
    lock_path(out).write_text(json.dumps(record))
    with OutputLock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_lock_survives_the_output_being_replaced(tmp_path: Path, holder):
    out = tmp_path / "out"
    with OutputLock(out):
        partial = partial_path(out)
        partial.mkdir()
        replace_output(partial, out)
        with pytest.raises(OutputError, match="another domainfm run"):
            OutputLock(out).acquire()  # a second open file description in this process is refused too


def test_check_output_refuses_foreign_and_requires_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    assert check_output(out, "thing", False, lambda p: False) is False  # missing: free
    out.mkdir()
    assert check_output(out, "thing", False, lambda p: False) is True  # empty: nothing to lose
    (out / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write as a thing.*mine\.txt.*even with --overwrite"):
        check_output(out, "thing", True, lambda p: False)
    with pytest.raises(OutputError, match="pass --overwrite"):
        check_output(out, "thing", False, lambda p: True)
    assert check_output(out, "thing", True, lambda p: True) is True


def test_partial_names_are_unique_and_only_marked_leftovers_are_removed(tmp_path: Path):
    out = tmp_path / "out"
    first, second = partial_path(out), partial_path(out)
    assert first != second and first.name.startswith(f"out.partial-{os.getpid()}-")
    ours, users = first, second
    ours.mkdir()
    write_marker(ours, "thing-partial")
    users.mkdir()
    (users / "data.txt").write_text("the user's")
    fixed = tmp_path / "out.partial"
    fixed.mkdir()
    assert leftovers(out) == sorted([ours, users])  # the fixed name a user may own is never a leftover
    remove_leftovers(out, lambda p: (p / ".domainfm.json").is_file())
    assert not ours.exists() and (users / "data.txt").read_text() == "the user's" and fixed.is_dir()


def test_replace_output_keeps_no_old_copy(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "v").write_text("1")
    (tmp_path / "out.old").mkdir()  # a user's folder with the fixed name: untouched
    partial = partial_path(out)
    partial.mkdir()
    (partial / "v").write_text("2")
    replace_output(partial, out)
    assert (out / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old"]


def test_run_folder_accepts_new_empty_or_domainfm_folders_only(tmp_path: Path):
    new = tmp_path / "new"
    with run_folder(new) as folder:
        assert folder == new and is_run_folder(new)
    with run_folder(new):  # an earlier run's folder: resumed into
        pass
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("# command: x\n# resolved configuration written by domainfm 0.1 at t\n")
    with run_folder(legacy):
        pass
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    refused = pytest.raises(OutputError, match=r"user holds files domainfm did not write \(notes\.txt\)")
    with refused, run_folder(user):
        pass
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert not lock_path(user).exists()


def test_a_run_that_fails_before_writing_leaves_no_folder_but_keeps_an_existing_one(tmp_path: Path):
    from domainfm.shared.outputs import MARKER

    new = tmp_path / "new"
    with pytest.raises(ValueError, match="bad store"), run_folder(new):
        (new / "config.yaml").write_text("# command: x\n")
        raise ValueError("bad store")
    assert not new.exists() and not lock_path(new).exists()
    started = tmp_path / "started"
    with pytest.raises(ValueError), run_folder(started):
        (started / "model.safetensors").write_bytes(b"partial result")
        raise ValueError("failed later")
    assert sorted(p.name for p in started.iterdir()) == [MARKER, "model.safetensors"]  # kept for a resume
    with run_folder(started):
        pass
    with pytest.raises(ValueError), run_folder(started):  # it existed before this run: never removed
        raise ValueError("bad store")
    assert started.is_dir() and (started / "model.safetensors").exists()
