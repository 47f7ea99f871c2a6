"""The record types that flow between stages. Each is a plain dataclass that round-trips
through a JSON object (``to_dict`` / ``from_dict``), so every arrow of the pipeline can be
printed, saved as JSONL and reloaded. They sit at the root of the package because every stage,
from the world generator to the report, speaks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: what an evaluation item is: ``harmful`` (should be refused), ``benign`` (a look-alike that
#: should be answered), ``helpful`` (has a checkable answer) or ``unknown``
ITEM_KINDS: tuple[str, ...] = ("harmful", "benign", "helpful", "unknown")
#: kinds whose responses count towards the attack success rate (an unknown item may be harmful)
HARMFUL_KINDS: tuple[str, ...] = ("harmful", "unknown")
#: kinds whose refusals count as over-refusal
BENIGN_KINDS: tuple[str, ...] = ("benign", "helpful")


@dataclass
class HarmfulTriple:
    """A harmful query with a harmful response and a safe response (a refusal)."""

    id: str
    query: str
    harmful: str
    safe: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class InstructionPair:
    """A helpful instruction with its reference response (and, if checkable, the answer)."""

    id: str
    instruction: str
    response: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalPrompt:
    """One evaluation item: a prompt, and what is known about the right behaviour.

    ``kind`` is ``harmful`` (should be refused), ``benign`` (should be answered),
    ``helpful`` (has a checkable ``answer``) or ``unknown``. ``harmful`` may carry a
    reference harmful response (needed by prefill attacks), ``choices`` the options of a
    multiple-choice item, ``system`` the row's own system prompt.
    """

    id: str
    prompt: str
    kind: str = "unknown"
    answer: str | None = None
    harmful: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: the row's own system prompt (a ``system`` column): every attack passes it on, or refuses the item
    system: str | None = None


@dataclass
class Verdict:
    """What one judge says of one response.

    - ``harmful``: the response gives what a harmful request asked for (None: this judge
      cannot tell, or its reply was unreadable: see ``error``; never "safe" by default);
    - ``refusal``: the response refuses; ``refusal_start_word`` / ``refusal_start_token``:
      where its first refusal marker starts (index of the word / token of the judged text);
    - ``correct``: a helpful item's answer is right (None: the item has no answer);
    - ``answered``: a benign item got a substantive answer (neither refused nor harmful);
    - ``score``: a graded harm score in [0, 1] (StrongREJECT-style judges);
    - ``categories``: violated categories (Llama-Guard codes, ...);
    - ``error``: why there is no verdict (an unreadable judge reply, a missing response);
    - ``extra``: judge-specific details (the oracle's step counts, a judge's raw verdict word).

    ``to_dict`` / ``from_dict`` round-trip JSON exactly (``None`` fields are left out).
    """

    harmful: bool | None = None
    refusal: bool | None = None
    refusal_start_word: int | None = None
    refusal_start_token: int | None = None
    correct: bool | None = None
    answered: bool | None = None
    score: float | None = None
    categories: list[str] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "Verdict":
        """A verdict as :meth:`to_dict` wrote it; an unknown field is a ``ValueError``."""
        unknown = sorted(set(obj) - set(VERDICT_FIELDS) - {"extra"})
        if unknown:
            raise ValueError(f"unknown verdict field {unknown[0]!r}")
        return cls(**{k: obj[k] for k in VERDICT_FIELDS if k in obj}, extra=dict(obj.get("extra") or {}))

    @classmethod
    def coerce(cls, value: "Verdict | dict[str, Any]") -> "Verdict":
        """A judge's output as a verdict: a :class:`Verdict`, or a flat dict of verdict fields
        where every other key is a judge-specific extra (the form judges outside this package,
        and run directories of format 1, use; format 1's ``refusal_word`` / ``refusal_token``
        are the start positions)."""
        if isinstance(value, Verdict):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"a verdict is a Verdict or a dict, got {type(value).__name__}")
        obj = dict(value)
        for old, new in (("refusal_word", "refusal_start_word"), ("refusal_token", "refusal_start_token")):
            if old in obj:
                obj.setdefault(new, obj.pop(old))
        extra = dict(obj.pop("extra", None) or {})
        extra.update({k: obj.pop(k) for k in list(obj) if k not in VERDICT_FIELDS})
        return cls(**obj, extra=extra)


#: the fields of a verdict every judge may fill (anything else a judge says goes in ``extra``)
VERDICT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Verdict) if f.name != "extra")


def error_verdict(message: str) -> Verdict:
    """No verdict, and why (counted as an error, never as safe)."""
    return Verdict(error=" ".join(str(message).split()))


def to_dict(record) -> dict[str, Any]:
    d = asdict(record)
    return {k: v for k, v in d.items() if v is not None and v != {}}


def from_dict(cls, obj: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in names})
