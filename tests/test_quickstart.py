import json
from pathlib import Path

import pytest

from domainfm import quickstart as quickstart_module
from domainfm.cli import main
from domainfm.shared.report import SectionResult


def test_quickstart_writes_a_complete_report(tmp_path: Path):
    out = tmp_path / "report"
    assert main(["quickstart", "--out", str(out)]) == 0
    assert not (tmp_path / "report.partial").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["ok"] and set(results["sections"]) == set(quickstart_module.SECTIONS)
    backbones = results["sections"]["backbones"]
    assert len(backbones["table"]) == 5 and backbones["metrics"]["reload_max_abs_diff"] == 0.0
    for row in backbones["table"]:
        assert row["RGB->14 grey abs diff"] < 1e-3
    index = (out / "index.md").read_text()
    for figure in backbones["figures"]:
        assert (out / "backbones" / figure).stat().st_size > 10_000
        assert f"(backbones/{figure})" in index
    assert "| backbone |" in index
    deployment = results["sections"]["deployment"]  # MONAI's bundle run equals domainfm's predictions
    assert deployment["metrics"]["bundle_max_abs_difference"] <= 1e-4
    # pathology predict walks the held-out slide's tiles as explain does
    assert deployment["metrics"]["tiles_predicted_on_slide"] == deployment["metrics"]["tiles_explained_on_slide"] > 0
    assert all((out / "deployment" / figure).stat().st_size > 10_000 for figure in deployment["figures"])
    # The saved resolved config reruns the same command.
    assert main(["quickstart", "--config", str(out / "config.yaml"), "--print_config"]) == 0


def test_failing_section_is_reported_and_exits_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(out_dir: Path, device: object, seed: int) -> SectionResult:
        raise RuntimeError("sample data missing")

    monkeypatch.setitem(quickstart_module.SECTIONS, "broken", f"{__name__}:_broken")
    monkeypatch.setattr(f"{__name__}._broken", broken, raising=False)
    out = tmp_path / "report"
    assert main(["quickstart", "--out", str(out), "--sections", "[broken]"]) == 1
    results = json.loads((out / "results.json").read_text())
    assert not results["ok"] and "sample data missing" in results["sections"]["broken"]["summary"]
    assert "**FAILED** (broken)" in (out / "index.md").read_text()


def test_unknown_section_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["quickstart", "--out", str(tmp_path / "r"), "--sections", "[pathologyy]"]) == 2
    assert "unknown quickstart section(s) ['pathologyy']" in capsys.readouterr().err
