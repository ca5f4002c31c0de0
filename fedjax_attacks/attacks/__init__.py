"""Model-poisoning attacks: what the attackers know -> the updates the sampled malicious clients submit.

See ``fedjax_attacks.attacks.base`` for the interface (``Attack``, ``AttackInput``). Registered names:
``none``, ``eb``, ``ipm``, ``lmp`` (variants ``"median"`` and ``"krum"``), ``alie``, ``minmax``, ``minsum``,
``sign_flip``, ``gaussian``, ``large_noise``, ``avg_zero``, ``label_flip``, ``non_finite``, and ``switch`` (one of several
attacks by a traced index, so an attack sweep compiles once); ``get(name, **hparams)`` builds one.
"""

from fedjax_attacks.attacks.base import Attack, AttackInput, get, mark_built_in, names, none, register
from fedjax_attacks.attacks.baselines import (
    alie,
    avg_zero,
    eb,
    gaussian,
    ipm,
    label_flip,
    large_noise,
    non_finite,
    sign_flip,
)
from fedjax_attacks.attacks.lmp import lmp
from fedjax_attacks.attacks.shejwalkar import minmax, minsum
from fedjax_attacks.attacks.switch import switch

mark_built_in()

__all__ = [
    "Attack",
    "AttackInput",
    "alie",
    "avg_zero",
    "eb",
    "gaussian",
    "get",
    "ipm",
    "label_flip",
    "large_noise",
    "lmp",
    "minmax",
    "minsum",
    "names",
    "non_finite",
    "none",
    "register",
    "sign_flip",
    "switch",
]
