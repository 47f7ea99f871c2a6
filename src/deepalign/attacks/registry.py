"""Attacks by name. A spec is ``name`` or ``name:arg:arg...`` (``prefill:8``, ``prefill:8w``,
``cipher:caesar:shift=5``, ``template:my_templates.jsonl``, ``pair:iters=5``); a list of
specs is comma-separated (``direct,prefill:8,code``). One spec may expand into several
attacks (a template file with many templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from deepalign.errors import DeepAlignError

#: name -> (factory(rest: str, context: dict) -> list[Attack], one-line help)
ATTACKS: dict[str, tuple[Callable, str]] = {}


def register(name: str, help_: str):
    def deco(factory):
        ATTACKS[name] = (factory, help_)
        return factory

    return deco


@dataclass
class Args:
    """The ``:``-separated arguments of a spec: positional values and ``key=value`` options."""

    spec: str
    positional: list[str]
    options: dict[str, str]

    @classmethod
    def parse(cls, spec: str, rest: str) -> "Args":
        pos, opts = [], {}
        for part in rest.split(":") if rest else []:
            if not part:
                continue
            if "=" in part:
                k, v = part.split("=", 1)
                opts[k.strip()] = v
            else:
                pos.append(part.strip())
        return cls(spec, pos, opts)

    def option(self, key: str, default=None, type_=str):
        if key not in self.options:
            return default
        raw = self.options.pop(key)
        try:
            return type_(raw)
        except ValueError:
            raise DeepAlignError(f"attack {self.spec!r}: option {key}={raw!r} is not a valid {type_.__name__}") from None

    def done(self, max_positional: int = 0) -> None:
        """Fail on anything that was not consumed."""
        if self.options:
            raise DeepAlignError(f"attack {self.spec!r}: unknown option(s) {', '.join(sorted(self.options))}")
        if len(self.positional) > max_positional:
            raise DeepAlignError(f"attack {self.spec!r}: unexpected argument(s) {':'.join(self.positional[max_positional:])}")


def split_specs(specs: str | Sequence[str]) -> list[str]:
    """``"direct,prefill:8"`` or ``["direct", "prefill:8,code"]`` -> ``["direct", "prefill:8", "code"]``."""
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for s in specs:
        out.extend(p.strip() for p in s.split(",") if p.strip())
    return out


def make_attacks(specs: str | Sequence[str], **context) -> list:
    """Build the attacks named by ``specs``. ``context`` carries what some attacks need from
    the run (``attacker`` target and ``judge`` for PAIR)."""
    import deepalign.attacks  # noqa: F401  (registers the built-in attacks)

    attacks = []
    for spec in split_specs(specs):
        name, _, rest = spec.partition(":")
        if name not in ATTACKS:
            raise DeepAlignError(f"unknown attack {name!r}; choose from {', '.join(sorted(ATTACKS))}")
        factory, _ = ATTACKS[name]
        attacks.extend(factory(spec, rest, context))
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
