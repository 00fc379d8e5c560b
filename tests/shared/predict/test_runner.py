"""The shared predict runner: inputs and names, one writer, resume after a kill, checksums, bad inputs."""

import json
from pathlib import Path

import pytest

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.predict import PredictError, collect_inputs, run_predictions
from domainfm.shared.predict.runner import file_sha256


class Interrupted(BaseException):
    """Stands in for a kill (KeyboardInterrupt / SIGTERM) in the middle of a run."""


def _deployable(tmp_path: Path, content: bytes = b"weights") -> Deployable:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(content)
    return Deployable(network=None, card=None, source=checkpoint)  # the runner only reads the source


def _inputs(folder: Path, names: list[str]) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"content of {name}")
    return folder


def _writer(calls: list[str], fail: set[str] = frozenset(), stop_after: int | None = None):
    def predict_one(deployable, item, outputs):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupted
        calls.append(item.key)
        if item.key in fail:
            raise ValueError(f"{item.path} is not a readable picture")
        outputs.path("masks", ".txt").write_text(item.path.read_text().upper())
        outputs.path("overlays", ".txt").write_text("overlay")
        return {"length": len(item.path.read_text())}

    return predict_one


def test_inputs_from_files_and_folders_keep_relative_names(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png", "sub/b.jpg", "notes.txt", ".hidden/c.png"])
    single = _inputs(tmp_path / "other", ["d.png"]) / "d.png"
    items = collect_inputs([folder, single], (".png", ".jpg"), "pictures")
    assert [(i.key, i.stem) for i in items] == [("a.png", "a"), ("d.png", "d"), ("sub/b.jpg", "sub/b")]
    assert collect_inputs([_inputs(tmp_path / "v", ["x.nii.gz"])], (".nii.gz",), "volumes")[0].stem == "x"


def test_outputs_inside_an_input_folder_are_not_taken_as_inputs(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png", "b.png"])
    calls: list[str] = []
    for _ in range(2):
        run = run_predictions(_deployable(tmp_path), [folder], folder / "preds", _writer(calls), (".png", ".txt"),
                              progress=False)  # fmt: skip
        assert not run.failed and len(run.rows) == 2
    assert calls == ["a.png", "b.png"]  # the rerun found both done, and no output as a new input


def test_inputs_that_would_write_one_name_are_refused(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png", "a.jpg"])
    with pytest.raises(PredictError, match="outputs of one name"):
        collect_inputs([folder], (".png", ".jpg"), "pictures")
    with pytest.raises(PredictError, match="holds no pictures"):
        collect_inputs([_inputs(tmp_path / "e", ["x.txt"])], (".png",), "pictures")
    with pytest.raises(PredictError, match="does not exist"):
        collect_inputs([tmp_path / "missing.png"], (".png",), "pictures")


def test_outputs_records_and_table(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png", "sub/b.png"])
    out = tmp_path / "out"
    run = run_predictions(_deployable(tmp_path), [folder], out, _writer([]), (".png",), progress=False)
    assert (run.predicted, run.skipped, run.failed) == (2, 0, {})
    assert (out / "masks/sub/b.txt").read_text() == "CONTENT OF SUB/B.PNG"
    assert (out / "overlays/a.txt").is_file()
    table = (out / "predictions.csv").read_text().splitlines()
    assert table == ["input,length", f"a.png,{len('content of a.png')}", f"sub/b.png,{len('content of sub/b.png')}"]
    records = [json.loads(p.read_text()) for p in sorted((out / ".domainfm/done").iterdir())]
    by_key = {r["key"]: r for r in records}
    mask = out / "masks/a.txt"
    assert by_key["a.png"]["outputs"]["masks/a.txt"] == {"size": mask.stat().st_size, "sha256": file_sha256(mask)}
    assert not any((out / ".staging").iterdir())  # nothing staged is left behind


def test_a_killed_run_resumes_with_the_rest_only(tmp_path):
    folder = _inputs(tmp_path / "in", [f"{i}.png" for i in range(5)])
    out, deployable = tmp_path / "out", _deployable(tmp_path)
    first: list[str] = []
    with pytest.raises(Interrupted):
        run_predictions(deployable, [folder], out, _writer(first, stop_after=2), (".png",), progress=False)
    assert first == ["0.png", "1.png"]
    second: list[str] = []
    run = run_predictions(deployable, [folder], out, _writer(second), (".png",), progress=False)
    assert second == ["2.png", "3.png", "4.png"]
    assert (run.predicted, run.skipped) == (3, 2)
    assert len((out / "predictions.csv").read_text().splitlines()) == 6
    # an output removed by hand, or an input changed since, is predicted again; the rest is not
    (out / "masks/1.txt").unlink()
    (folder / "3.png").write_text("changed")
    third: list[str] = []
    run_predictions(deployable, [folder], out, _writer(third), (".png",), progress=False)
    assert third == ["1.png", "3.png"]
    assert (out / "masks/3.txt").read_text() == "CHANGED"


def test_bad_inputs_are_reported_and_retried_alone(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out, deployable = tmp_path / "out", _deployable(tmp_path)
    run = run_predictions(deployable, [folder], out, _writer([], fail={"b.png"}), (".png",), progress=False)
    assert run.failed == {"b.png": f"{folder / 'b.png'} is not a readable picture"}
    assert not (out / "masks/b.txt").exists()  # no half output for the failed input
    assert json.loads((out / "summary.json").read_text())["failed"] == run.failed
    calls: list[str] = []
    assert not run_predictions(deployable, [folder], out, _writer(calls), (".png",), progress=False).failed
    assert calls == ["b.png"]


def test_another_model_or_options_needs_overwrite(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    run_predictions(_deployable(tmp_path), [folder], out, _writer([]), (".png",), options={"t": 0.5}, progress=False)
    with pytest.raises(PredictError, match="another options"):
        run_predictions(_deployable(tmp_path), [folder], out, _writer([]), (".png",), options={"t": 0.7},
                        progress=False)  # fmt: skip
    with pytest.raises(PredictError, match="another checkpoint"):
        run_predictions(_deployable(tmp_path, b"other"), [folder], out, _writer([]), (".png",), options={"t": 0.5},
                        progress=False)  # fmt: skip
    calls: list[str] = []
    run_predictions(_deployable(tmp_path, b"other"), [folder], out, _writer(calls), (".png",), options={"t": 0.5},
                    overwrite=True, progress=False)  # fmt: skip
    assert calls == ["a.png"]


def test_a_folder_of_someone_else_is_never_written_into(tmp_path):
    folder = _inputs(tmp_path / "in", ["a.png"])
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.docx").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(PredictError, match="did not write"):
            run_predictions(_deployable(tmp_path), [folder], user, _writer([]), (".png",), overwrite=overwrite,
                            progress=False)  # fmt: skip
    assert sorted(p.name for p in user.iterdir()) == ["thesis.docx"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(PredictError, match="is a file"):
        run_predictions(_deployable(tmp_path), [folder], tmp_path / "file", _writer([]), (".png",), progress=False)
