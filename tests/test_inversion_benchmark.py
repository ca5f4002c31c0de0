"""Smoke test of benchmarks/inversion.py at a tiny size (the --quick path with even smaller overrides)."""

import json
import os

import pytest

from benchmarks import inversion


@pytest.mark.slow
def test_benchmark_writes_results_and_plots(tmp_path):
    out = str(tmp_path / "inv")
    inversion.main(["--quick", "--out", out, "--models", "mlp", "--methods", "ig", "--batch-sizes", "1",
                    "--steps", "10", "--targets", "1", "--restarts", "1", "--noise-variances", "0,1e-2",
                    "--speed-restarts", "2", "--speed-steps", "5", "--denoiser-steps", "10"])
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["environment"]["devices"]
    (row,) = res["figures"]["batch_sweep"]
    assert (row["model"], row["method"], row["batch_size"]) == ("mlp", "ig", 1)
    assert 0.0 <= row["label_accuracy"] <= 1.0 and row["psnr"] > 0 and "denoised_psnr" in row
    assert [r["variance"] for r in res["figures"]["noise_sweep"]] == [0.0, 1e-2]
    (speed,) = res["figures"]["speed"]
    assert speed["model"] == "mlp" and speed["restarts"] == 2 and speed["steps"] == 5
    # both timings were measured (the speed-up is their ratio by construction, so it is not asserted)
    assert 0 < speed["vmapped_s"] < 600 and 0 < speed["sequential_s"] < 600
    assert os.path.exists(os.path.join(out, "inversion_grid.png"))
    assert os.path.exists(os.path.join(out, "inversion_metrics.png"))
