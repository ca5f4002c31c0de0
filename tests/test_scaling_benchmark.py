"""benchmarks/scaling.py at smoke size: one worker process per device count, records and plot written."""

import json

import pytest

from benchmarks import scaling


@pytest.mark.slow
def test_quick_scaling_run_writes_rounds_memory_and_sweep_per_device_count(tmp_path):
    scaling.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "scaling.png").exists()
    rows = results["fl"]
    assert {(r["devices"], r["aggregator"]) for r in rows} == {(n, a) for n in (1, 4) for a in ("mean", "krum")}
    for r in rows:
        assert r["rounds_per_s"] > 0 and r["peak_bytes_per_device"] > 0
        assert r["run_cpu_s"] > 0 and r["compile_cpu_s"] > 0 and r["load_average_1min"] >= 0
        assert r["num_clients"] == 400 and r["clients_per_round"] == 16
    # every device computes w / n client updates, but the aggregators read the gathered f32[w, d]
    one = next(r for r in rows if r["devices"] == 1 and r["aggregator"] == "mean")
    assert one["peak_bytes_per_device"] > one["peak_bytes_half_w"] > 0
    assert [s["devices"] for s in results["sweep"]] == [1, 4]
    assert all(s["seeds_per_s"] > 0 and len(s["final_accuracy"]) == 4 for s in results["sweep"])
    model = results["memory_model"]
    assert model["update_bytes"] == 4 * one["dim"] and model["bytes_per_sampled_client"] >= model["update_bytes"]
    assert model["max_w_on_80GB"] > 1000
    assert results["environment"]["versions"]["jax"]
    # every record was also appended to records.jsonl as it arrived
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert records == rows[:2] + results["sweep"][:1] + rows[2:] + results["sweep"][1:]


def test_device_counts_must_divide_the_work(tmp_path):
    with pytest.raises(ValueError, match="must divide w=16"):
        scaling.main(["--quick", "--devices", "3", "--out", str(tmp_path)])
