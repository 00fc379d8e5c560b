"""`domainfm bench tiling --peers` and `--sizes`: tile-count agreement, the ratios computed from what each
child measured, a missing peer named as such, and the growth table per slide size."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.studies.pathology import tiling_peers


def test_coordinate_agreement_is_the_jaccard_index_of_the_covered_area():
    ours = np.array([[0, 0], [224, 0], [448, 0]])
    theirs = np.array([[0, 0], [224, 0], [0, 224]])
    assert tiling_peers.coordinate_agreement(ours, theirs) == {"tiles": 3, "common_tiles": 2, "agreement": 0.5}
    shifted = tiling_peers.coordinate_agreement(ours, ours + np.array([112, 0]))  # a grid that starts elsewhere
    assert shifted == {"tiles": 3, "common_tiles": 0, "agreement": round(560 / 784, 3)}
    assert tiling_peers.coordinate_agreement(ours, ours[::-1])["agreement"] == 1.0
    assert tiling_peers.coordinate_agreement(ours, np.zeros((0, 2)))["agreement"] == 0.0


def test_peers_bench_runs_domainfm_in_a_child_and_compares_a_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.pathology.slides import open_slide
    from domainfm.domains.pathology.tiling import TilingParams, plan_slide

    calls = []

    def fake_peer(python, peer, slide, out, tile_px, mpp):  # keeps all but the last of domainfm's tiles
        calls.append((peer, tile_px, mpp))
        ours = np.load(out.parent / "peer-domainfm" / "tiles.zarr.origins.npy")
        out.mkdir(parents=True)
        np.save(out / "origins.npy", ours[:-1])
        return {"tiles": len(ours) - 1, "tiles_per_s": 8.0, "peak_rss_mb": 100.0, "settings": {"x": 1}}

    monkeypatch.setattr(tiling_peers, "PEERS", ("tiatoolbox", "lazyslide"))
    found = {"tiatoolbox": (sys.executable, "9.9"), "lazyslide": None}
    monkeypatch.setattr(tiling_peers, "find_peer_python", lambda peer, envs: found[peer])
    monkeypatch.setattr(tiling_peers, "peer_tile", fake_peer)
    work = tmp_path / "bench"
    args = ["bench", "tiling", "--peers", "true", "--size", "1536", "--rounds", "1", "--json"]
    assert main([*args, "--workdir", str(work)]) == 0
    result = json.loads(capsys.readouterr().out)
    handle = open_slide(work / "bench.svs")
    coords = plan_slide(handle, work / "bench.svs", TilingParams(mpps=(0.5,), tile_px=224)).grids[0.5][0]
    handle.close()
    n = len(coords)
    assert n > 5 and result["domainfm_tiles"] == n  # the child's store holds the planned tiles
    assert np.array_equal(np.load(work / "peer-domainfm" / "tiles.zarr.origins.npy"), coords)
    assert calls == [("tiatoolbox", 224, 0.5)]
    assert result["tiatoolbox_tiles"] == n - 1 and result["tiatoolbox_common_tiles"] == n - 1
    assert result["agreement_tiatoolbox"] == round((n - 1) / n, 3)
    assert result["ratio_vs_tiatoolbox"] == round(result["domainfm_tiles_per_s"] / 8.0, 2)
    assert result["ratio_vs_tiatoolbox_rounds"] == [round(result["domainfm_tiles_per_s"] / 8.0, 2)]
    assert result["tiatoolbox_version"] == "9.9" and result["tiatoolbox_settings"] == {"x": 1}
    assert result["lazyslide"] == tiling_peers.MISSING and "bench-peers-env" in tiling_peers.MISSING
    assert result["domainfm_peak_rss_mb"] > 100  # the child's own peak: an interpreter with torch imported


def test_growth_reports_medians_per_size_and_removes_each_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rates = iter([10.0, 30.0, 20.0, 5.0, 9.0, 7.0])
    rss = iter([100.0, 110.0, 105.0, 120.0, 118.0, 119.0])
    seen = []

    def fake_tile(slide, out, tile_px, mpp, threads):
        seen.append((slide.name, slide.is_file(), tile_px, threads))
        return {"tiles": 4, "tiles_per_s": next(rates), "peak_rss_mb": next(rss)}

    monkeypatch.setattr(tiling_peers, "domainfm_tile", fake_tile)
    result = tiling_peers.run_growth([512, 768], tmp_path, 224, 2, rounds=3)
    assert seen == [("growth-512.svs", True, 224, 2)] * 3 + [("growth-768.svs", True, 224, 2)] * 3
    assert result["tiles_per_s_512"] == 20.0 and result["tiles_per_s_768"] == 7.0
    assert result["peak_rss_mb_512"] == 105.0 and result["peak_rss_mb_768"] == 119.0
    assert result["tiles_per_s_ratio_largest_vs_smallest"] == 0.35
    assert result["peak_rss_ratio_largest_vs_smallest"] == round(119.0 / 105.0, 2)
    assert not list(tmp_path.glob("growth-*"))  # every slide removed once measured


@pytest.mark.parametrize("peer, least", [("tiatoolbox", 0.9), ("lazyslide", 0.7)])
def test_a_peer_tiles_the_phantom_like_domainfm(tmp_path: Path, peer: str, least: float):
    """Runs only where the peer is installed (here or in .venv-peers/<peer>); its tiles cover about the same tissue."""
    found = tiling_peers.find_peer_python(peer, None)
    if found is None:
        pytest.skip(f"{peer} is not installed here or in .venv-peers/{peer} (make bench-peers-env)")
    from domainfm.studies.pathology.phantom import write_phantom_slide

    slide = write_phantom_slide(tmp_path / "s.svs", 1536, seed=0, mpp=0.5).path
    ours = tiling_peers.domainfm_tile(slide, tmp_path / "tiles.zarr", 224, 0.5, 2)
    theirs = tiling_peers.peer_tile(found[0], peer, slide, tmp_path / peer, 224, 0.5)
    tiles = np.load(tmp_path / peer / "tiles.npy", mmap_mode="r")
    assert tiles.shape == (theirs["tiles"], 224, 224, 3) and tiles.dtype == np.uint8
    assert tiles[:, 100:124, 100:124].std() > 5  # decoded tissue, not an empty buffer
    agreement = tiling_peers.coordinate_agreement(
        np.load(tmp_path / "tiles.zarr.origins.npy"), np.load(tmp_path / peer / "origins.npy")
    )
    assert agreement["tiles"] == theirs["tiles"] and agreement["agreement"] >= least, (ours, agreement)
