"""MONAI bundles of every downstream kind verify offline and predict what domainfm predicts.

One export per kind is shared by the module. The ``python -m monai.bundle`` commands (verify_metadata,
verify_net_in_out, run) of all kinds go through monai's own ``__main__`` in one shared process, because
importing monai takes ~10 s on a loaded 2-core machine; one ``run`` also runs in a process of its own.
"""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from domainfm.cli import main
from domainfm.shared.deploy import load_deployable, predict, read_input
from domainfm.shared.deploy.bundle import (
    SCHEMA_FILE,
    SCHEMA_MD5,
    BundleError,
    card_from_metadata,
    export_bundle,
)
from domainfm.shared.deploy.bundle_runtime import config_safe, config_value
from domainfm.shared.deploy.registry import NotDeployableError

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundles(deployables, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Kind -> an exported bundle."""
    root = tmp_path_factory.mktemp("bundles")
    return {kind: export_bundle(checkpoint, root / kind) for kind, (checkpoint, _) in deployables.items()}


# `python -m monai.bundle ARGS...` for several ARGS in one interpreter: runpy.run_module(..., "__main__") is what
# `python -m` does, so each command goes through monai's own __main__ (fire) with its own argv and log file,
# but monai is imported once (~10 s per import on a loaded 2-core machine).
DRIVER = """
import json, os, runpy, sys, traceback
jobs_file, codes_file = sys.argv[1:3]
with open(jobs_file) as handle:
    jobs = json.load(handle)
codes = []
for job in jobs:
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(job["log"], "w") as log:
        os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)
        try:
            sys.argv = ["monai.bundle", *job["args"]]
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    codes.append(code)
with open(codes_file, "w") as handle:
    json.dump(codes, handle)
"""


@dataclass
class Finished:
    """One ``monai.bundle`` command: its arguments, exit status and output."""

    args: tuple[str, ...]
    returncode: int
    output: str


def _monai_commands(jobs: list[tuple[str, ...]], folder: Path) -> list[Finished]:
    """Runs ``python -m monai.bundle *job`` for every job in one interpreter (see DRIVER)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = [{"args": list(args), "log": str(folder / f"{i}.log")} for i, args in enumerate(jobs)]
    (folder / "jobs.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(folder / "jobs.json"), str(folder / "codes.json")],
        capture_output=True, text=True, timeout=600, check=False, cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    codes = json.loads((folder / "codes.json").read_text())
    return [
        Finished(args, code, Path(job["log"]).read_text()) for args, code, job in zip(jobs, codes, spec, strict=True)
    ]


def _monai(cwd: Path, *args: str) -> Finished:
    """``python -m monai.bundle *args`` in its own process, started in ``cwd``."""
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )
    return Finished(args, done.returncode, done.stdout + done.stderr)


FRESH = "radiology.classifier"  # also run in a process of its own, exactly as a user types it


