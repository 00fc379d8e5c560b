"""SimMIM on phantom granules at quickstart scale: held-out masked reconstruction beats the band means."""

from pathlib import Path

import pytest

from domainfm.domains.remote_sensing.workflow import run_study


@pytest.mark.slow
def test_simmim_reconstructs_held_out_chips_clearly_better_than_the_band_means(tmp_path: Path):
    results = run_study(
        tmp_path, granules=6, pretrain_epochs=40, labelled=16, task_epochs=1, device="cpu", progress=False
    )
    reconstruction = results["reconstruction"]
    assert reconstruction["masked_l1"] < 0.8 * reconstruction["mean_predictor_l1"]
    assert {(r["peft"], r["init"]) for r in results["curtain"]} == {
        ("linear", "simmim"),
        ("linear", "scratch"),
        ("full", "simmim"),
        ("full", "scratch"),
    }
