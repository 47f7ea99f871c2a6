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
    multiple-choice item.
    """

    id: str
    prompt: str
    kind: str = "unknown"
    answer: str | None = None
    harmful: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def to_dict(record) -> dict[str, Any]:
    d = asdict(record)
    return {k: v for k, v in d.items() if v is not None and v != {}}


def from_dict(cls, obj: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in names})
