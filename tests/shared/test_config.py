from dataclasses import dataclass
from pathlib import Path

import pytest

from domainfm.shared.config import (
    ConfigError,
    RunRecord,
    configs_root,
    load_config,
    read_header,
    resolve_config_path,
    save_resolved_config,
    set_current_run,
    shipped_configs,
)


@dataclass(frozen=True)
class Optimizer:
    lr: float = 1e-3
    weight_decay: float = 0.05


def train(
    backbone: str = "test_vit",
    epochs: int = 1,
    optimizer: Optimizer = Optimizer(),
    extra: dict | None = None,
    out: Path = Path("runs"),
) -> None:
    """A command used to exercise the config mechanism."""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_valid_config_is_typed(tmp_path: Path):
    path = _write(tmp_path, "epochs: 3\noptimizer:\n  lr: 0.1\nextra:\n  anything: [1, 2]\n")
    kwargs = load_config(path, train)
    assert kwargs["epochs"] == 3 and kwargs["optimizer"] == Optimizer(lr=0.1)
    assert kwargs["extra"] == {"anything": [1, 2]}


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("epoch: 3\n", "'epoch'", "did you mean 'epochs'"),
        ("optimizer:\n  wieght_decay: 0.1\n", "'optimizer.wieght_decay'", "did you mean 'optimizer.weight_decay'"),
    ],
)
def test_misspelled_key_names_key_and_file(tmp_path: Path, text: str, key: str, hint: str):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, train)
    message = str(info.value)
    assert str(path) in message and f"unknown key {key}" in message and hint in message


def test_wrong_type_names_key_and_file(tmp_path: Path):
    path = _write(tmp_path, "epochs: three\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, train)
    assert str(path) in str(info.value) and "epochs" in str(info.value)


def test_not_a_mapping_and_bad_yaml_name_the_file(tmp_path: Path):
    for text, reason in (("- 1\n- 2\n", "expected a mapping"), ("a: [1,\n", "not valid YAML")):
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError, match=reason) as info:
            load_config(path, train)
        assert str(path) in str(info.value)


def test_configs_resolve_from_checkout_and_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # no configs/ in the working directory: the shipped copy is found
    assert resolve_config_path("configs/quickstart.yaml") == configs_root() / "quickstart.yaml"
    assert resolve_config_path("quickstart.yaml") == configs_root() / "quickstart.yaml"
    with pytest.raises(ConfigError, match=r"configs/nope\.yaml does not exist"):
        resolve_config_path("configs/nope.yaml")


def test_every_shipped_config_has_a_header():
    configs = list(configs_root().rglob("*.yaml"))
    assert configs, "configs/ ships at least the quickstart defaults"
    assert len(shipped_configs()) == len(configs)
    for path in configs:
        command, _ = read_header(path)
        assert command


def test_resolved_config_is_written_with_provenance(tmp_path: Path):
    set_current_run(RunRecord("bench backbones", ["bench", "backbones", "--steps", "3"], "steps: 3\n"))
    path = save_resolved_config(tmp_path / "out")
    text = path.read_text()
    assert text.startswith("# command: bench backbones\n")
    assert "invoked as: domainfm bench backbones --steps 3" in text and text.endswith("steps: 3\n")
