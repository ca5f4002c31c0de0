"""The speed benchmarks' PyTorch baseline device (``--torch-device``): defaults, refusals, and the record of both
devices in results.json. PyTorch is an optional extra: the tests that need it skip without it."""

import pytest

from benchmarks import aggregators_speed as speed
from benchmarks import fl_speed


def test_torch_device_defaults_to_the_gpu_when_present_and_refuses_what_is_not_there():
    torch = pytest.importorskip("torch")
    assert speed.torch_device("cpu").type == "cpu"
    assert speed.torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            speed.torch_device("cuda")
    with pytest.raises(ValueError, match="torch-device"):
        speed.torch_device("banana")
    record = speed.devices_record(speed.torch_device("cpu"))
    assert record["torch"] == "cpu" and record["jax"] and ":" in record["jax"][0]


def test_without_pytorch_there_is_no_baseline_device(monkeypatch):
    monkeypatch.setattr(speed, "torch", None)
    assert speed.torch_device("cuda") is None
    assert speed.devices_record(None)["torch"] is None
    assert fl_speed.torch_device is speed.torch_device  # both benchmarks resolve the device the same way


@pytest.mark.slow
def test_aggregators_speed_times_pytorch_on_the_chosen_device():
    torch = pytest.importorskip("torch")
    rows = speed.run([10], [64], repeats=1, device=speed.torch_device("cpu"))
    timed = {r["rule"] for r in rows if "torch_ms" in r}
    assert {"median", "krum", "trimmed_mean"} <= timed
    assert torch.get_num_threads() >= 1
