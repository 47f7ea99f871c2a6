"""What an attack is: a transform from an :class:`EvalPrompt` to a :class:`Request`, plus a
``postprocess`` that turns the target's reply into the text that gets judged.

Most attacks are *static*: :meth:`Attack.prepare` builds one request per item, the runner
sends many of them in one ``target.generate`` call, and :meth:`Attack.run` maps the replies
back. Iterative attacks (PAIR) override :meth:`Attack.run` and talk to the target
themselves. Either way the runner only ever calls ``attack.run(target, items, config)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
    if g.defence is not None:
        out["defence"] = g.defence
    return out


#: what the judges of a run see of a reply (an attack declares it; ``--judge_scope`` may add the forced start)
JUDGE_SEES = ("response", "continuation", "decoded")


@dataclass(frozen=True)
class AttackInfo:
    """What an attack is, as the run log records it. Every attack class declares it (the way
    garak's probes declare theirs), so reports read it instead of parsing labels:

    - ``family``: direct, prefill, completion, code, cipher, template, pair, ledger, ...;
    - ``shifted``: the harm it asks for takes another shape than a plain chat answer (code,
      a cipher, a template's frame, a prefill that starts mid-response);
    - ``depth`` / ``unit``: how many tokens or words of a harmful answer it forces (0 for an
      attack that forces nothing; None when it forces text that is no part of a harmful
      answer, e.g. a generic answer start); ``skip``: words of the reference skipped first;
    - ``forced``: what the target is given to force: None, "text" or "tokens" (a token count);
    - ``judge_sees``: "response" (the reply as is), "continuation" (what the model wrote after
      the forced start) or "decoded" (the reply deciphered);
    - ``params``: the attack's own settings (a template's name, a cipher, the answer start).
    """

    label: str
    family: str
    shifted: bool = False
    depth: int | None = 0
    unit: str | None = None
    skip: int = 0
    forced: str | None = None
    judge_sees: str = "response"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.judge_sees not in JUDGE_SEES:  # an attack class's own declaration: a programming error
            raise ValueError(f"attack {self.label}: judge_sees must be one of {JUDGE_SEES}, got {self.judge_sees!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> AttackInfo:
        return cls(**obj)


class Attack:
    """Base class. ``label`` names the attack in results (e.g. ``prefill:8``); ``family``,
    ``shifted``, ``judge_sees`` and the depth fields are its metadata (:class:`AttackInfo`)."""

    label: str = "attack"
    family: str = "attack"
    shifted: bool = False
    judge_sees: str = "response"
    #: what the attack forces at the start of the answer: None, "text" or "tokens" (a token count)
    forced: str | None = None
    #: units of a harmful answer forced (see :class:`AttackInfo`), their unit and words skipped
    depth: int | None = 0
    unit: str | None = None
    skip: int = 0
    #: what the attack reads of a local model that a server does not give (the runner refuses
    #: server targets for it before any work); None: it runs on any target
    needs_local: str | None = None
    #: the attack needs one model (gradients through its weights), not a composition of several
    needs_single_model: bool = False
    #: a target method that lets a server target serve the attack after all (RAP: top_logprobs)
    server_method: str | None = None

    def params(self) -> dict[str, Any]:
        """The attack's own settings, for the run log."""
        return {}

    def info(self) -> AttackInfo:
        return AttackInfo(self.label, self.family, self.shifted, self.depth, self.unit, self.skip, self.forced,
                          self.judge_sees, self.params())

    def applies(self, item: EvalPrompt) -> bool:
        """Whether this attack can be applied to ``item`` (prefill needs a harmful reference)."""
        return True

    def prepare(self, item: EvalPrompt) -> Attacked:  # pragma: no cover - abstract
        raise NotImplementedError

    def attacked(self, item: EvalPrompt) -> Attacked:
        """:meth:`prepare` for ``item``, with what every attack owes the item: the request id is
        the item's own id (a sampled row is seeded by (seed, item id, sample), so
        ``target.generate([Request(id=item id, ...)])`` from Python draws the same sample), and
        the item's own system prompt reaches the model or the item is refused by name."""
        a = self.prepare(item)
        req = a.request if a.request.id == item.id else replace(a.request, id=item.id)
        if item.system is not None and req.system != item.system:
            if req.text is not None:
                raise DeepAlignError(f"item {item.id!r} has a system prompt, but attack {self.label} sends a raw text "
                                     "with no chat turns for it to go in; remove the row's system field")
            if req.system is not None:
                raise DeepAlignError(f"item {item.id!r} has a system prompt, but attack {self.label} sets its own; "
                                     "remove the row's system field or use the attack without its system prompt")
            req = replace(req, system=item.system)
        return a if req is a.request else replace(a, request=req)

    def run(self, target, items: Sequence[EvalPrompt], config: GenConfig) -> list[list[AttackOutput]]:
        """Attack ``items`` on ``target``: per item, ``config.num_samples`` outputs."""
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):  # a dataset's ids are unique (the loaders check): a caller's mistake
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DeepAlignError(f"attack {self.label}: item id {dup!r} appears twice in one batch; ids must be unique")
        prepared = [self.attacked(item) for item in items]
        requests = [a.request for a in prepared]
        gens: list[list[Generation]] = target.generate(requests, config)
        check_generations(target, requests, gens, config.num_samples)
        return [[AttackOutput(a.request, g.text, a.postprocess(g.text), g.num_tokens, g.finish_reason,
                              forced_meta(a.meta, g)) for g in per] for a, per in zip(prepared, gens)]

    def __repr__(self) -> str:
        return f"<attack {self.label}>"
