"""The aggregator speed benchmark runs end to end at a tiny size and writes its JSON and plot."""

import json
import os

from benchmarks import aggregators_speed


def test_benchmark_writes_results(tmp_path):
    out = str(tmp_path / "agg")
    aggregators_speed.main(["--out", out, "--clients", "10", "--dims", "500", "--repeats", "1"])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    rows = results["figures"]
    assert {r["rule"] for r in rows} >= {"median", "trimmed_mean", "krum", "nnm", "bulyan"}
    for r in rows:
        assert r["jax_ms"] > 0 and r["numpy_ms"] > 0 and r["max_abs_diff_vs_numpy"] < 1e-4, r
    assert results["environment"]["devices"] and os.path.exists(os.path.join(out, "aggregators_speed.png"))
