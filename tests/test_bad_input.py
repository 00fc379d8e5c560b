"""Nothing silently wrong: out-of-range options, bad files and a broken disk end in one line and exit 2.

Every verb of :data:`domainfm.cli.GROUPS` and :data:`domainfm.cli.COMMANDS` is enumerated, so a new verb is
covered as soon as it is listed: each range-typed option gets values outside its range, each required input
path gets a folder, an empty file, random bytes and a missing file. No test trains a model.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import typing
from pathlib import Path

import pytest
import torch

from domainfm.cli import COMMANDS, GROUPS, main
from domainfm.shared import config as cfg
from domainfm.shared.errors import DomainfmError
from domainfm.shared.optional import load_object

OUTPUTS = {"out", "workdir", "sheet"}
OUTPUT_NAMES = {"explain": "overlay.png", "models convert": "converted.safetensors"}  # what these verbs accept


def _verbs() -> dict[str, tuple[list[str], typing.Callable]]:
    verbs = {name: ([name], load_object(target)) for name, target in COMMANDS.items()}
    for group, entry in GROUPS.items():
        for verb, target in entry.verbs().items():
            verbs[f"{group} {verb}"] = ([group, verb], load_object(target))
    return verbs


VERBS = _verbs()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_no_flag_is_shadowed_by_a_negation(verb: str):
    """jsonargparse spells ``--no_X`` as "X false" for a flag X, so a flag may not itself be named ``no_...``.

    (``pathology phantom --no_mpp`` was parsed as False and wrote a slide with mpp.)
    """
    parameters = inspect.signature(VERBS[verb][1]).parameters
    assert not [name for name in parameters if name.startswith("no_")]


def _base_type(hint: typing.Any) -> typing.Any:
    """The restricted type inside ``X``, ``X | None`` or ``list[X]``."""
    for arg in typing.get_args(hint) or (hint,):
        inner = typing.get_args(arg) if typing.get_origin(arg) is list else (arg,)
        for candidate in inner:
            if candidate in BAD_VALUES:
                return candidate
    return None


BAD_VALUES: dict[typing.Any, list[str]] = {
    cfg.PositiveInt: ["0", "-1", "12345678901234567890123"],
    cfg.NonNegativeInt: ["-1", "12345678901234567890123"],
    cfg.Seed: ["-1", "12345678901234567890123"],
    cfg.PositiveFloat: ["0", "-1", "inf", "nan"],
    cfg.NonNegativeFloat: ["-1", "inf"],
    cfg.Fraction: ["0", "1.5", "nan"],
    cfg.Probability: ["-0.1", "1.5"],
    cfg.HoldOutFraction: ["1", "-0.1"],
    cfg.OpenFraction: ["0", "1"],
}


def _required_argv(words: list[str], function: typing.Callable, tmp_path: Path, bad: Path | None) -> list[str]:
    """``words`` plus every required parameter: inputs get ``bad`` (or a missing path), outputs a new path."""
    hints = typing.get_type_hints(function)
    argv = list(words)
    for name, param in inspect.signature(function).parameters.items():
        if param.default is not inspect.Parameter.empty:
            continue
        hint = hints[name]
        if "Path" in str(hint):
            output = OUTPUT_NAMES.get(" ".join(words), "new_output")
            value = str(tmp_path / output) if name in OUTPUTS else str(bad or tmp_path / "missing")
        elif typing.get_origin(hint) is typing.Literal:
            value = str(typing.get_args(hint)[0])
        elif name == "name":
            value = "uni"  # a known foundation model: the paths are what is under test
        else:
            value = "test_vit"
        argv += [value] if param.kind is inspect.Parameter.POSITIONAL_ONLY else [f"--{name}", value]
    return argv


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


RANGE_CASES = [
    (verb, name, value)
    for verb, (_, function) in VERBS.items()
    for name, hint in typing.get_type_hints(function).items()
    if (kind := _base_type(hint)) is not None
    for value in BAD_VALUES[kind]
]


def test_every_verb_family_has_range_checked_options():
    verbs = {verb for verb, _, _ in RANGE_CASES}
    for family in (
        "radiology train",
        "pathology train",
        "remote-sensing pretrain",
        "segmentation train",
        "tiles ingest",
    ):
        assert family in verbs
    options = {(verb, name) for verb, name, _ in RANGE_CASES}
    assert {("pathology train", "epochs"), ("pathology train", "lr"), ("pathology train", "labelled")} <= options
    assert ("pathology probe", "labelled") in options and ("radiology eval", "fractions") in options


@pytest.mark.parametrize(("verb", "option", "value"), RANGE_CASES, ids=[f"{v}-{o}={x}" for v, o, x in RANGE_CASES])
def test_out_of_range_option_exits_2_before_any_output(
    verb: str, option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    words, function = VERBS[verb]
    argv = _required_argv(words, function, tmp_path, None)
    assert main([*argv, f"--{option}", value]) == 2
    line = _one_line(capsys.readouterr().err)
    assert repr(option) in line, line
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_non_finite_and_huge_values_inside_dict_options_are_refused(tmp_path: Path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("peft_options:\n  rank: .inf\n")
    assert (
        main(["pathology", "train", "--store", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    )
    assert "'peft_options.rank'" in _one_line(capsys.readouterr().err)
    bad.write_text("options:\n  r: 12345678901234567890123\n")
    assert main(["peft", "count", "--backbone", "test_vit", "--method", "lora", "--config", str(bad)]) == 2
    assert "'options.r'" in _one_line(capsys.readouterr().err)


INPUT_VERBS = [
    verb
    for verb, (_, function) in VERBS.items()
    if any(
        "Path" in str(hint)
        and name not in OUTPUTS
        and inspect.signature(function).parameters[name].default is inspect.Parameter.empty
        for name, hint in typing.get_type_hints(function).items()
        if name != "return"
    )
]
# Verbs that report per-file results on stdout and exit 1 when any file failed: ``tiles verify`` (a checker)
# and the ingest engine behind ``pathology tile`` (failed sources are listed; finished ones are kept).
EXIT_1_REPORTS = {"tiles verify", "pathology tile"}
BAD_INPUTS = ["folder", "empty", "random", "random_png", "missing"]


def _bad_input(kind: str, tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if kind == "folder":
        (inputs / "folder.safetensors").mkdir()
        return inputs / "folder.safetensors"
    if kind == "missing":
        return inputs / "missing.safetensors"
    path = inputs / ("bytes.png" if kind == "random_png" else "bytes.safetensors")
    path.write_bytes(b"" if kind == "empty" else os.urandom(512))
    return path


def test_input_verbs_are_enumerated():
    assert {"pathology train", "radiology eval", "export bundle", "explain", "tiles ingest"} <= set(INPUT_VERBS)


@pytest.mark.parametrize("kind", BAD_INPUTS)
@pytest.mark.parametrize("verb", INPUT_VERBS)
def test_bad_input_file_exits_2_with_one_line_naming_it(
    verb: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    words, function = VERBS[verb]
    bad = _bad_input(kind, tmp_path)
    code = main(_required_argv(words, function, tmp_path, bad))
    captured = capsys.readouterr()
    # a folder argument of `pathology tile` expands to its slides and images; one holding none is refused
    # before tiling, as a bad argument (exit 2), instead of failing as a slide
    if verb in EXIT_1_REPORTS and not (verb == "pathology tile" and kind == "folder"):
        assert code == 1 and str(bad) in captured.out and "Traceback" not in captured.err + captured.out
        return
    assert code == 2, captured.err
    line = _one_line(captured.err)
    assert bad.name in line, line


def test_unexpected_error_is_one_line_exit_1_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import domainfm.info

    def broken(json: bool = False) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(domainfm.info, "info", broken)
    assert main(["info"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "ZeroDivisionError: a bug" in line and "DOMAINFM_DEBUG=1" in line
    monkeypatch.setenv("DOMAINFM_DEBUG", "1")
    assert main(["info"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _phantom(out: Path) -> list[str]:
    return ["segmentation", "phantom", "--out", str(out), "--n", "4", "--size", "16"]


def test_disk_full_names_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    def full(self: Path, *args: typing.Any, **kwargs: typing.Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name

    monkeypatch.setattr(Path, "mkdir", full)
    out = tmp_path / "out"
    assert main(_phantom(out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and "no space left" in line


def test_read_only_output_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "out"
    if os.geteuid() == 0:  # root ignores permissions: raise what a read-only folder would

        def denied(self: Path, *args: typing.Any, **kwargs: typing.Any) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

        monkeypatch.setattr(Path, "mkdir", denied)
    else:
        parent.chmod(0o500)
    try:
        assert main(_phantom(out)) == 2
    finally:
        parent.chmod(0o700)
    line = _one_line(capsys.readouterr().err)
    assert str(parent) in line and "permission denied" in line


def test_symlink_loop_is_one_line(tmp_path: Path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["pathology", "probe", str(loop)]) == 2
    assert "loop" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a YAML text file"),
        ("epochs: 1\n".encode("utf-16"), "not a YAML text file"),
        (b"a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n", "aliases"),
        (b"epochs: [1\n", "not valid YAML"),
    ],
    ids=["binary", "utf16", "alias-bomb", "broken"],
)
def test_bad_config_file_is_one_line_naming_it(content: bytes, expected: str, tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["bench", "backbones", "--config", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line and expected in line


def test_alias_in_an_option_value_is_refused(capsys):
    assert (
        main(["peft", "count", "--backbone", "test_vit", "--method", "lora", "--options", "{a: &x [1, 2], b: *x}"]) == 2
    )
    assert "options" in _one_line(capsys.readouterr().err)


def test_shipped_configs_still_validate():
    for command, path, _ in cfg.shipped_configs():
        group, _, verb = command.partition(" ")
        function = VERBS[command][1] if command in VERBS else VERBS[f"{group} {verb}"][1]
        cfg.load_config(path, function)


# Checkpoints: bad metadata and reshaped tensors name the file (and the command that writes such files).


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


def _reshape_one(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = next(k for k, v in state.items() if v.ndim >= 2)
    return {**state, key: torch.zeros(*[s + 1 for s in state[key].shape])}


def test_convirt_checkpoint_with_bad_metadata_json(tmp_path: Path, capsys):
    path = _write(tmp_path / "convirt.safetensors", {"x": torch.zeros(1)}, {"domainfm_convirt": "{not json"})
    assert main(["radiology", "eval", "probe", "--checkpoint", str(path), "--store", str(tmp_path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line and "not valid JSON" in line


def test_convirt_checkpoint_with_missing_fields(tmp_path: Path):
    from domainfm.domains.radiology.pretrain import load_convirt

    path = _write(tmp_path / "c.safetensors", {"x": torch.zeros(1)}, {"domainfm_convirt": json.dumps({"text": 3})})
    with pytest.raises(DomainfmError, match=r"c\.safetensors.*domainfm radiology pretrain"):
        load_convirt(path)


def test_convirt_text_tower_folder_outside_the_checkpoint_is_not_read(tmp_path: Path):
    from domainfm.domains.radiology.pretrain import confined_text_model, load_convirt

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    meta = {"text": {"local_model": str(elsewhere), "max_length": 16}, "tokenizer": None}
    path = _write(run / "convirt.safetensors", {"x": torch.zeros(1)}, {"domainfm_convirt": json.dumps(meta)})
    with pytest.raises(DomainfmError, match="--text_model"):
        load_convirt(path)
    assert confined_text_model(path, elsewhere, elsewhere) == elsewhere.resolve()  # the user allowed it
    assert confined_text_model(path, run / "bert", None) == (run / "bert").resolve()  # beside the checkpoint


def _call_arguments(text: str) -> str:
    """The text up to the parenthesis that closes a call whose ``(`` was just before ``text``."""
    depth = 1
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[:i]
    return text


def test_transformers_loads_never_trust_remote_code():
    root = Path(__file__).resolve().parents[1] / "domainfm"
    calls = [(path, after) for path in root.rglob("*.py") for after in path.read_text().split(".from_pretrained(")[1:]]
    assert calls
    for path, after in calls:
        arguments = _call_arguments(after)
        assert "trust_remote_code=False" in arguments and "local_files_only=True" in arguments, (path, arguments)


def test_vae_checkpoint_with_reshaped_tensors(tmp_path: Path):
    from domainfm.domains.segmentation.models import load_vae, save_vae
    from domainfm.domains.segmentation.vae import TINY_VAE, create_vae
    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    good = save_vae(create_vae(TINY_VAE), TINY_VAE, tmp_path / "good.safetensors")
    state = _reshape_one(create_vae(TINY_VAE).state_dict())
    meta = {k: json.dumps(v) for k, v in checkpoint_metadata(good).items()}
    path = _write(tmp_path / "vae.safetensors", state, meta)
    with pytest.raises(DomainfmError, match=r"vae\.safetensors.*domainfm segmentation"):
        load_vae(path)
    broken = _write(tmp_path / "meta.safetensors", state, {"domainfm_segmentation": "{oops"})
    with pytest.raises(DomainfmError, match=r"meta\.safetensors.*not valid JSON"):
        load_vae(broken)


def test_unet_checkpoint_with_reshaped_tensors(tmp_path: Path):
    from domainfm.domains.segmentation.models import UNetSegmenter, load_segmenter, save_segmenter
    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    model = UNetSegmenter([4, 8], [2], num_res_units=0)
    good = save_segmenter(model, tmp_path / "good.safetensors")
    meta = {k: json.dumps(v) for k, v in checkpoint_metadata(good).items()}
    path = _write(tmp_path / "unet.safetensors", _reshape_one(model.state_dict()), meta)
    with pytest.raises(DomainfmError, match=r"unet\.safetensors.*domainfm segmentation"):
        load_segmenter(path)
    meta["domainfm_segmentation"] = json.dumps({"kind": "unet", "unet": {"channels": "x"}})
    with pytest.raises(DomainfmError, match=r"unet2\.safetensors"):
        load_segmenter(_write(tmp_path / "unet2.safetensors", model.state_dict(), meta))


def test_simmim_checkpoint_with_reshaped_tensors(tmp_path: Path):
    from domainfm.domains.remote_sensing.pretrain import METADATA_KEY, load_encoder
    from domainfm.shared.backbones import create_backbone

    backbone = create_backbone("test_swinv2", in_chans=2, img_size=32)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    meta = {"backbone": "test_swinv2", "image_size": 32, "bands": [{"name": "a"}, {"name": "b"}]}
    reshaped = _reshape_one({k: v for k, v in state.items() if "patch_embed" not in k})
    path = _write(tmp_path / "simmim.safetensors", {**state, **reshaped}, {METADATA_KEY: json.dumps(meta)})
    with pytest.raises(DomainfmError, match=r"simmim\.safetensors.*remote-sensing pretrain"):
        load_encoder(path)
    bad = _write(tmp_path / "bad.safetensors", state, {METADATA_KEY: json.dumps({"image_size": 32})})
    with pytest.raises(DomainfmError, match=r"bad\.safetensors"):
        load_encoder(bad)


def test_bundle_commands_quote_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    import domainfm.shared.deploy.bundle as bundle_module

    out = tmp_path / "my bundle; rm -rf x"
    monkeypatch.setattr(bundle_module, "export_bundle", lambda checkpoint, out, overwrite=False: out)
    assert main(["export", "bundle", "--checkpoint", str(tmp_path / "c.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"--bundle_root '{out}'" in printed and f"'{out}/configs/metadata.json'" in printed


NOISY = """
import sys, warnings
from pathlib import Path
from domainfm import cli

def noisy(out: Path) -> int:
    warnings.warn("isinstance(treespec, LeafSpec) is deprecated", DeprecationWarning, stacklevel=1)
    warnings.warn("3 sources failed\\n  during ingest", UserWarning, stacklevel=1)
    return 0

if __name__ == "__main__":
    cli.COMMANDS["noisy"] = "noisy_command:noisy"
    warnings.simplefilter("always")
    sys.exit(cli.main(["noisy", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("debug", ["", "1"])
def test_warnings_are_one_line_without_source_and_library_deprecations_hidden(tmp_path: Path, debug: str):
    import subprocess
    import sys

    (tmp_path / "noisy_command.py").write_text(NOISY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    env["DOMAINFM_DEBUG"] = debug
    run = subprocess.run(
        [sys.executable, str(tmp_path / "noisy_command.py"), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    if debug:  # developers see everything, with the source line
        assert "LeafSpec" in run.stderr and "noisy_command.py" in run.stderr
    else:
        assert run.stderr == "domainfm: warning: 3 sources failed during ingest\n", run.stderr
