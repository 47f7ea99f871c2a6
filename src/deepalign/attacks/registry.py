"""Attacks by name. A spec is ``name`` or ``name:arg:arg...`` (``prefill:8``, ``prefill:8w``,
``cipher:caesar:shift=5``, ``template:my_templates.jsonl``, ``pair:iters=5``); a list of
specs is comma-separated (``direct,prefill:8,code``). One spec may expand into several
attacks (a template file with many templates). Factories take the spec's
:class:`~deepalign.registry.SpecArgs` and the run's context and return a list of attacks.
"""

from __future__ import annotations

from typing import Sequence

from deepalign.errors import DeepAlignError
from deepalign.registry import Registry, split_list

ATTACKS = Registry("attack", sep=":")
register = ATTACKS.register


def make_attacks(specs: str | Sequence[str], **context) -> list:
    """Build the attacks named by ``specs``. ``context`` carries what some attacks need from
    the run (the ``attacker`` target and the ``pair_judge`` of PAIR)."""
    import deepalign.attacks  # noqa: F401  (registers the built-in attacks)

    names = split_list(specs)
    for spec in names:  # every name is checked before any attack is built
        ATTACKS.check_name(spec)
    attacks = [a for spec in names for a in ATTACKS.build(spec, **context)]
    for a in attacks:  # attacks that share work with the others built with them (RAP's depths)
        if callable(getattr(a, "link", None)):
            a.link(attacks)
    labels = [a.label for a in attacks]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DeepAlignError(f"attack(s) given twice: {', '.join(dup)}")
    if not attacks:
        raise DeepAlignError("no attacks given")
    return attacks


def make_attack(spec: str, **context):
    attacks = make_attacks([spec], **context)
    if len(attacks) != 1:
        raise DeepAlignError(f"attack spec {spec!r} expands to {len(attacks)} attacks; use make_attacks")
    return attacks[0]
