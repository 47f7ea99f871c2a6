"""DeRTa training recipes: pure data transforms from ``HarmfulTriple`` and
``InstructionPair`` lists to :class:`TrainingRecord` lists.

A record is one training sequence, written as four consecutive text spans::

    prompt | prefix | rto | target
    (no loss) (no loss) (refusal-token target at each position) (next-token MLE loss)

* ``prompt``: the rendered query (the tokenizer's chat template, or a plain template).
* ``prefix``: a forced start of the response that carries no loss (the first ``k`` words or
  tokens of a harmful response, for *MLE with harmful prefix*).
* ``rto``: harmful text for Reinforced Transition Optimization; every position that predicts
  one of its tokens is trained to predict the refusal token instead (the collator turns the
  span into labels; this module only says where it is).
* ``target``: the response trained with ordinary next-token loss (a safe or helpful
  response followed by the end-of-turn text).

Recipes (Yuan et al. 2024, arXiv 2407.09121; counts follow the reference mixtures)

* ``vanilla``: ``q -> r_safe`` for ``n`` triples.
* ``harmful-prefix`` ("RecAug"): ``q + r_harm[:k] -> r_safe`` for ``n`` triples; a share
  ``k_zero_share`` (reference 1/3) gets ``k = 0``, the rest ``k ~ U[k_min, len + k_max]``
  (reference: ``[1, len-2]`` words).
* ``rto``: ``n/2`` vanilla records and ``n/2`` RTO records ``q + r_harm`` with the refusal
  target at every harmful position, built from the same triples. As in the reference the
  RTO record carries no MLE target (the end-of-turn marker after the harmful text is part of
  the RTO span, so "refuse after the whole harmful answer" is trained too);
  ``rto_append_safe=True`` instead appends ``r_safe`` as an MLE target after the harmful text.
* ``derta``: ``n/2`` harmful-prefix records + ``n/2`` RTO records from the same triples
  (the reference's 3K + 3K), in one stream.

Every recipe adds helpful ``instruction -> response`` records and shuffles everything with
``seed``. ``n`` defaults to the number of triples; ``safety_ratio`` sets it relative to the
helpful count instead (the reference: 6K / 60K = 0.1).

:func:`to_reference` / :func:`from_reference` convert to and from the reference's
``{"prefix", "text", "safe"}`` lines through :mod:`deepalign.data.reference`.
"""

from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from deepalign.data.records import HarmfulTriple, InstructionPair
from deepalign.errors import DeepAlignError
from deepalign.utils import read_jsonl, write_jsonl

RECIPES = ("vanilla", "harmful-prefix", "rto", "derta")
KINDS = ("helpful", "safe", "prefix", "rto", "mle")
PREFIX_UNITS = ("words", "tokens")
DEFAULT_PLAIN_TEMPLATE = "{bos}Query: {query}\nResponse:"

_PLACEHOLDER = "DEEPALIGNRESPONSEPLACEHOLDER"
_PROBE_QUERY = "DEEPALIGNQUERYPLACEHOLDER"
_WORD = re.compile(r"\S+")


@dataclass
class TrainingRecord:
    """One training sequence: ``prompt + prefix + rto + target`` (see the module doc).

    ``query`` is the raw query (kept for export); ``meta`` holds ``source`` (the triple or
    pair id), ``k`` and ``unit`` for harmful-prefix records, and ``response`` /
    ``response_prefix``: the raw texts of the target (or of the RTO span) and of the prefix,
    without format text (lead, separator, end of turn).
    """

    id: str
    kind: str
    query: str
    prompt: str
    prefix: str = ""
    rto: str = ""
    target: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prompt + self.prefix + self.rto + self.target

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "query": self.query, "prompt": self.prompt,
                "prefix": self.prefix, "rto": self.rto, "target": self.target, "meta": self.meta}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], *, path=None, line=None) -> "TrainingRecord":
        for key in ("id", "kind", "prompt"):
            if key not in obj:
                raise DeepAlignError(f'missing field "{key}" (a training record has id, kind, query, prompt, '
                                     f'prefix, rto, target)', path=path, line=line)
        for key in ("id", "kind", "query", "prompt", "prefix", "rto", "target"):
            if key in obj and not isinstance(obj[key], str):
                raise DeepAlignError(f'field "{key}" must be a string, got {type(obj[key]).__name__}',
                                     path=path, line=line)
        if obj["kind"] not in KINDS:
            raise DeepAlignError(f'field "kind" must be one of {", ".join(KINDS)}, got {obj["kind"]!r}',
                                 path=path, line=line)
        rec = cls(id=obj["id"], kind=obj["kind"], query=obj.get("query", ""), prompt=obj["prompt"],
                  prefix=obj.get("prefix", ""), rto=obj.get("rto", ""), target=obj.get("target", ""),
                  meta=dict(obj.get("meta") or {}))
        if not rec.rto and not rec.target:
            raise DeepAlignError('record has neither an "rto" nor a "target" span: nothing to train on',
                                 path=path, line=line)
        return rec


