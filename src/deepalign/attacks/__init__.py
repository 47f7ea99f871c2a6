"""Attacks: named, parameterised transforms from an evaluation item to a request (and from the
reply to the text that gets judged). Build them by spec with :func:`make_attacks`:

    >>> from deepalign.attacks import make_attacks
    >>> [a.label for a in make_attacks("direct,prefill:8w,cipher:caesar")]
    ['direct', 'prefill:8w', 'cipher:caesar']
"""

from deepalign.attacks.base import Attack, Attacked, AttackOutput  # noqa: F401
from deepalign.attacks.registry import ATTACKS, make_attack, make_attacks  # noqa: F401

# importing the modules registers their attacks
from deepalign.attacks import basic, cipher, code, gcg, insertion, pair, rap, shapes, template  # noqa: E402,F401
