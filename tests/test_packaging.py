"""The wheel ships configs/ inside the package, and an installed copy finds them without a checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(dist)], cwd=ROOT, check=True)
    (wheel,) = dist.glob("domainfm-*.whl")
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_wheel_contains_every_config(unpacked_wheel: Path):
    shipped = {p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml")}
    packaged = {
        p.relative_to(unpacked_wheel / "domainfm" / "configs") for p in unpacked_wheel.rglob("configs/**/*.yaml")
    }
    assert shipped and shipped == packaged


def test_installed_package_resolves_configs_without_a_checkout(unpacked_wheel: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(unpacked_wheel)}
    code = (
        "import domainfm, sys; from domainfm.shared.config import resolve_config_path;"
        "print(domainfm.__file__); print(resolve_config_path('configs/quickstart.yaml'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    module_file, config = result.stdout.split()
    assert module_file.startswith(str(unpacked_wheel)), result.stderr
    assert config == str(unpacked_wheel / "domainfm" / "configs" / "quickstart.yaml")
    run = [sys.executable, "-m", "domainfm", "quickstart", "--config", "configs/quickstart.yaml", "--print_config"]
    printed = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    assert "out: quickstart_report" in printed.stdout