# --------------------------------------------------------------------------------------
# Prompt formats
# --------------------------------------------------------------------------------------


@dataclass
class PromptFormat:
    """How a query becomes a prompt, and what surrounds a response.

    ``lead``: text between the prompt and the response (``""`` for most chat templates,
    ``" "`` for the world's and for plain templates, like the reference's ``" " + text``);
    ``end``: the end-of-turn text after a response (e.g. ``"</s>"``, ``"<|eot_id|>"``).
    With ``template`` set the prompt is ``template`` with ``{query}``, ``{bos}`` and
    ``{eos}`` filled in; otherwise the tokenizer's chat template renders it.
    """

    kind: str  # "chat" | "plain"
    lead: str
    end: str
    template: str | None = None
    bos: str = ""
    eos: str = ""
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def prompt(self, query: str) -> str:
        if self.kind == "plain":
            return self.template.replace("{bos}", self.bos).replace("{eos}", self.eos).replace("{query}", query)
        return _render_chat(self.tokenizer, query)


def _render_chat(tokenizer, query: str) -> str:
    out = tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                        add_generation_prompt=True)
    if not isinstance(out, str):  # pragma: no cover - defensive: some wrappers return lists
        out = out[0]
    return out


def _check_template(template: str) -> None:
    if "{query}" not in template:
        raise DeepAlignError(f"prompt template must contain {{query}}, got {template!r}")
    rest = template.replace("{query}", "").replace("{bos}", "").replace("{eos}", "")
    bad = re.findall(r"\{[A-Za-z_][A-Za-z0-9_]*\}", rest)
    if bad:
        raise DeepAlignError(f"prompt template has unknown placeholder {bad[0]}; use {{query}}, {{bos}}, {{eos}}")


