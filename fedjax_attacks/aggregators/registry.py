"""Name -> factory registry for aggregators (used by configs, CLIs and benchmarks)."""

from typing import Callable

_FACTORIES: dict[str, Callable] = {}
_BUILT_IN: set[str] = set()


def register(name: str, factory: Callable, *, overwrite: bool = False) -> Callable:
    """Registers ``factory(**hparams) -> Aggregator`` under ``name``; returns the factory.

    Raises ``ValueError`` when ``name`` is a built-in rule, unless ``overwrite=True``.
    """
    if name in _BUILT_IN and not overwrite:
        raise ValueError(f"aggregator {name!r} is built in; pass overwrite=True to replace it")
    _FACTORIES[name] = factory
    return factory


def mark_built_in() -> None:
    """Marks every name registered so far as built in (called once by the package)."""
    _BUILT_IN.update(_FACTORIES)


def names() -> list[str]:
    """The registered aggregator names, sorted."""
    return sorted(_FACTORIES)


def get(name: str, **hparams):
    """Returns the ``Aggregator`` ``name`` built with ``hparams``; ``ValueError`` for an unknown name."""
    if not isinstance(name, str) or name not in _FACTORIES:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(names())}")
    try:
        return _FACTORIES[name](**hparams)
    except TypeError as error:  # an unknown or missing hyperparameter
        raise ValueError(f"aggregator {name!r}: {error}") from None
