"""Shared helpers for the benchmark scripts: environment record, results JSON, argument parsing, timing."""

import argparse
import dataclasses
import json
import os
import platform
import time
from importlib import metadata
from typing import Any, Callable

import jax
import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "gymnax", "brax", "numpy", "scikit-learn", "torch")


def environment() -> dict:
    """Versions of the packages that matter, the JAX device(s), the CPU count and the host platform."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
    }


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_json(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_results(out_dir: str, results: dict) -> str:
    """Writes ``results`` plus ``environment()`` to ``out_dir/results.json``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": environment(), **results}
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(_to_json(payload), f, indent=2)
    return path


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every benchmark has: ``--out`` and ``--quick``."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--out", default=os.path.join("results", name), help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke-size run (about a minute on a 2-core CPU)")
    return p


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``fn`` must block until its result is ready (call ``jax.block_until_ready`` inside it).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