def prompt_format(tokenizer=None, template: str | None = None) -> PromptFormat:
    """The prompt format for ``tokenizer``: its chat template when it has one, else the plain
    ``template`` (default :data:`DEFAULT_PLAIN_TEMPLATE`). An explicit ``template`` always
    wins. The chat template's response lead and end-of-turn text are found by rendering a
    conversation with a placeholder answer; when that is not possible the end is the eos
    token."""
    bos = (getattr(tokenizer, "bos_token", None) or "") if tokenizer is not None else ""
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    if template is None and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            prompt = _render_chat(tokenizer, _PROBE_QUERY)
        except Exception as exc:  # a template that cannot render a single user turn
            raise DeepAlignError(f"the tokenizer's chat template cannot render a user turn ({exc}); "
                                 "pass a plain --prompt-template") from None
        lead, end = "", eos
        try:
            full = tokenizer.apply_chat_template(
                [{"role": "user", "content": _PROBE_QUERY}, {"role": "assistant", "content": _PLACEHOLDER}],
                tokenize=False)
            if isinstance(full, str) and full.startswith(prompt) and _PLACEHOLDER in full[len(prompt):]:
                rest = full[len(prompt):]
                at = rest.index(_PLACEHOLDER)
                lead, end = rest[:at], rest[at + len(_PLACEHOLDER):]
        except Exception:
            pass
        return PromptFormat("chat", lead=lead, end=end, bos=bos, eos=eos, tokenizer=tokenizer)
    template = DEFAULT_PLAIN_TEMPLATE if template is None else template
    _check_template(template)
    return PromptFormat("plain", lead=" ", end=eos, template=template, bos=bos, eos=eos, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------
# Harmful prefixes
# --------------------------------------------------------------------------------------


def _units(text: str, unit: str, tokenizer) -> list[int]:
    """Character end offsets of the units (words or tokens) of ``text``."""
    if unit == "words":
        return [m.end() for m in _WORD.finditer(text)]
    if tokenizer is None:
        raise DeepAlignError("prefix unit 'tokens' needs a tokenizer")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [end for _, end in enc["offset_mapping"]]
    # Slow tokenizers: the end of unit i is the length of the decoded first i+1 tokens.
    ids = tokenizer.encode(text, add_special_tokens=False)
    ends, last = [], 0
    for i in range(1, len(ids) + 1):
        n = len(tokenizer.decode(ids[:i]))
        last = max(last, min(n, len(text)))
        ends.append(last)
    return ends


def harmful_prefix(text: str, k: int, unit: str = "words", tokenizer=None) -> str:
    """The first ``k`` units of ``text``, as the original text (spacing kept)."""
    if k <= 0:
        return ""
    ends = _units(text, unit, tokenizer)
    if not ends:
        return ""
    return text[: ends[min(k, len(ends)) - 1]].rstrip()


def _draw_k(rng: random.Random, n_units: int, k_min: int, k_max: int) -> int:
    hi = n_units + k_max if k_max <= 0 else k_max
    lo = k_min
    hi = min(hi, n_units)
    lo = min(lo, n_units)
    if hi < lo:  # response too short for the range: use its lower end
        return max(lo, 0)
    return rng.randint(lo, hi)


# --------------------------------------------------------------------------------------
# Record builders
# --------------------------------------------------------------------------------------


def _join(left: str, right: str) -> str:
    """The separator between a forced prefix and what follows it (a space, as the reference)."""
    if not left or left[-1].isspace() or (right and right[0].isspace()):
        return ""
    return " "


def _rec_helpful(p: InstructionPair, fmt: PromptFormat) -> TrainingRecord:
    return TrainingRecord(f"helpful:{p.id}", "helpful", p.instruction, fmt.prompt(p.instruction),
                          target=fmt.lead + p.response + fmt.end,
                          meta={"source": p.id, "response": p.response, "response_prefix": ""})


def _rec_safe(t: HarmfulTriple, fmt: PromptFormat) -> TrainingRecord:
    return TrainingRecord(f"safe:{t.id}", "safe", t.query, fmt.prompt(t.query), target=fmt.lead + t.safe + fmt.end,
                          meta={"source": t.id, "response": t.safe, "response_prefix": ""})


def _rec_prefix(t: HarmfulTriple, fmt: PromptFormat, k: int, unit: str, tokenizer) -> TrainingRecord:
    hp = harmful_prefix(t.harmful, k, unit, tokenizer)
    if not hp:
        return TrainingRecord(f"prefix:{t.id}", "prefix", t.query, fmt.prompt(t.query),
                              target=fmt.lead + t.safe + fmt.end,
                              meta={"source": t.id, "k": 0, "unit": unit, "response": t.safe, "response_prefix": ""})
    prefix = fmt.lead + hp
    return TrainingRecord(f"prefix:{t.id}", "prefix", t.query, fmt.prompt(t.query), prefix=prefix,
                          target=_join(prefix, t.safe) + t.safe + fmt.end,
                          meta={"source": t.id, "k": k, "unit": unit, "response": t.safe, "response_prefix": hp})


def _rec_rto(t: HarmfulTriple, fmt: PromptFormat, append_safe: bool) -> TrainingRecord:
    meta = {"source": t.id, "response": t.harmful, "response_prefix": ""}
    if append_safe:
        rto = fmt.lead + t.harmful
        meta["safe"] = t.safe
        return TrainingRecord(f"rto:{t.id}", "rto", t.query, fmt.prompt(t.query), rto=rto,
                              target=_join(rto, t.safe) + t.safe + fmt.end, meta=meta)
    return TrainingRecord(f"rto:{t.id}", "rto", t.query, fmt.prompt(t.query), rto=fmt.lead + t.harmful + fmt.end,
                          meta=meta)


def _count(value: int | None, available: int, name: str) -> int:
    if value is None:
        return available
    if value < 0:
        raise DeepAlignError(f"{name} must be >= 0, got {value}")
    if value > available:
        raise DeepAlignError(f"{name} is {value} but only {available} are available")
    return value


def build_records(
    recipe: str,
    triples: Sequence[HarmfulTriple],
    helpful: Sequence[InstructionPair] = (),
    fmt: PromptFormat | None = None,
    *,
    tokenizer=None,
    n_helpful: int | None = None,
    n_safety: int | None = None,
    safety_ratio: float | None = None,
    rto_share: float = 0.5,
    prefix_unit: str = "words",
    k_zero_share: float = 1 / 3,
    k_min: int = 1,
    k_max: int = -2,
    rto_append_safe: bool = False,
    seed: int = 0,
) -> list[TrainingRecord]:
    """Build the shuffled training records of ``recipe`` (see the module doc).

    ``n_helpful`` / ``n_safety``: how many helpful and safety records (default: all helpful
    pairs, as many safety records as triples); ``safety_ratio`` sets ``n_safety =
    round(ratio * n_helpful)`` instead. ``rto_share``: the RTO share of the safety records for
    ``rto`` and ``derta``. ``k_max <= 0`` counts from the end of the harmful response
    (``-2``: ``len - 2``). The same ``seed`` gives the same records.
    """
    if recipe not in RECIPES:
        raise DeepAlignError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if prefix_unit not in PREFIX_UNITS:
        raise DeepAlignError(f"prefix unit must be one of {', '.join(PREFIX_UNITS)}, got {prefix_unit!r}")
    if not 0.0 <= k_zero_share <= 1.0:
        raise DeepAlignError(f"k-zero share must be in [0, 1], got {k_zero_share}")
    if not 0.0 <= rto_share <= 1.0:
        raise DeepAlignError(f"RTO share must be in [0, 1], got {rto_share}")
    if k_min < 0:
        raise DeepAlignError(f"k_min must be >= 0, got {k_min}")
    if fmt is None:
        fmt = prompt_format(tokenizer)
    if prefix_unit == "tokens" and tokenizer is None:
        raise DeepAlignError("prefix unit 'tokens' needs a tokenizer")
    rng = random.Random(seed)
    triples = list(triples)
    helpful = list(helpful)
    rng.shuffle(triples)
    rng.shuffle(helpful)

    n_h = _count(n_helpful, len(helpful), "the helpful count")
    if safety_ratio is not None:
        if safety_ratio < 0:
            raise DeepAlignError(f"safety ratio must be >= 0, got {safety_ratio}")
        n_safety = int(round(safety_ratio * n_h))
    if recipe in ("rto", "derta"):
        # as in the reference, both halves come from the same triples
        n_s = len(triples) if n_safety is None else n_safety
        n_rto = int(round(n_s * rto_share))
        n_other = n_s - n_rto
        _count(max(n_rto, n_other), len(triples), "the safety count per half")
    else:
        n_s = _count(n_safety, len(triples), "the safety count")
        n_rto, n_other = 0, n_s
    if n_h + n_s == 0:
        raise DeepAlignError("the recipe has no records: give triples or helpful pairs")

    records = [_rec_helpful(p, fmt) for p in helpful[:n_h]]
    if recipe in ("vanilla", "rto"):
        records += [_rec_safe(t, fmt) for t in triples[:n_other]]
    else:  # harmful-prefix, derta
        chosen = triples[:n_other]
        n_zero = int(round(k_zero_share * len(chosen)))
        zero = set(rng.sample(range(len(chosen)), n_zero))
        for i, t in enumerate(chosen):
            if i in zero:
                k = 0
            else:
                k = _draw_k(rng, len(_units(t.harmful, prefix_unit, tokenizer)), k_min, k_max)
            records.append(_rec_prefix(t, fmt, k, prefix_unit, tokenizer))
    records += [_rec_rto(t, fmt, rto_append_safe) for t in triples[:n_rto]]
    rng.shuffle(records)
    return records


def summarize(records: Iterable[TrainingRecord]) -> dict[str, int]:
    """Counts per kind (plus ``prefix_k0``: harmful-prefix records with ``k = 0``)."""
    out: dict[str, int] = {}
    for r in records:
        out[r.kind] = out.get(r.kind, 0) + 1
        if r.kind == "prefix" and r.meta.get("k", 1) == 0:
            out["prefix_k0"] = out.get("prefix_k0", 0) + 1
    return out


# --------------------------------------------------------------------------------------
# Files: our records and the reference's format
# --------------------------------------------------------------------------------------


def save_records(records: Iterable[TrainingRecord], path: str | os.PathLike) -> int:
    return write_jsonl(path, (r.to_dict() for r in records))


def load_records(path: str | os.PathLike, fmt: PromptFormat | None = None) -> list[TrainingRecord]:
    """Read training records: our JSONL (:func:`save_records`) or a reference file
    (``{"prefix", "text", "safe"}`` lines, re-rendered with ``fmt``; needs ``fmt``)."""
    path = Path(path)
    first = next(read_jsonl(path), None)
    if first is None:
        raise DeepAlignError("no records", path=path)
    if "prefix" in first[1] and "text" in first[1] and "prompt" not in first[1]:
        if fmt is None:
            raise DeepAlignError("a reference training file needs a prompt format to re-render its queries", path=path)
        from deepalign.data.reference import load_reference_training

        return from_reference(load_reference_training(path), fmt)
    out, seen = [], {}
    for line, obj in read_jsonl(path):
        rec = TrainingRecord.from_dict(obj, path=path, line=line)
        if rec.id in seen:
            raise DeepAlignError(f'duplicate id "{rec.id}" (first used at {path}:{seen[rec.id]})', path=path, line=line)
        seen[rec.id] = line
        out.append(rec)
    return out


def to_reference(records: Iterable[TrainingRecord]) -> list:
    """Records as :class:`deepalign.data.reference.ReferenceExample` (one per line of a
    reference training file). Write them with ``save_reference_training(examples, path,
    eos=tokenizer.eos_token)``. RTO records with an appended safe response have no
    reference equivalent and are refused."""
    from deepalign.data.reference import ReferenceExample

    out = []
    for r in records:
        if r.kind == "rto" and r.target:
            raise DeepAlignError(f"record {r.id}: an RTO record with an appended safe response has no "
                                 "reference-format equivalent (build without rto_append_safe)")
        if "response" not in r.meta:
            raise DeepAlignError(f"record {r.id}: no raw response in meta; cannot export it")
        meta = {"prefix_slot": True} if r.kind == "prefix" else {}
        out.append(ReferenceExample(id=r.id, query=r.query, response_prefix=r.meta.get("response_prefix", ""),
                                    target=r.meta["response"], objective="rto" if r.kind == "rto" else "mle",
                                    meta=meta))
    return out


def export_reference(records: Iterable[TrainingRecord], path: str | os.PathLike, *, eos: str | None,
                     template: str | None = None) -> int:
    """Write ``records`` as a reference training file; ``eos``: the end-of-text string."""
    from deepalign.data.reference import REFERENCE_TEMPLATE, save_reference_training

    return save_reference_training(to_reference(records), path, template=template or REFERENCE_TEMPLATE, eos=eos)


def from_reference(examples: Iterable, fmt: PromptFormat) -> list[TrainingRecord]:
    """Reference examples (``load_reference_training``) as records rendered with ``fmt``:
    ``rto`` lines become RTO records, harmful-prefix lines ``prefix`` records, the others
    ``mle`` records (the file cannot tell helpful from vanilla-safety lines)."""
    out = []
    for ex in examples:
        query = ex.query
        prompt = query if ex.meta.get("verbatim") else fmt.prompt(query)
        base = {"source": ex.id, "response": ex.target, "response_prefix": ex.response_prefix}
        if ex.objective == "rto":
            out.append(TrainingRecord(ex.id, "rto", query, prompt, rto=fmt.lead + ex.target + fmt.end, meta=base))
        elif ex.response_prefix or ex.meta.get("prefix_slot"):
            if ex.response_prefix:
                prefix = fmt.lead + ex.response_prefix
                target = _join(prefix, ex.target) + ex.target + fmt.end
            else:
                prefix, target = "", fmt.lead + ex.target + fmt.end
            k = len(_WORD.findall(ex.response_prefix))
            out.append(TrainingRecord(ex.id, "prefix", query, prompt, prefix=prefix, target=target,
                                      meta={**base, "k": k, "unit": "words"}))
        else:
            out.append(TrainingRecord(ex.id, "mle", query, prompt, target=fmt.lead + ex.target + fmt.end, meta=base))
    return out


def k_statistics(records: Iterable[TrainingRecord]) -> dict[str, float]:
    """Share of ``k = 0`` and mean ``k`` over harmful-prefix records (for reports and tests)."""
    ks = [r.meta.get("k", 0) for r in records if r.kind == "prefix"]
    if not ks:
        return {"n": 0, "k0_share": math.nan, "mean_k": math.nan}
    return {"n": len(ks), "k0_share": sum(k == 0 for k in ks) / len(ks), "mean_k": sum(ks) / len(ks)}
