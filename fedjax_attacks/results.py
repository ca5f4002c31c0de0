"""Results a researcher can keep: metrics to JSON lines and CSV in one call, with the config and versions beside.

``save(out_dir, metrics, config=config, name="history")`` takes an FL ``History``, an RL ``TrainOutput.metrics``
dict, an FRL metrics dict (any NamedTuple, dataclass or mapping of arrays that share leading axes, e.g. ``[T]`` or,
vmapped, ``[S, T]``) and writes

* ``name.jsonl``: one JSON object per row (one per step, or per seed and step), index columns first;
* ``name.csv``: the same rows (a field with more axes than the rows holds a JSON list per cell);
* ``name.meta.json``: the config, the package versions and devices (``environment()``), the row axes and every
  field's dtype and shape, so ``load`` gives back the arrays exactly, and the length and SHA-256 of both data
  files, so ``load`` refuses a torn, truncated or foreign file instead of reading it.

A save never overwrites a file in place: each file is written beside its place as ``<file>.new`` and renamed over
it, the meta first. A save killed before the meta's rename leaves the previous save; killed after it, the new
data files may still wait as ``.new`` (the next save renames them), and ``load`` reads them.

The benchmarks' ``results.json`` records the same ``environment()``.
"""

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
from importlib import metadata
from typing import Any, Mapping, Optional, Sequence

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
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    }


