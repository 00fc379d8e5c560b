"""`domainfm bench stream --peers`: a missing peer is named as such, an installed one delivers every tile of
every epoch as uint8 batches, and the ratio is TileStream's rate over the peer's."""

from pathlib import Path

import numpy as np
import pytest

from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.studies.shared.tiles import peers


def test_missing_peers_are_named_and_an_installed_one_is_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("monai")
    rng = np.random.default_rng(0)
    sources = []
    for i, n in enumerate((40, 30)):
        sources.append(tmp_path / f"tiles_{i}.npy")
        np.save(sources[-1], rng.integers(0, 255, (n, 3, 224, 224), dtype=np.uint8))
    store = tmp_path / "store.zarr"
    assert ingest(sources, store, npy_spec(sources[0]), read_npy_tiles, "bench.npy", progress=False).ok
    monkeypatch.setattr(peers, "installed", lambda peer: peer == "monai")
    reads = []
    real_read = peers._read

    def counting_read(make, epochs, expected):
        rate, peak = real_read(make, epochs, expected)  # raises unless every tile of every epoch came, uint8
        reads.append((epochs, expected, rate))
        return rate, peak

    monkeypatch.setattr(peers, "_read", counting_read)
    results = peers.run_peers(sources, store, tmp_path, batch=16, epochs=2)
    assert results["webdataset"] == results["litdata"] == peers.MISSING
    assert "bench-peers" in peers.MISSING
    assert [(e, n) for e, n, _ in reads] == [(2, 70), (2, 70)]  # TileStream, then MONAI
    ours, monai = reads[0][2], reads[1][2]
    assert results["ratio_vs_monai"] == round(ours / monai, 2)
    assert results["monai_version"] and results["monai_samples_per_s"] == round(monai, 1)
    assert not (tmp_path / "peer-monai").exists()
