"""Nothing lost: every verb that writes ``--out`` leaves a user's files byte for byte as they were.

A user folder holds files at every output path and ``.partial``/``.old`` siblings (fixed names and the
run-unique pattern) of every output. Each verb, with and without ``--overwrite``, either refuses with exit
status 2 and a message naming the path and the fix, or writes its output without touching those files.
Also: a second writer of one output fails at once, naming the first (issue #23).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.shared.outputs import lock_path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (``None`` for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def user_files(out: Path) -> None:
    """A user's folder at ``out`` and user-owned siblings with the names outputs could be staged under."""
    out.mkdir(parents=True)
    (out / "thesis.txt").write_text("years of work")
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"mine": 1}}')
    (out / "configs").mkdir()
    (out / "configs" / "metadata.json").write_text('{"name": "someone else\'s bundle"}')
    (out / "results.json").write_text('{"mine": true}')
    siblings(out)


def siblings(out: Path) -> None:
    """User files at ``OUT.partial``, ``OUT.old`` and a name in the run-unique pattern without domainfm's marker."""
    for name in (".partial", ".old", ".partial-1-0123abcd", ".old-1-0123abcd"):
        folder = out.with_name(out.name + name)
        folder.mkdir()
        (folder / "keep.bin").write_bytes(os.urandom(64))


