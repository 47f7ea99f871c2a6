"""What an attack is: a transform from an :class:`EvalPrompt` to a :class:`Request`, plus a
``postprocess`` that turns the target's reply into the text that gets judged.

Most attacks are *static*: :meth:`Attack.prepare` builds one request per item, the runner
sends many of them in one ``target.generate`` call, and :meth:`Attack.run` maps the replies
back. Iterative attacks (PAIR) override :meth:`Attack.run` and talk to the target
themselves. Either way the runner only ever calls ``attack.run(target, items, config)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt


def identity(text: str) -> str:
    return text


@dataclass
class Attacked:
    """One item after the attack: the request to send, and how to read the reply."""

    request: Request
    postprocess: Callable[[str], str] = identity
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackOutput:
    """One (item, sample) after generation: ``raw`` is the target's continuation,
    ``response`` the postprocessed text that the judges see."""

    request: Request
    raw: str
    response: str
    num_tokens: int
    finish_reason: str
    meta: dict[str, Any] = field(default_factory=dict)


def check_generations(target, requests: Sequence[Request], gens, num_samples: int) -> None:
    name = getattr(target, "name", type(target).__name__)
    if len(gens) != len(requests):
        raise DeepAlignError(f"target {name} returned {len(gens)} results for {len(requests)} requests")
    for req, per in zip(requests, gens):
        if len(per) != num_samples:
            raise DeepAlignError(f"target {name} returned {len(per)} samples for request {req.id!r}, expected {num_samples}")


def forced_meta(meta: dict, g: Generation) -> dict:
    """An attack's row meta plus what the target forced before the continuation."""
    out = dict(meta)
    if g.forced_tokens:
        out["forced_tokens"] = g.forced_tokens
        out["forced_text"] = g.forced_text
        if out.get("depth_unit") == "tokens":
            out["prefill_len"] = g.forced_tokens
    elif out.get("depth_unit") == "tokens":
        out["prefill_len"] = 0
    return out


class Attack:
    """Base class. ``label`` names the attack in results (e.g. ``prefill:8``)."""

    label: str = "attack"
    #: what the attack forces at the start of the answer: None, "text" or "tokens" (a token count)
    forced: str | None = None

    def applies(self, item: EvalPrompt) -> bool:
        """Whether this attack can be applied to ``item`` (prefill needs a harmful reference)."""
        return True

    def prepare(self, item: EvalPrompt) -> Attacked:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, target, items: Sequence[EvalPrompt], config: GenConfig) -> list[list[AttackOutput]]:
        """Attack ``items`` on ``target``: per item, ``config.num_samples`` outputs."""
        prepared = []
        for i, item in enumerate(items):
            a = self.prepare(item)
            # ids must be unique inside one generate call, whatever the item ids are
            prepared.append(replace(a, request=replace(a.request, id=f"{i}:{item.id}")))
        requests = [a.request for a in prepared]
        gens: list[list[Generation]] = target.generate(requests, config)
        check_generations(target, requests, gens, config.num_samples)
        out = []
        for a, per in zip(prepared, gens):
            req = replace(a.request, id=a.request.id.split(":", 1)[1])
            out.append([AttackOutput(req, g.text, a.postprocess(g.text), g.num_tokens, g.finish_reason,
                                     forced_meta(a.meta, g)) for g in per])
        return out

    def __repr__(self) -> str:
        return f"<attack {self.label}>"
