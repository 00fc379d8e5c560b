import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from domainfm.cli import COMMANDS, GROUPS, main
from domainfm.shared.config import configs_root, read_header
from domainfm.shared.optional import load_object


def test_help_lists_every_group(capsys: pytest.CaptureFixture[str]):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("radiology", "pathology", "remote-sensing", "segmentation", "tiles", "bench", "info", "quickstart"):
        assert f"\n  {group} " in out


def test_console_script_is_installed():
    exe = shutil.which("domainfm") or str(Path(sys.executable).parent / "domainfm")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "remote-sensing" in result.stdout


def test_info_json_has_versions_devices_and_backbones(capsys: pytest.CaptureFixture[str]):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for package in ("torch", "timm", "monai", "zarr", "lightning"):
        assert data["versions"][package], package
    assert data["devices"][0]["type"] == "cpu"
    names = {b["name"] for b in data["backbones"]}
    assert {"vit_base_patch16_224", "satvision_toa_giant", "test_vit"} <= names


def test_every_command_table_entry_imports():
    targets = list(COMMANDS.values())
    for group in GROUPS.values():
        targets += group.verbs().values()
    for target in targets:
        assert callable(load_object(target)), target


def test_unknown_group_verb_and_option_exit_2(capsys: pytest.CaptureFixture[str]):
    assert main(["histology"]) == 2
    assert main(["pathology", "paint"]) == 2
    assert main(["info", "--jsn"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'histology'" in err and "unknown verb 'paint'" in err and "--jsn" in err


def test_misspelled_config_key_is_reported_with_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bench.yaml"
    bad.write_text("# command: bench backbones\nbatch_sise: 4\n")
    assert main(["bench", "backbones", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: unknown key 'batch_sise' (did you mean 'batch_size'?)" in err


def test_wrong_type_in_config_is_reported_with_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bench.yaml"
    bad.write_text("# command: bench backbones\nsteps: many\n")
    assert main(["bench", "backbones", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "steps" in err


def test_domain_group_lists_its_configs(capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "--help"]) == 0
    assert "backbones" in capsys.readouterr().out
    assert main(["pathology", "configs"]) == 0
    listed = capsys.readouterr().out
    for path in configs_root().rglob("*.yaml"):
        if read_header(path)[0].split()[0] == "pathology":
            assert path.name in listed


@pytest.mark.parametrize("path", sorted(configs_root().rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_for_its_command(path: Path, capsys: pytest.CaptureFixture[str]):
    command = read_header(path)[0].split()
    assert main([*command, "--config", str(path), "--print_config"]) == 0 or pytest.fail(capsys.readouterr().err)


class _Clock:
    """A clock that moves only when a timed model runs: the bench's timings are then known exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_bench_backbones_prints_ratios(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    from domainfm.studies.shared.backbones import bench

    clock = _Clock()
    # seconds per call of each model: one warmup round, then three timed rounds with one outlier each, so
    # a mean (or counting the warmup) gives other numbers than the median of the timed rounds
    durations = {"test_resnet": [9.0, 0.004, 0.050, 0.002], "test_vit": [9.0, 0.010, 0.001, 0.030]}
    calls = {name: 0 for name in durations}
    create = bench.create_backbone

    def timed_backbone(name: str, **kwargs):
        model = create(name, **kwargs)

        def advance(module, args, output):
            clock.now += durations[name][calls[name]]
            calls[name] += 1

        model.register_forward_hook(advance)
        return model

    monkeypatch.setattr(bench, "create_backbone", timed_backbone)
    monkeypatch.setattr(bench, "time", clock)
    args = ["bench", "backbones", "--names", "[test_vit]", "--steps", "3", "--warmup", "1", "--batch_size", "2"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert calls == {"test_resnet": 4, "test_vit": 4}
    assert [r["name"] for r in rows] == ["test_resnet", "test_vit"]
    resnet, vit = 0.004, 0.010  # the medians of the timed rounds
    assert rows[0]["ratio_to_baseline"] == 1.0
    assert rows[1]["ratio_to_baseline"] == pytest.approx(resnet / vit)  # baseline time / time: 0.4
    assert [r["ms_per_batch"] for r in rows] == pytest.approx([4.0, 10.0])
    assert [r["images_per_s"] for r in rows] == pytest.approx([2 / resnet, 2 / vit])