@pytest.fixture(scope="module")
def cli(bundles, deployables, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], object]:
    """(kind, command) -> the finished ``monai.bundle`` command; ("folder", kind) -> that kind's run folder.

    All commands go through monai's ``__main__`` in one shared process (see DRIVER); the ``run`` of
    :data:`FRESH` also runs as its own ``python -m monai.bundle run`` process, writing to ``fresh/``.
    """
    root = tmp_path_factory.mktemp("bundle_runs")
    jobs = {}
    for kind, bundle in bundles.items():
        meta, config = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")
        inputs = root / kind / "inputs"
        inputs.mkdir(parents=True)
        for path in deployables[kind][1]:
            shutil.copy(path, inputs / path.name)
        jobs[kind, "verify_metadata"] = (
            "verify_metadata", "--meta_file", meta, "--filepath", str(SCHEMA_FILE), "--hash_val", SCHEMA_MD5,
        )  # fmt: skip
        jobs[kind, "verify_net_in_out"] = (
            "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config, "--device", "cpu",
        )  # fmt: skip
        jobs[kind, "run"] = (
            "run", "--config_file", config, "--meta_file", meta, "--bundle_root", str(bundle), "--dataset_dir",
            str(inputs), "--output_dir", str(root / kind / "predictions"), "--device", "$torch.device('cpu')",
        )  # fmt: skip
    # The shipped schema must reject metadata without a required field (the check is not vacuous).
    incomplete = json.loads((next(iter(bundles.values())) / "configs" / "metadata.json").read_text())
    del incomplete["network_data_format"]
    (root / "incomplete.json").write_text(json.dumps(incomplete))
    jobs["incomplete", "verify_metadata"] = (
        "verify_metadata", "--meta_file", str(root / "incomplete.json"), "--filepath", str(SCHEMA_FILE),
        "--hash_val", SCHEMA_MD5,
    )  # fmt: skip
    fresh = [str(root / FRESH / "fresh") if arg.endswith("/predictions") else arg for arg in jobs[FRESH, "run"]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        shared = pool.submit(_monai_commands, list(jobs.values()), root / "shared")
        alone = pool.submit(_monai, root / FRESH, *fresh)
        results: dict[tuple[str, str], object] = dict(zip(jobs, shared.result(), strict=True))
        results[FRESH, "fresh run"] = alone.result()
    for kind in bundles:
        results["folder", kind] = root / kind
    return results


def _ok(finished: Finished) -> str:
    assert finished.returncode == 0, f"monai.bundle {' '.join(finished.args)}\n{finished.output[-4000:]}"
    return finished.output


def test_every_kind_is_exported(bundles, deployables):
    assert set(bundles) == set(deployables)
    schema_md5 = hashlib.md5(SCHEMA_FILE.read_bytes()).hexdigest()
    for kind, bundle in bundles.items():
        for name in ("LICENSE", "configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
            assert (bundle / name).is_file(), f"{kind}: {name}"
        assert not bundle.with_name(bundle.name + ".partial").exists()
        # the README states this model's contract and a verify command that works with the shipped schema
        readme = (bundle / "docs" / "README.md").read_text()
        card = load_deployable(deployables[kind][0]).card
        assert readme.startswith(f"# domainfm {card.kind}\n"), kind
        assert f"{card.in_channels} channel(s): {', '.join(card.channel_names)}" in readme, kind
        assert "x".join(map(str, card.spatial_shape)) in readme, kind
        assert ", ".join(card.class_names) in readme and f"Activation: {card.activation}." in readme, kind
        assert f"--hash_val {schema_md5}" in readme, kind
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        assert meta["description"] in readme, kind


def test_weights_are_a_plain_state_dict_of_the_network(bundles, deployables):
    for kind, bundle in bundles.items():
        state = torch.load(bundle / "models" / "model.pt", weights_only=True)
        expected = load_deployable(deployables[kind][0]).network.state_dict()
        assert state.keys() == expected.keys(), kind
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)


def test_metadata_names_image_and_pred_and_carries_the_card(bundles, deployables):
    for kind, bundle in bundles.items():
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        card = load_deployable(deployables[kind][0]).card
        assert card_from_metadata(meta) == card
        image = meta["network_data_format"]["inputs"]["image"]
        pred = meta["network_data_format"]["outputs"]["pred"]
        assert (image["num_channels"], image["spatial_shape"]) == (card.in_channels, card.spatial_shape)
        assert pred["num_channels"] == card.out_channels
        assert list(config_value(pred["channel_def"]).values()) == card.class_names
        assert meta["required_packages_version"]["domainfm"]
        config = json.loads((bundle / "configs" / "inference.json").read_text())
        assert config["network_def"]["kind"] == kind
        assert "run" in config and "evaluating" not in config


def test_shipped_schema_is_pinned():
    assert hashlib.md5(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_MD5
    assert json.loads(SCHEMA_FILE.read_text())["required"][:2] == ["schema", "version"]


def test_verify_metadata_passes_offline(cli, bundles):
    for kind in bundles:
        output = _ok(cli[kind, "verify_metadata"])
        assert "skipped downloading" in output, kind
        assert "metadata is verified with no error" in output, kind


def test_verify_metadata_rejects_a_missing_required_field(cli):
    finished = cli["incomplete", "verify_metadata"]
    assert finished.returncode != 0
    assert "network_data_format" in finished.output


def test_verify_net_in_out_passes(cli, bundles):
    for kind in bundles:
        assert "data shape of network is verified with no error" in _ok(cli[kind, "verify_net_in_out"]), kind


def _written(folder: Path, path: Path) -> np.ndarray:
    table = folder / "predictions.csv"
    if table.exists():
        rows = {Path(row[0]).name: row[1:] for row in csv.reader(table.open())}
        return np.asarray(rows[path.name], dtype=np.float64)
    return np.load(folder / f"{path.stem}_pred.npy", allow_pickle=False)


def _assert_predictions_match(kind: str, folder: Path, deployables) -> None:
    checkpoint, inputs = deployables[kind]
    deployable = load_deployable(checkpoint)
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == (1 if deployable.card.task != "segmentation" else len(inputs)), (kind, written)
    for path in inputs:
        expected = predict(deployable, read_input(path, deployable.card))[0].double().numpy()
        got = _written(folder, path)
        assert got.shape == expected.shape, (kind, path.name)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{kind} {path.name}")


def test_run_predicts_what_domainfm_predicts(cli, bundles, deployables):
    for kind in bundles:
        _ok(cli[kind, "run"])
        _assert_predictions_match(kind, cli["folder", kind] / "predictions", deployables)


def test_run_in_its_own_process_predicts_the_same(cli, deployables):
    _ok(cli[FRESH, "fresh run"])
    _assert_predictions_match(FRESH, cli["folder", FRESH] / "fresh", deployables)


def test_large_segmentation_inputs_keep_their_orientation(cli, deployables):
    folder = cli["folder", "segmentation.gms"] / "predictions"
    large = next(p for p in deployables["segmentation.gms"][1] if p.stem == "large")
    assert _written(folder, large).shape == (1, 48, 40)  # height x width of the 48-row, 40-column picture


def test_inference_config_has_every_required_property(cli, bundles):
    from monai.bundle import ConfigWorkflow

    for kind, bundle in bundles.items():
        workflow = ConfigWorkflow(
            config_file=str(bundle / "configs" / "inference.json"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            workflow_type="infer",
            logging_file=False,
            bundle_root=str(bundle),
            dataset_dir=str(cli["folder", kind] / "inputs"),
        )
        workflow.initialize()
        assert workflow.check_properties() == [], kind


@pytest.mark.parametrize("value", ["%", "50 %", "a#b", "@ref", "$1 + 1", "it's", "back\\slash", "tab\tand\nline"])
def test_strings_the_config_parser_would_alter_survive_it(value):
    from monai.bundle import ConfigParser

    parser = ConfigParser({"x": config_safe(value), "nested": {"y": [config_safe(value)]}})
    assert parser.get_parsed_content("x") == value
    assert parser.get_parsed_content("nested::y") == [value]
    assert config_value(config_safe(value)) == value


def test_existing_folder_is_refused_and_kept(deployables, tmp_path: Path):
    checkpoint = deployables["radiology.classifier"][0]
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="--overwrite"):
        export_bundle(checkpoint, out)
    with pytest.raises(BundleError, match="did not write as a bundle"):
        export_bundle(checkpoint, out, overwrite=True)  # --overwrite never deletes other files
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_bundle(bundles, deployables, tmp_path: Path):
    out = shutil.copytree(bundles["pathology.tile_classifier"], tmp_path / "bundle")
    export_bundle(deployables["radiology.classifier"][0], out, overwrite=True)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert card_from_metadata(meta).kind == "radiology.classifier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no .partial or .old left


def test_non_downstream_checkpoint_fails_by_name(tmp_path: Path):
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.backbones.checkpoint import save_backbone

    encoder = save_backbone(create_backbone("test_vit"), tmp_path / "encoder.safetensors")
    out = tmp_path / "bundle"
    with pytest.raises(NotDeployableError, match=r"encoder\.safetensors is not a downstream checkpoint"):
        export_bundle(encoder, out)
    assert not out.exists() and not out.with_name("bundle.partial").exists()


def test_failure_midway_leaves_no_partial_bundle(deployables, tmp_path: Path, monkeypatch):
    from domainfm.shared.deploy import bundle as bundle_module
    from domainfm.shared.outputs import write_marker

    out = tmp_path / "bundle"
    users = tmp_path / "bundle.partial"  # a fixed name a user may own: never domainfm's to delete
    users.mkdir()
    (users / "mine").write_text("the user's")
    stale = tmp_path / "bundle.partial-999999-0123abcd"  # a killed export's own, marked, leftover
    stale.mkdir()
    write_marker(stale, "bundle-partial")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module.torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(deployables["radiology.classifier"][0], out)
    assert not out.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.partial"]  # this run's partial went too
    assert (users / "mine").read_text() == "the user's"


def test_cli_exports_and_prints_the_commands(deployables, tmp_path: Path, capsys):
    checkpoint = deployables["pathology.tile_classifier"][0]
    out = tmp_path / "tiles"
    assert main(["export", "bundle", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    for command in ("verify_metadata", "verify_net_in_out", "monai.bundle run", SCHEMA_MD5, str(SCHEMA_FILE)):
        assert command in printed
    assert main(["export", "bundle", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