def npy_sources(folder: Path, n: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        np.save(folder / f"s{i}.npy", np.random.default_rng(i).integers(0, 255, (8, 3, 16, 16), dtype=np.uint8))
        paths.append(str(folder / f"s{i}.npy"))
    return paths


@pytest.fixture(scope="module")
def pathology(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pathology tile store and a tile classifier trained for one epoch on it."""
    root = tmp_path_factory.mktemp("pathology")
    slides = []
    for i in range(2):
        slide = root / f"s{i}.svs"
        assert main(["pathology", "phantom", "--out", str(slide), "--size", "1024", "--seed", str(i)]) == 0
        slides.append(str(slide))
    (root / "splits.csv").write_text("slide,split\ns0,train\ns1,test\n")
    store = root / "tiles.zarr"
    assert main(["pathology", "tile", *slides, "--out", str(store), "--mpp", "2.0", "--tile_size", "32",
                 "--truth_labels", "--splits", str(root / "splits.csv"), "--workers", "1"]) == 0  # fmt: skip
    run = root / "classifier"
    assert main(["pathology", "train", "--store", str(store), "--out", str(run), "--backbone", "test_vit",
                 "--epochs", "1", "--device", "cpu", "--json"]) == 0  # fmt: skip
    return {"store": store, "checkpoint": run / "tile_classifier.safetensors"}


def _verbs(pathology: dict[str, Path], tmp_path: Path) -> dict[str, list[str]]:
    store, checkpoint = str(pathology["store"]), str(pathology["checkpoint"])
    sources = npy_sources(tmp_path / "sources")
    return {
        "tiles ingest": ["tiles", "ingest", *sources],
        "pathology tile": ["pathology", "tile", str(pathology["store"].parent / "s0.svs"), "--mpp", "2.0"],
        "pathology embed": ["pathology", "embed", "--store", store, "--device", "cpu"],
        "export bundle": ["export", "bundle", "--checkpoint", checkpoint],
        "quickstart": ["quickstart", "--sections", "[backbones]"],
        "pathology pretrain": ["pathology", "pretrain", "--store", store, "--epochs", "1", "--device", "cpu"],
        "pathology train": ["pathology", "train", "--store", store, "--epochs", "1", "--device", "cpu"],
        "pathology mil": ["pathology", "mil", "--embeddings", str(tmp_path / "missing.zarr")],
        "radiology pretrain": ["radiology", "pretrain", "--store", store, "--device", "cpu"],
        "radiology train": ["radiology", "train", "--store", store, "--device", "cpu"],
        "remote-sensing pretrain": ["remote-sensing", "pretrain", "--store", store, "--device", "cpu"],
        "remote-sensing train": ["remote-sensing", "train", "--store", store, "--device", "cpu"],
        "segmentation train-vae": ["segmentation", "train-vae", "--store", store, "--device", "cpu"],
        "segmentation train": ["segmentation", "train", "--store", store, "--device", "cpu"],
    }


OVERWRITABLE = {"tiles ingest", "pathology tile", "pathology embed", "export bundle"}
VERBS = [
    "tiles ingest", "pathology tile", "pathology embed", "export bundle", "quickstart", "pathology pretrain",
    "pathology train", "pathology mil", "radiology pretrain", "radiology train", "remote-sensing pretrain",
    "remote-sensing train", "segmentation train-vae", "segmentation train",
]  # fmt: skip


@pytest.mark.parametrize(("verb", "overwrite"), [(v, False) for v in VERBS] + [(v, True) for v in sorted(OVERWRITABLE)])
def test_a_user_folder_is_refused_and_kept_byte_for_byte(
    verb: str, overwrite: bool, pathology: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    argv = _verbs(pathology, tmp_path)[verb]
    user = tmp_path / "user"
    out = user / "out"
    user_files(out)
    before = snapshot(user)
    code = main([*argv, "--out", str(out), *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert snapshot(user) == before
    assert str(out) in err and "choose another --out" in err, err
    assert not lock_path(out).exists()


@pytest.mark.parametrize("verb", ["tiles ingest", "pathology embed", "export bundle", "quickstart"])
def test_outputs_beside_user_siblings_leave_them_untouched(
    verb: str, pathology: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if verb == "quickstart":
        monkeypatch.setitem(__import__("domainfm.quickstart").quickstart.SECTIONS, "backbones", f"{__name__}:_section")
    argv = _verbs(pathology, tmp_path)[verb]
    user = tmp_path / "user"
    user.mkdir()
    out = user / "out"
    siblings(out)
    before = snapshot(user)
    assert main([*argv, "--out", str(out)]) in (0, 1)  # written (quickstart: 1 = a section failed)
    assert main([*argv, "--out", str(out), *(["--overwrite"] if verb in OVERWRITABLE else [])]) in (0, 1)
    after = snapshot(user)
    assert {k: v for k, v in after.items() if k in before} == before  # every user byte is still there
    added = {k.split("/")[0] for k in after if k not in before}
    assert added == {"out"}, added  # no partial, old or lock file left beside it


def _section(out_dir: Path, device: object, seed: int):
    from domainfm.shared.report import SectionResult

    (out_dir / "x.txt").write_text("x")
    return SectionResult("tiny", "ok")


def test_quickstart_replaces_only_its_own_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from domainfm import quickstart

    monkeypatch.setitem(quickstart.SECTIONS, "backbones", f"{__name__}:_section")
    out = tmp_path / "report"
    assert main(["quickstart", "--out", str(out), "--sections", "[backbones]"]) == 0
    (out / "index.md").write_text("stale")
    assert main(["quickstart", "--out", str(out), "--sections", "[backbones]"]) == 0
    assert (out / "index.md").read_text() != "stale" and json.loads((out / "results.json").read_text())["ok"]


HOLD = textwrap.dedent(
    """
    import sys, time
    from domainfm.shared.outputs import OutputLock
    OutputLock(sys.argv[1], "tile store").acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_second_ingest_into_one_store_fails_at_once_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    sources, out = npy_sources(tmp_path / "sources"), tmp_path / "store.zarr"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        assert main(["tiles", "ingest", *sources, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and str(out) in err and "another domainfm run" in err
        assert not out.exists()
    finally:
        first.kill()
        first.wait()
    assert main(["tiles", "ingest", *sources, "--out", str(out)]) == 0  # the dead holder's lock is taken over


PHANTOMS = {
    "pathology phantom": (["pathology", "phantom", "--size", "256"], "slide.svs"),
    "remote-sensing phantom": (["remote-sensing", "phantom", "--size", "40"], "granule.hdf"),
}


@pytest.mark.parametrize("verb", sorted(PHANTOMS))
def test_phantom_files_replace_only_phantoms(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv, name = PHANTOMS[verb]
    user = tmp_path / "user"
    user.mkdir()
    out = user / name
    out.write_bytes(b"a user's own file " + os.urandom(64))
    for suffix in (".partial", ".truth.npz.partial", ".partial-1-0123abcd"):
        out.with_name(out.name + suffix).write_bytes(os.urandom(32))
    before = snapshot(user)
    for overwrite in ([], ["--overwrite"]):
        assert main([*argv, "--out", str(out), *overwrite]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "choose another --out" in err, err
        assert snapshot(user) == before
    out.unlink()
    assert main([*argv, "--out", str(out)]) == 0
    phantom = out.read_bytes()
    assert main([*argv, "--out", str(out), "--seed", "1"]) == 2  # its own phantom, but no --overwrite
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == phantom
    assert main([*argv, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert out.read_bytes() != phantom
    after = snapshot(user)
    assert {k: v for k, v in after.items() if k in before and k != name} == {
        k: v for k, v in before.items() if k != name
    }
    assert set(after) - set(before) == {f"{name}.truth.npz"}  # nothing staged or locked is left beside it


PHANTOM_FOLDERS = {
    "radiology phantom": ["radiology", "phantom", "--n", "4", "--size", "16", "--retrieval_per_category", "1"],
    "segmentation phantom": ["segmentation", "phantom", "--n", "2", "--size", "16"],
}


@pytest.mark.parametrize("verb", sorted(PHANTOM_FOLDERS))
def test_phantom_folders_replace_only_phantoms(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = PHANTOM_FOLDERS[verb]
    user = tmp_path / "user"
    out = user / "out"
    user_files(out)
    before = snapshot(user)
    for overwrite in ([], ["--overwrite"]):
        assert main([*argv, "--out", str(out), *overwrite]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "choose another --out" in err, err
        assert snapshot(user) == before
    mine = tmp_path / "mine"
    siblings(mine)
    kept = snapshot(tmp_path)
    assert main([*argv, "--out", str(mine)]) == 0
    first = snapshot(mine)
    assert main([*argv, "--out", str(mine), "--seed", "1"]) == 2  # its own phantom, but no --overwrite
    assert "--overwrite" in capsys.readouterr().err and snapshot(mine) == first
    assert main([*argv, "--out", str(mine), "--seed", "1", "--overwrite"]) == 0
    assert snapshot(mine) != first
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in kept} == kept
    assert {k.split("/")[0] for k in after if k not in kept} == {"mine"}
