"""Name -> factory registry for aggregators (used by configs, CLIs and benchmarks)."""

from typing import Callable

_FACTORIES: dict[str, Callable] = {}


def register(name: str, factory: Callable) -> Callable:
    """Registers ``factory(**hparams) -> aggregate`` under ``name``; returns the factory."""
    _FACTORIES[name] = factory
    return factory


def names() -> list[str]:
    """The registered aggregator names, sorted."""
    return sorted(_FACTORIES)


def get(name: str, **hparams) -> Callable:
    """Returns the aggregator ``name`` built with ``hparams``; ``ValueError`` for an unknown name."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(names())}")
    return _FACTORIES[name](**hparams)