def to_json(obj: Any) -> Any:
    """``obj`` as plain JSON types: dataclasses and mappings as dicts, tuples (NamedTuples too) and arrays as
    lists, NumPy scalars as Python numbers (non-finite floats outside arrays as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def save(out_dir: str, metrics: Any, *, config: Any = None, name: str = "metrics",
         axes: Optional[Sequence[str]] = None) -> dict:
    """Writes ``metrics`` to ``out_dir/name.jsonl``, ``name.csv`` and ``name.meta.json`` (config, versions,
    devices, dtypes); returns the three paths by kind (``"jsonl"``, ``"csv"``, ``"meta"``).

    Args:
      metrics: an FL ``History``, an RL/FRL metrics dict, or any NamedTuple / dataclass / mapping of arrays.
      config: the run's configuration (``FLConfig``, ``PPOConfig``, a dict, ...), stored as JSON.
      axes: names of the row axes, the leading axes every field shares (default: ``("step",)`` for one,
        ``("seed", "step")`` for two, ``("axis0", ...)`` beyond); fewer names than shared axes keeps the rest
        inside the cells.

    Raises:
      ValueError: no fields, fields with no leading axis in common, or more axis names than shared axes.
    """
    fields = _fields(metrics)
    if not fields:
        raise ValueError("results.save: metrics has no array fields")
    shared = _shared_prefix([a.shape for a in fields.values()])
    if axes is None:
        axes = {0: (), 1: ("step",), 2: ("seed", "step")}.get(len(shared), tuple(f"axis{i}" for i in range(len(shared))))
    axes = tuple(axes)
    if not axes or len(axes) > len(shared):
        raise ValueError(f"results.save: the fields share leading axes {shared}; cannot name rows by {axes}")
    clash = set(axes) & set(fields)
    if clash:
        raise ValueError(f"results.save: axis names {sorted(clash)} are also field names; pass other axes=")
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"{name}.{kind}") for kind in ("jsonl", "csv")}
    paths["meta"] = os.path.join(out_dir, f"{name}.meta.json")
    rows_shape = shared[:len(axes)]
    rows = []
    for index in np.ndindex(*rows_shape):
        row = dict(zip(axes, index))
        row.update({key: to_json(value[index]) for key, value in fields.items()})
        rows.append(row)
    columns = list(axes) + list(fields)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([json.dumps(row[c]) if isinstance(row[c], list) else repr(row[c]) for c in columns])
    data = {"jsonl": "".join(json.dumps(row) + "\n" for row in rows).encode(), "csv": table.getvalue().encode()}
    meta = {"name": name, "axes": list(axes), "rows_shape": list(rows_shape),
            "fields": {key: {"dtype": str(value.dtype), "shape": list(value.shape)} for key, value in fields.items()},
            "files": {kind: _fingerprint(content) for kind, content in data.items()},
            "config": to_json(config), "environment": environment()}
    data["meta"] = json.dumps(meta, indent=2).encode()
    for kind, content in data.items():
        _write_synced(paths[kind] + ".new", content)
    for kind in ("meta", "jsonl", "csv"):  # the meta's rename commits the save
        os.replace(paths[kind] + ".new", paths[kind])
    return paths


def load(path: str) -> tuple:
    """``(fields, meta)`` from a file ``save`` wrote (``.jsonl`` or ``.csv``; ``name.meta.json`` beside it):
    ``fields`` maps each field to a NumPy array of its saved dtype and shape.

    Raises:
      ValueError: the file is not the one its meta describes (truncated, torn by a killed save, or from another
        save), or its meta holds no checksums.
    """
    stem, ext = os.path.splitext(path)
    if ext not in (".jsonl", ".csv"):
        raise ValueError(f"results.load: expected a .jsonl or .csv file, got {path!r}")
    for _ in range(2):  # a save that commits between reading the meta and the file: read both again
        with open(stem + ".meta.json") as f:
            meta = json.load(f)
        if "files" not in meta:
            raise ValueError(f"results.load: {stem + '.meta.json'!r} has no checksums of its data files (written "
                             f"by an older fedjax_attacks); save the results again")
        content = _committed(path, meta["files"][ext[1:]])
        if content is not None:
            break
    else:
        raise ValueError(f"results.load: {path!r} is not the file {stem + '.meta.json'!r} describes "
                         f"({meta['files'][ext[1:]]}): truncated, torn by a killed save, or from another save")
    text = io.StringIO(content.decode(), newline="")
    if ext == ".jsonl":
        rows = [json.loads(line) for line in text if line.strip()]
    else:
        rows = [{key: json.loads(_json_cell(cell)) for key, cell in row.items()} for row in csv.DictReader(text)]
    fields = {}
    for key, spec in meta["fields"].items():
        out = np.empty(spec["shape"], dtype=spec["dtype"])
        for row in rows:
            out[tuple(row[axis] for axis in meta["axes"])] = row[key]
        fields[key] = out
    return fields, meta


def _fingerprint(content: bytes) -> dict:
    return {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def _write_synced(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _committed(path: str, fingerprint: dict) -> Optional[bytes]:
    """The bytes of ``path``, or of ``path.new`` (a committed save killed before renaming it), that match
    ``fingerprint``; ``None`` if neither does."""
    for candidate in (path, path + ".new"):
        try:
            with open(candidate, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            continue
        if _fingerprint(content) == fingerprint:
            return content
    return None


def _fields(metrics: Any) -> dict:
    if dataclasses.is_dataclass(metrics) and not isinstance(metrics, type):
        metrics = {f.name: getattr(metrics, f.name) for f in dataclasses.fields(metrics)}
    elif isinstance(metrics, tuple) and hasattr(metrics, "_asdict"):
        metrics = metrics._asdict()
    if not isinstance(metrics, Mapping):
        raise ValueError(f"results.save: metrics must be a NamedTuple, dataclass or mapping, got "
                         f"{type(metrics).__name__}")
    return {str(key): np.asarray(value) for key, value in metrics.items() if value is not None}


def _shared_prefix(shapes) -> tuple:
    prefix = shapes[0]
    for shape in shapes[1:]:
        n = 0
        while n < min(len(prefix), len(shape)) and prefix[n] == shape[n]:
            n += 1
        prefix = prefix[:n]
    return tuple(prefix)


def _json_cell(cell: str) -> str:
    """A CSV cell as JSON: ``repr`` of Python numbers and booleans, or a JSON list."""
    return {"True": "true", "False": "false", "nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(cell, cell)
