"""Shared helpers for the benchmark scripts: environment record, results JSON, argument parsing, timing."""

import argparse
import json
import os
import time
from typing import Any, Callable

import numpy as np

from fedjax_attacks.results import environment, to_json


def write_results(out_dir: str, results: dict) -> str:
    """Writes ``results`` plus ``environment()`` (``fedjax_attacks.results``) to ``out_dir/results.json``;
    returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": environment(), **results}
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(to_json(payload), f, indent=2)
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


def replace_readme_section(readme: str, name: str, markdown: str) -> None:
    """Replaces the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the file ``readme`` with
    ``markdown`` (tables the benchmarks render from their ``results.json``, so the README never holds hand-copied
    figures). ``ValueError`` if the markers are missing or out of order."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(readme) as f:
        text = f.read()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{readme} has no section markers {begin} ... {end}")
    with open(readme, "w") as f:
        f.write(text[: i + len(begin)] + "\n" + markdown.strip("\n") + "\n" + text[j:])


def mean_ci(mean: float, std: float, n: int) -> str:
    """``mean +- half-width`` of a normal 95% confidence interval over ``n`` seeds (``std`` the population std)."""
    half = 1.96 * std / np.sqrt(max(n - 1, 1)) if n > 1 else float("nan")
    return f"{mean:.3f} +- {half:.3f}"
