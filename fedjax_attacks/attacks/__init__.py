"""Model-poisoning attacks: what the attackers know -> the updates the sampled malicious clients submit.

See ``fedjax_attacks.attacks.base`` for the interface (``Attack``, ``AttackInput``).
"""

from fedjax_attacks.attacks.base import Attack, AttackInput, get, names, none, register

__all__ = ["Attack", "AttackInput", "get", "names", "none", "register"]
