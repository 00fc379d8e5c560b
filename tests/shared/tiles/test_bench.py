"""`domainfm bench stream`: every field reported, and the rates and ratios are what the timed passes took, on
a clock that moves by known amounts only while those passes run."""

import importlib
import json

import pytest
import torch

from domainfm.cli import main

TILES = 192
# seconds per tile of each timed pass, per round (the stream and decode-limit passes are interleaved)
DECODE_LIMIT = [0.001, 0.0001, 0.002]  # rates 1000, 10000, 500: median 1000
STREAM = [0.002, 0.004, 0.0005]  # rates 500, 250, 2000: median 500
STREAM_STAMPED = [0.00125, 0.0025, 0.0004]  # rates 800, 400, 2500: median 800
STREAM_UNCHECKED = [0.001, 0.002, 0.00025]  # rates 1000, 500, 4000: median 1000
STREAM_NORMALIZED = [0.004, 0.004, 0.008]  # rates 250, 250, 125: median 250
PNG_DATALOADER = 0.01  # rate 100
INGEST = 0.004  # rate 250


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_stream_benchmark_reports_the_timed_rates_and_ratios(
    capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # the modules themselves: the package re-exports functions under some of the same names
    store, stream, ingest_module = (
        importlib.import_module(f"domainfm.shared.tiles.{name}") for name in ("store", "stream", "ingest")
    )
    bench = importlib.import_module("domainfm.studies.shared.tiles.bench")

    clock = _Clock()
    calls = {"decode_limit": 0, "stream": 0, "stream_stamped": 0, "stream_unchecked": 0, "stream_normalized": 0}
    calls["png"] = 0
    real_decode_limit, real_shard_file, real_ingest = (
        bench.decode_limit,
        store.TileStore.shard_file,
        ingest_module.ingest,
    )

    decoding = [False]

    def decode_limit(path):
        calls["decode_limit"] += 1
        decoding[0] = True
        try:
            return real_decode_limit(path)
        finally:
            decoding[0] = False

    def shard_file(self, shard):  # the decode limit opens each shard file once, on the clock
        if decoding[0]:
            start, stop = self.shard_ranges()[shard]
            clock.now += DECODE_LIMIT[calls["decode_limit"] - 1] * (stop - start)
        return real_shard_file(self, shard)

    class TimedStream(stream.TileStream):
        def __init__(self, *args, normalize: bool = False, **kwargs) -> None:
            super().__init__(*args, normalize=normalize, **kwargs)
            unchecked = self.store.verify_reads == "off"
            self.timed_name = "stream_normalized" if normalize else "stream_unchecked" if unchecked else "stream"
            if self.timed_name == "stream" and calls["stream"] > calls["stream_stamped"]:
                self.timed_name = "stream_stamped"  # each round's second checked pass: the stamps kept
            calls[self.timed_name] += 1

        def __iter__(self):
            timings = {
                "stream": STREAM,
                "stream_stamped": STREAM_STAMPED,
                "stream_unchecked": STREAM_UNCHECKED,
                "stream_normalized": STREAM_NORMALIZED,
            }
            seconds = timings[self.timed_name][calls[self.timed_name] - 1]
            for batch in super().__iter__():
                clock.now += seconds * len(batch["tiles"])
                yield batch

    class TimedLoader(torch.utils.data.DataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                clock.now += PNG_DATALOADER * len(batch)
                calls["png"] += len(batch)
                yield batch

    def ingest(*args, **kwargs):
        summary = real_ingest(*args, **kwargs)
        clock.now += INGEST * summary.n_tiles
        return summary

    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "decode_limit", decode_limit)
    monkeypatch.setattr(store.TileStore, "shard_file", shard_file)
    monkeypatch.setattr(stream, "TileStream", TimedStream)
    monkeypatch.setattr(torch.utils.data, "DataLoader", TimedLoader)
    monkeypatch.setattr(ingest_module, "ingest", ingest)
    args = ["bench", "stream", "--tiles", str(TILES), "--batch_size", "64", "--rounds", "3", "--png_tiles", "64"]
    assert main([*args, "--workdir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert calls == {
        "decode_limit": 3,
        "stream": 3,
        "stream_stamped": 3,
        "stream_unchecked": 3,
        "stream_normalized": 3,
        "png": 64,
    }
    assert result["png_tiles_measured"] == 64 and result["tiles"] == TILES
    assert result["decode_limit_rounds"] == pytest.approx([1000.0, 10000.0, 500.0])
    assert result["stream_rounds"] == pytest.approx([500.0, 250.0, 2000.0])
    assert result["stream_normalized_rounds"] == pytest.approx([250.0, 250.0, 125.0])
    assert result["decode_limit_samples_per_s"] == pytest.approx(1000.0)  # medians
    assert result["stream_samples_per_s"] == pytest.approx(500.0)
    assert result["stream_normalized_samples_per_s"] == pytest.approx(250.0)
    assert result["png_dataloader_samples_per_s"] == pytest.approx(100.0)
    assert result["ingest_tiles_per_s"] == pytest.approx(250.0)
    assert result["ratio_vs_decode_limit"] == pytest.approx(0.5)
    assert result["stream_unchecked_samples_per_s"] == pytest.approx(1000.0)
    assert result["checksum_cost_ratio"] == pytest.approx(0.5)
    assert result["stream_stamped_rounds"] == pytest.approx([800.0, 400.0, 2500.0])
    assert result["stamped_cost_ratio"] == pytest.approx(0.8)
    assert result["stamped_files"] == 2  # both shard files of the store, stamped by every checked first pass
    assert result["normalized_ratio_vs_decode_limit"] == pytest.approx(0.25)
    assert result["ratio_vs_png_dataloader"] == pytest.approx(5.0)
    assert result["peak_rss_mb"] > 0 and result["stream_peak_rss_mb"] > 0
