"""Config checks shared by every frozen config's ``validate()``: counts and positive rates, with clear errors.

A traced value (a float hyperparameter vmapped over, e.g. PPO's learning rate in a sweep) passes the rate check:
it was validated where it was made.
"""

import jax
import numpy as np


def check_count(config, name: str, minimum: int = 1) -> int:
    """``config.<name>`` must be an integer (not a bool, float or string) ``>= minimum``; returns it."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_rate(config, name: str) -> None:
    """``config.<name>`` must be a finite number ``> 0`` (learning rates, step sizes); tracers pass."""
    value = getattr(config, name)
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"{type(config).__name__}.{name} must be a finite number > 0, got {value!r}")


def check_in_range(config, name: str, low: float, high: float = float("inf"), *, low_open: bool = False) -> None:
    """``config.<name>`` must be a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``): discount
    factors, coefficients, noise scales, probabilities; tracers pass."""
    value = getattr(config, name)
    if isinstance(value, jax.core.Tracer):
        return
    number = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not number or not np.isfinite(value) or not (value > low if low_open else value >= low) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if np.isfinite(high) else ')'}"
        raise ValueError(f"{type(config).__name__}.{name} must be a finite number in {interval}, got {value!r}")


def check_layers(config, name: str = "hidden") -> None:
    """``config.<name>`` must be a non-empty tuple or list of integer layer widths ``>= 1``."""
    value = getattr(config, name)
    if not isinstance(value, (tuple, list)) or not value or any(
            isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in value):
        raise ValueError(f"{type(config).__name__}.{name} must be a non-empty sequence of integers >= 1, "
                         f"got {value!r}")


def check_choice(config, name: str, options) -> None:
    """``config.<name>`` must be one of ``options`` (names of modes, algorithms, distributions)."""
    value = getattr(config, name)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {tuple(options)}, got {value!r}")


def check_flag(config, name: str) -> None:
    """``config.<name>`` must be a bool (not 0/1 or a string: ``"False"`` would read as true)."""
    value = getattr(config, name)
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{type(config).__name__}.{name} must be True or False, got {value!r}")


def check_index(index, size: int, name: str, *, scalar: bool = False):
    """A concrete ``index`` (a Python or numpy integer, or an integer array; one integer with ``scalar``) must
    hold integers in ``[0, size)``, else ``ValueError`` naming ``name``; returns it (a Python int with ``scalar``).
    Tracers pass unchecked (``lax.switch`` clamps them into range)."""
    if isinstance(index, jax.core.Tracer):
        return index
    array = np.asarray(index)
    if isinstance(index, bool) or not np.issubdtype(array.dtype, np.integer) or (scalar and array.ndim):
        kind = "an integer" if scalar else "an integer (or integer array)"
        raise ValueError(f"{name} must be {kind} in [0, {size}), got {index!r}")
    if array.size and not (array.min() >= 0 and array.max() < size):
        raise ValueError(f"{name} {array.tolist()} is outside [0, {size})")
    return int(array) if scalar else index
