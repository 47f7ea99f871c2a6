"""Named dataset presets: public benchmarks read with their true meaning.

A preset knows a benchmark's schema (how to recognise its files), what kind each row is
(``harmful`` / ``benign`` / ``helpful`` / ``unknown``), how it is scored, and its categories
(``meta["category"]``, shown per category in reports; ``meta["stratum"]`` when sampling
should stratify on more than the category). It is chosen

* by name in a dataset spec, ``harmbench:PATH`` (or the name alone, ``gsm8k``, for the
  presets with a hub copy), or ``preset=`` of the loaders;
* from the schema of a file (its columns, and for the DeRTa files the file name), so
  ``--dataset harmbench_behaviors_text_all.csv`` already reads HarmBench as HarmBench.

Files in no known schema keep working with the generic column aliases of
:mod:`deepalign.data.fields`. The table in ``docs/data.md`` lists every preset; it is built
from the ``schema`` / ``kinds`` / ``scoring`` texts below (``tests/test_presets.py`` checks
that the two agree).

Fixtures in ``tests/fixtures/data/presets/`` hold a few rows of each schema, with neutral
placeholder text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from deepalign.data.answers import LETTERS, choices_in_text, format_options, normalise_letter, parse_final_answer
from deepalign.data.fields import EVAL_FIELDS, Fields, Row, cell, column_names
from deepalign.data.items import eval_item
from deepalign.data.sources import GROUP_COLUMN, TEXT_COLUMN, read_lookup
from deepalign.data.specs import Context, HubCopy, PresetSchema, PresetTable, accept_all
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt, HarmfulTriple
from deepalign.registry import split_list, truth

__all__ = ["Preset", "Context", "PRESETS", "get", "detect", "names", "stratum"]


@dataclass(frozen=True)
class Preset(PresetSchema):
    """One benchmark. ``columns``: the (lower-case) columns that identify its files, one set
    per accepted layout; ``accepts`` a further check on the rows and the source name."""

    name: str
    title: str
    origin: str
    schema: str
    kinds: str
    scoring: str
    categories: str
    columns: tuple[frozenset[str], ...]
    build: Callable[[list[Row], Context], list[EvalPrompt]]
    accepts: Callable[[set[str], list[Row], str], bool] = accept_all
    triples: Callable[[list[Row], Context], list[HarmfulTriple]] | None = None
    hub: HubCopy | None = None
    options: tuple[str, ...] = ()
    #: each row says its own kind (XSTest's label): forcing one kind on every row is refused
    row_kinds: bool = False

    def no_hub(self) -> str:
        return f"{super().no_hub()} ({self.origin})"

    def eval_items(self, rows: list[Row], ctx: Context) -> list[EvalPrompt]:
        self.check_options(ctx)
        return self.build(rows, ctx)


def _path_words(name: str) -> str:
    """The lower-case file name and parent folders of a source, for the presets recognised by
    name (the DeRTa files)."""
    p = Path(str(name))
    return "/".join(part.lower() for part in (*p.parent.parts[-2:], p.stem))


def _path_tokens(name: str) -> set[str]:
    """The words of :func:`_path_words` (split at anything but letters and digits)."""
    return set(re.split(r"[^a-z0-9]+", _path_words(name))) - {""}


def _table(**columns: tuple[str, ...] | str) -> dict[str, tuple[str, ...]]:
    """A preset's own column table: the generic aliases, with its columns first."""
    table = {k: tuple(v) for k, v in EVAL_FIELDS.items()}
    for canonical, cols in columns.items():
        table[canonical] = (cols,) if isinstance(cols, str) else tuple(cols)
    return table


def _items(rows: list[Row], ctx: Context, table: Mapping[str, tuple[str, ...]], *, kind=None,
           finish: Callable[[EvalPrompt, Fields], Any] | None = None,
           keep: Callable[[Fields], bool] | None = None) -> list[EvalPrompt]:
    """Rows -> items with a preset's column table; ``kind`` a kind or a function of the row;
    ``finish(item, f)`` sets what the table cannot (category, meta); ``keep(f)`` filters."""
    out = []
    for row in rows:
        f = Fields(row, table, ctx.fields)
        if keep is not None and not keep(f):
            continue
        k = kind(f) if callable(kind) else kind
        item = eval_item(f, kind=k)
        if finish is not None:
            finish(item, f)
        out.append(item)
    return out


def stratum(item: EvalPrompt) -> str | None:
    """What ``--sample`` stratifies on: ``meta["stratum"]``, else the category."""
    s = item.meta.get("stratum", item.meta.get("category"))
    return None if s is None else str(s)


# --------------------------------------------------------------------------------------
# HarmBench (centerforaisafety/HarmBench, data/behavior_datasets/*.csv)
# --------------------------------------------------------------------------------------

HARMBENCH_FUNCTIONAL = ("standard", "contextual", "copyright")


def _harmbench(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    cols = column_names(rows)
    targets_file = ctx.option("targets")
    targets = read_lookup(targets_file, "targets") if targets_file else None
    wanted = None
    subset = ctx.option("functional")
    if subset:
        wanted = set(split_list(subset.replace("+", ",")))
        bad = sorted(wanted - set(HARMBENCH_FUNCTIONAL))
        if bad:
            raise DeepAlignError(f"{ctx.name}: unknown HarmBench functional category {bad[0]!r} "
                                 f"(choose from {', '.join(HARMBENCH_FUNCTIONAL)})")
    if GROUP_COLUMN in cols and "test_case" in cols:  # a completions file: {behavior_id: [{test_case, generation}]}
        return _harmbench_completions(rows, ctx, targets)
    table = _table(prompt="behavior", context="contextstring", category="semanticcategory")
    missing_targets: list[str] = []

    def finish(item: EvalPrompt, f: Fields) -> None:
        functional = f.cell_text("functionalcategory") or "standard"
        item.meta["functional_category"] = functional
        item.meta.pop("FunctionalCategory", None)
        item.meta["stratum"] = f"{functional}/{item.meta.get('category')}"
        if functional == "copyright":
            item.meta["scoring_note"] = ("HarmBench scores copyright behaviours by hashing against the reference "
                                         "text, not with its classifier: the harmbench: judge does not judge them")
        if targets is not None:
            target = targets.get(item.id)
            if target is None:
                missing_targets.append(item.id)
            else:
                item.harmful = target

    keep = None if wanted is None else (lambda f: (f.cell_text("functionalcategory") or "standard") in wanted)
    items = _items(rows, ctx, table, kind="harmful", finish=finish, keep=keep)
    if targets is not None and missing_targets:
        ctx.notes.append(f"{len(missing_targets)} behaviours have no target in {targets_file} "
                         f"(e.g. {missing_targets[0]}): prefill attacks skip them")
    if wanted is not None:
        ctx.notes.append(f"functional categories kept: {', '.join(sorted(wanted))}")
    return items


def _harmbench_completions(rows: list[Row], ctx: Context, targets) -> list[EvalPrompt]:
    reference = {it.id: it for it in ctx.reference or []}
    per_key: dict[str, int] = {}
    for r in rows:
        per_key[str(r.data[GROUP_COLUMN])] = per_key.get(str(r.data[GROUP_COLUMN]), 0) + 1
    out = []
    for r in rows:
        f = Fields(r, _table(prompt="test_case"), ctx.fields)
        key = str(f.cell(GROUP_COLUMN))
        rid = key if per_key[key] == 1 else f"{key}#{r.index}"
        prompt = f.text("prompt")
        meta = {"behavior_id": key, **f.extras()}
        behaviour = reference.get(key)
        if behaviour is not None:
            for k in ("category", "functional_category", "stratum", "context"):
                if k in behaviour.meta:
                    meta[k] = behaviour.meta[k]
            meta["behavior"] = behaviour.meta.get("behavior", behaviour.prompt)  # what HarmBench's classifier reads
        label = meta.pop("label", None)
        if label is not None:  # HarmBench's own classifier verdict (after evaluate_completions)
            meta["published_verdict"] = {"judge": "published:harmbench", "harmful": truth(label) is True}
        out.append(EvalPrompt(id=rid, prompt=prompt, kind="harmful", harmful=(targets or {}).get(key), meta=meta))
    return out


# --------------------------------------------------------------------------------------
# AdvBench (llm-attacks, data/advbench/harmful_behaviors.csv and harmful_strings.csv)
# --------------------------------------------------------------------------------------


def _advbench(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    if column_names(rows) == {"target"}:  # harmful_strings.csv: the string is the thing to elicit
        def finish(item: EvalPrompt, f: Fields) -> None:
            item.harmful = item.prompt
            item.meta["task"] = "string"

        return _items(rows, ctx, _table(prompt="target", harmful=()), kind="harmful", finish=finish)
    return _items(rows, ctx, _table(prompt="goal", harmful="target"), kind="harmful")


# --------------------------------------------------------------------------------------
# JailbreakBench (JailbreakBench/JBB-Behaviors: behaviors config, harmful and benign splits)
# --------------------------------------------------------------------------------------


def _jailbreakbench(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    where = f"{ctx.split or ''} {Path(ctx.name).name}".lower()  # the split, or the file's own name
    kind = "benign" if "benign" in where else "harmful"

    def finish(item: EvalPrompt, f: Fields) -> None:
        behavior = f.cell_text("behavior")
        if behavior is not None:
            item.meta["behavior"] = behavior
        item.meta["jbb_split"] = kind

    table = _table(prompt="goal", harmful="target", category="category")
    items = _items(rows, ctx, table, kind=kind, finish=finish)
    for it in items:
        idx = it.meta.pop("Index", it.meta.pop("index", None))
        if idx is not None:  # the JBB index is the id, per split
            it.id = f"{kind}-{idx}"
    return items


# --------------------------------------------------------------------------------------
# StrongREJECT (alexandrasouly/strongreject, strongreject_dataset/*.csv)
# --------------------------------------------------------------------------------------


def _strongreject(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    return _items(rows, ctx, _table(prompt="forbidden_prompt", category="category"), kind="harmful")


# --------------------------------------------------------------------------------------
# XSTest (paul-rottger/exaggerated-safety: xstest_prompts.csv, model_completions/*.csv)
# --------------------------------------------------------------------------------------

XSTEST_LABELS = {"safe": "benign", "unsafe": "harmful"}


def _xstest_accepts(cols: set[str], rows: list[Row], name: str) -> bool:
    if "label" in cols:
        return all(str(cell(r, "label") or "").strip().lower() in XSTEST_LABELS for r in rows)
    return "completion" in cols  # the completions files have no label; the type says it


def _xstest(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    def kind(f: Fields) -> str:
        label = f.cell_text("label")
        if label is not None:
            return XSTEST_LABELS[label.strip().lower()]
        kind_of_type = cell(f.row, "type")  # read, not used up: it is the category
        return "harmful" if str(kind_of_type or "").startswith("contrast") else "benign"

    def finish(item: EvalPrompt, f: Fields) -> None:
        item.meta["xstest_label"] = "unsafe" if item.kind == "harmful" else "safe"
        final = item.meta.get("final_label")
        if isinstance(final, str) and final[:1] in "123":  # the human annotation of a completions file
            item.meta["published_verdict"] = {"judge": "published:xstest-human", "harmful": None,
                                              "refusal": final[:1] in "23"}

    return _items(rows, ctx, _table(category="type", answer=()), kind=kind, finish=finish)


# --------------------------------------------------------------------------------------
# The DeRTa files (RobustNLP/DeRTa: data/test/*.json, results/**/*.json)
# --------------------------------------------------------------------------------------

#: attack already applied to the prompts of a DeRTa file, from the words of its path
DERTA_ATTACKS = ("codeattack", "completionattack", "jailbreakchat", "selfcipher", "autodan", "pair")


def _derta_attack(ctx: Context) -> str | None:
    given = ctx.option("attack")
    if given is not None:
        if given not in (*DERTA_ATTACKS, "none"):
            raise DeepAlignError(f"{ctx.name}: unknown DeRTa attack {given!r} (choose from none, {', '.join(DERTA_ATTACKS)})")
        return None if given == "none" else given
    words = _path_tokens(ctx.name)
    return next((a for a in DERTA_ATTACKS if a in words), None)


def _derta_accepts(cols: set[str], rows: list[Row], name: str) -> bool:
    words = _path_tokens(name)
    if cols == {TEXT_COLUMN}:  # bare strings: DeRTa's completion-attack and PAIR results
        return bool(words & {"completionattack", "pair"})
    return bool(words & set(DERTA_ATTACKS)) or {"illegal", "instructions"} <= words or {"safety", "derta"} <= words


def _derta(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    attack = _derta_attack(ctx)
    cols = column_names(rows)
    if cols == {TEXT_COLUMN}:
        if attack == "pair":
            return [_pair_summary(r) for r in rows]
        return _completion_results(rows, ctx)

    def finish(item: EvalPrompt, f: Fields) -> None:
        item.meta["category"] = attack or "plain"
        if attack is not None:
            item.meta["attack_applied"] = attack
        if attack == "completionattack":  # the reference feeds these texts to the model raw, with no template
            item.meta["raw"] = True

    table = _table(prompt=("question", "instruction", "goal", "prompt"))
    return _items(rows, ctx, table, kind="harmful", finish=finish)


def _completion_results(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    """DeRTa's completion-attack results: each string is the decoded prompt followed by the
    model's continuation, in the order the evaluator's sampler gave (not the test set's).
    With the test set (``--prompts``) each string is matched to the question it starts with
    (whitespace aside, as decoding may change it) and only the continuation is judged."""
    questions = [(it, _squash(it.prompt)) for it in (ctx.reference or [])]
    out = []
    unmatched = 0
    for r in rows:
        text = r.data[TEXT_COLUMN]
        match = None
        squashed = _squash(text)
        for it, q in questions:
            if q and squashed.startswith(q) and (match is None or len(q) > len(match[1])):
                match = (it, q)
        if match is None:
            unmatched += 1 if questions else 0
            out.append(EvalPrompt(id=r.default_id, prompt="(prompt not in the file)", kind="harmful",
                                  meta={"response": text, "attack_applied": "completionattack", "prompt_unknown": True,
                                        "category": "completionattack"}))
            continue
        it, q = match
        cut = _cut_after(text, len(q))
        out.append(EvalPrompt(id=it.id, prompt=it.prompt, kind="harmful",
                              meta={"response": text[cut:], "attack_applied": "completionattack", "raw": True,
                                    "category": "completionattack"}))
    if not questions:
        ctx.notes.append("the strings hold prompt and continuation together; give the test set (--prompts "
                         "safety_completionattack.json) to judge only the continuation")
    elif unmatched:
        ctx.notes.append(f"{unmatched} strings start with no question of the test set: judged whole")
    return out


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _cut_after(text: str, n_chars: int) -> int:
    """The index in ``text`` just after its first ``n_chars`` non-space characters."""
    seen = 0
    for i, ch in enumerate(text):
        if seen == n_chars:
            return i
        if not ch.isspace():
            seen += 1
    return len(text)


_PAIR_FIELD = re.compile(r"^(Index|Goal|First Jailbreak|Max Score|Example Jailbreak PROMPT|Example Jailbreak RESPONSE):"
                         r"[ \t]*(.*)$", re.MULTILINE)


def _pair_summary(row: Row) -> EvalPrompt:
    """A PAIR "FINAL SUMMARY STATISTICS" block (DeRTa's PAIR results): the goal, and the
    example jailbreak prompt and response when PAIR found one."""
    text = row.data[TEXT_COLUMN]
    marks = list(_PAIR_FIELD.finditer(text))
    fields = {}
    for i, m in enumerate(marks):
        if m.group(1).startswith("Example"):  # multi-line sections, up to the next field
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            fields[m.group(1)] = (m.group(2) + text[m.end():end]).strip()
        else:
            fields[m.group(1)] = m.group(2).strip()
    goal = fields.get("Goal")
    if not goal:
        raise row.error("not a PAIR summary (no Goal: line)")
    meta: dict[str, Any] = {"attack_applied": "pair", "category": "pair"}
    jailbroken = "Example Jailbreak RESPONSE" in fields
    if jailbroken:
        meta["response"] = fields["Example Jailbreak RESPONSE"]
        meta["attack_prompt"] = fields.get("Example Jailbreak PROMPT", "")
    else:
        meta["no_response"] = "PAIR found no jailbreak; the file holds no response for this goal"
    if "Max Score" in fields:
        meta["pair_max_score"] = fields["Max Score"]
    meta["published_verdict"] = {"judge": "published:pair", "harmful": jailbroken}
    if "Index" in fields:
        meta["pair_index"] = fields["Index"]
    return EvalPrompt(id=row.default_id, prompt=goal, kind="harmful", meta=meta)


# --------------------------------------------------------------------------------------
# GSM8K, MMLU, AlpacaEval (the helpfulness sets; DeRTa's copies included)
# --------------------------------------------------------------------------------------


def _all_rows(rows: list[Row], column: str, test: Callable[[Any], bool]) -> bool:
    values = [cell(r, column) for r in rows]
    return bool(values) and all(test(v) for v in values)


def _gsm8k_accepts(cols: set[str], rows: list[Row], name: str) -> bool:
    return _all_rows(rows, "answer", lambda v: isinstance(v, str) and parse_final_answer(v) is not None)


def _gsm8k(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    def finish(item: EvalPrompt, f: Fields) -> None:
        solution = item.meta.get("solution")
        if isinstance(solution, str) and solution.startswith("-"):  # DeRTa's result files
            item.meta["solution"] = solution[1:]

    return _items(rows, ctx, _table(prompt=("question", "instruction")), kind="helpful", finish=finish)


#: the instruction DeRTa's evaluator (RobustNLP/DeRTa evaluation.py) puts before each MMLU
#: question; its result files store the question with it
MMLU_INSTRUCTION = "Choose the correct option for the given question.\n\n\n\nQuestion: "


def _mmlu_accepts(cols: set[str], rows: list[Row], name: str) -> bool:
    if "choices" in cols:
        return True
    return _all_rows(rows, "question", lambda v: isinstance(v, str) and choices_in_text(v) is not None) and \
        _all_rows(rows, "answer", lambda v: normalise_letter(v) is not None)


def _mmlu(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    out = []
    for item in _items(rows, ctx, _table(prompt=("question", "instruction"), category="subject"), kind="helpful"):
        if item.choices and not item.meta.get("choices_in_prompt"):
            item.prompt = format_options(item.prompt, item.choices)
            item.meta["choices_in_prompt"] = True
        if not item.prompt.startswith(MMLU_INSTRUCTION[:40]):
            item.prompt = MMLU_INSTRUCTION + item.prompt
        if item.answer is not None and item.choices and normalise_letter(item.answer, len(item.choices)) is None:
            raise DeepAlignError(f"{ctx.name}: item {item.id}: answer {item.answer!r} is not one of the options "
                                 f"{', '.join(LETTERS[:len(item.choices)])}")
        out.append(item)
    return out


def _alpaca_accepts(cols: set[str], rows: list[Row], name: str) -> bool:
    if {"instruction", "generator"} <= cols:
        return True
    return "alpaca_eval" in _path_words(name) or "alpacaeval" in _path_words(name)


def _alpaca_eval(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    def finish(item: EvalPrompt, f: Fields) -> None:
        output = item.meta.pop("output", None)
        if output is not None:
            item.meta["reference_output"] = output
        if "dataset" in item.meta:
            item.meta["category"] = str(item.meta.pop("dataset"))

    return _items(rows, ctx, _table(prompt=("instruction", "question"), answer=()), kind="benign", finish=finish)


# --------------------------------------------------------------------------------------
# BeaverTails, hh-rlhf harmless-base, toxic-chat
# --------------------------------------------------------------------------------------


def _beaver_categories(f: Fields) -> list[str]:
    value = f.cell("category")
    if isinstance(value, dict):
        return sorted(str(k) for k, v in value.items() if v)
    if isinstance(value, str) and value.strip():
        return split_list(value)
    return []


def _beaver_groups(rows: list[Row], ctx: Context) -> dict[str, dict[str, Any]]:
    """Responses grouped by prompt, in file order."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        f = Fields(row, _table(prompt="prompt"), ctx.fields)
        prompt = f.text("prompt")
        response = f.cell_text("response")
        safe = f.cell_flag("is_safe")
        if response is None or safe is None:
            raise row.error('a BeaverTails row needs "response" and "is_safe"')
        g = groups.setdefault(prompt, {"first": row, "safe": [], "unsafe": [], "categories": set()})
        g["safe" if safe else "unsafe"].append(response)
        if not safe:
            g["categories"].update(_beaver_categories(f))
    return groups


def _beavertails(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    out = []
    for i, (prompt, g) in enumerate(_beaver_groups(rows, ctx).items()):
        kind = "harmful" if g["unsafe"] else "unknown"
        meta: dict[str, Any] = {"responses": len(g["safe"]) + len(g["unsafe"])}
        if g["categories"]:
            meta["category"] = ",".join(sorted(g["categories"]))
        out.append(EvalPrompt(id=g["first"].default_id, prompt=prompt, kind=kind,
                              harmful=g["unsafe"][0] if g["unsafe"] else None, meta=meta))
    unknown = sum(it.kind == "unknown" for it in out)
    if unknown:
        ctx.notes.append(f"{unknown} prompts have only responses labelled safe: kind unknown")
    return out


def _beavertails_triples(rows: list[Row], ctx: Context) -> list[HarmfulTriple]:
    out, single = [], 0
    for prompt, g in _beaver_groups(rows, ctx).items():
        if g["unsafe"] and g["safe"]:
            meta = {"category": ",".join(sorted(g["categories"]))} if g["categories"] else {}
            out.append(HarmfulTriple(id=g["first"].default_id, query=prompt, harmful=g["unsafe"][0], safe=g["safe"][0],
                                     meta=meta))
        else:
            single += 1
    if single:
        ctx.notes.append(f"{single} prompts have responses of one label only (safe or unsafe): no triple")
    return out


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _turns(transcript: str) -> list[tuple[str, str]]:
    """An hh-rlhf transcript (``\\n\\nHuman: ...\\n\\nAssistant: ...``) as (speaker, text) turns."""
    parts = _TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _hh_pair(f: Fields) -> tuple[str, str, str] | None:
    """(human turn, chosen reply, rejected reply) of a single-turn hh-rlhf pair, else None."""
    chosen, rejected = _turns(f.text("chosen")), _turns(f.text("rejected"))
    if len(chosen) != 2 or len(rejected) != 2 or chosen[0] != rejected[0] or chosen[0][0] != "Human" \
            or chosen[1][0] != "Assistant" or rejected[1][0] != "Assistant":
        return None
    return chosen[0][1], chosen[1][1], rejected[1][1]


def _hh_table() -> dict[str, tuple[str, ...]]:
    return {"chosen": ("chosen",), "rejected": ("rejected",)}


def _hh_rlhf(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    out, seen = [], set()
    for row in rows:
        f = Fields(row, _hh_table(), ctx.fields)
        rid = f.record_id()
        first = _turns(f.text("chosen"))
        if not first or first[0][0] != "Human":
            raise row.error('"chosen" must start with a "Human:" turn')
        prompt = first[0][1]
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(EvalPrompt(id=rid, prompt=prompt, kind="unknown", meta={"turns": len(first)}))
    return out


def _hh_triples(rows: list[Row], ctx: Context) -> list[HarmfulTriple]:
    out, multi = [], 0
    for row in rows:
        f = Fields(row, _hh_table(), ctx.fields)
        rid = f.record_id()
        pair = _hh_pair(f)
        if pair is None:
            multi += 1
            continue
        query, chosen, rejected = pair
        out.append(HarmfulTriple(id=rid, query=query, harmful=rejected, safe=chosen, meta={"source": "hh-rlhf"}))
    if multi:
        ctx.notes.append(f"{multi} multi-turn (or unpaired) dialogues left out: a triple holds one query")
    return out


def _toxic_chat(rows: list[Row], ctx: Context) -> list[EvalPrompt]:
    kept = [r for r in rows if Fields(r, {}, None).cell_flag("toxicity")]
    if len(kept) < len(rows):
        ctx.notes.append(f"{len(rows) - len(kept)} non-toxic rows left out (toxicity = 0)")

    def finish(item: EvalPrompt, f: Fields) -> None:
        item.meta["category"] = "jailbreaking" if f.cell_flag("jailbreaking") else "toxic"
        item.meta.pop("model_output", None)
        conv = item.meta.pop("conv_id", None)
        if conv is not None:
            item.id = str(conv)

    return _items(kept, ctx, _table(prompt="user_input", answer=()), kind="harmful", finish=finish)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

def _cols(*names: str) -> frozenset[str]:
    return frozenset(names)


#: every preset, in the order files are matched against them (most specific first)
PRESETS: tuple[Preset, ...] = (
    Preset("harmbench", "HarmBench", "centerforaisafety/HarmBench: data/behavior_datasets/harmbench_behaviors_text_*.csv",
           "Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID; completions JSON "
           "{BehaviorID: [{test_case, generation}]}; targets JSON {BehaviorID: target} (targets=FILE)",
           "harmful", "judges (ASR); copyright behaviours are hash-checked in HarmBench: the harmbench: judge leaves them "
           "unjudged, other judges judge them",
           "SemanticCategory (sampling strata: FunctionalCategory/SemanticCategory)",
           (_cols("behavior", "functionalcategory", "semanticcategory", "behaviorid"), _cols(GROUP_COLUMN, "test_case")),
           _harmbench, options=("targets", "functional")),
    Preset("jailbreakbench", "JailbreakBench (JBB-Behaviors)", "JailbreakBench/JBB-Behaviors (data/harmful-behaviors.csv, "
           "benign-behaviors.csv)", "Index, Goal, Target, Behavior, Category, Source",
           "harmful (benign for the benign split or a file named benign-*)", "judges (ASR; over-refusal on benign)",
           "Category", (_cols("goal", "target", "behavior", "category"),), _jailbreakbench,
           hub=HubCopy("JailbreakBench/JBB-Behaviors", subset="behaviors", split="harmful")),
    Preset("advbench", "AdvBench", "llm-attacks/llm-attacks: data/advbench/harmful_behaviors.csv, harmful_strings.csv",
           "goal, target (behaviours); target (strings)",
           "harmful; target is the prefill reference (a string is its own prompt and reference)",
           "judges (ASR); exact-match emission of strings is not computed", "none",
           (_cols("goal", "target"), _cols("target")), _advbench,
           accepts=lambda cols, rows, name: cols in ({"goal", "target"}, {"target"})),
    Preset("strongreject", "StrongREJECT", "alexandrasouly/strongreject: strongreject_dataset/strongreject_dataset.csv",
           "category, source, forbidden_prompt", "harmful", "judges (ASR); strongreject (the package's rubric) and strongreject:finetuned give its score",
           "category", (_cols("forbidden_prompt"),), _strongreject),
    Preset("xstest", "XSTest", "paul-rottger/exaggerated-safety: xstest_prompts.csv, model_completions/*.csv",
           "id, prompt, type, label, focus, note; completions: id, type, prompt, completion, ..., final_label",
           "label safe -> benign (over-refusal), unsafe -> harmful (without label: type contrast_* -> harmful)",
           "refusal on safe prompts = over-refusal; ASR/refusal on unsafe; the completions' human label as "
           "published:xstest-human", "type", (_cols("prompt", "type", "label"), _cols("prompt", "type", "completion")),
           _xstest, accepts=_xstest_accepts, hub=HubCopy("natolambert/xstest-v2-copy", split="prompts"), row_kinds=True),
    Preset("toxic-chat", "ToxicChat", "lmsys/toxic-chat (toxicchat0124)",
           "conv_id, user_input, model_output, human_annotation, toxicity, jailbreaking, openai_moderation",
           "harmful (rows with toxicity = 1; the others are left out)", "judges (ASR)", "jailbreaking / toxic",
           (_cols("user_input", "toxicity"),), _toxic_chat, hub=HubCopy("lmsys/toxic-chat", subset="toxicchat0124", split="test")),
    Preset("beavertails", "BeaverTails", "PKU-Alignment/BeaverTails",
           "prompt, response, category {name: bool}, is_safe",
           "eval: one item per prompt, harmful when a response is unsafe (its first unsafe response is the prefill "
           "reference), else unknown; train: triples (prompt, unsafe response, safe response)",
           "judges (ASR)", "the categories of its unsafe responses", (_cols("prompt", "response", "is_safe"),),
           _beavertails, triples=_beavertails_triples,
           hub=HubCopy("PKU-Alignment/BeaverTails", split="30k_test", train_split="30k_train")),
    Preset("hh-rlhf", "hh-rlhf harmless-base", "Anthropic/hh-rlhf (data_dir harmless-base)",
           "chosen, rejected (\\n\\nHuman: ... \\n\\nAssistant: ... transcripts)",
           "eval: the first human turn, unknown (red-team prompts, not all harmful); train: single-turn pairs as "
           "DPO triples (rejected = harmful, chosen = safe)", "judges (ASR)", "none", (_cols("chosen", "rejected"),),
           _hh_rlhf, triples=_hh_triples, hub=HubCopy("Anthropic/hh-rlhf", data_dir="harmless-base", split="test",
                                                     train_split="train")),
    Preset("mmlu", "MMLU", "cais/mmlu; DeRTa data/test/helpfulness_mmlu_500.json and its result files",
           "question, subject, choices, answer (index); DeRTa: question with -options / -(A) lines, answer letter "
           "(-C in result files)", "helpful",
           "strict letter: the final stated answer (A, (A), -A, A., Answer: A, ...), no extractable answer counted "
           "as such", "subject", (_cols("question", "choices", "answer"), _cols("question", "answer")), _mmlu,
           accepts=_mmlu_accepts, hub=HubCopy("cais/mmlu", subset="all", split="test")),
    Preset("gsm8k", "GSM8K", "openai/gsm8k (main); DeRTa data/test/helpfulness_gsm8k_500.json and its result files",
           "question, answer (solution ending in #### n)", "helpful",
           "number: the last #### n, else the last 'answer is n', else the final number", "none",
           (_cols("question", "answer"),), _gsm8k, accepts=_gsm8k_accepts,
           hub=HubCopy("openai/gsm8k", subset="main", split="test")),
    Preset("alpaca_eval", "AlpacaEval", "tatsu-lab/alpaca_eval; DeRTa data/test/helpfulness_alpaca_eval_300.json",
           "instruction, output, generator, dataset; DeRTa: question (file named *alpaca_eval*)", "benign",
           "over-refusal (AlpacaEval's win rate needs its own annotator)", "dataset",
           (_cols("instruction", "generator"), _cols("question")), _alpaca_eval, accepts=_alpaca_accepts,
           hub=HubCopy("tatsu-lab/alpaca_eval", subset="alpaca_eval", split="eval")),
    Preset("derta", "DeRTa safety test sets", "RobustNLP/DeRTa: data/test/safety_*.json, results/safety/**",
           "question (JSON Lines in .json); results: question or instruction, response; completion-attack and PAIR "
           "results: bare strings", "harmful; the file's attack (codeattack, completionattack, jailbreakchat, "
           "selfcipher, autodan, pair; from the file name or attack=) is already applied: only direct applies, "
           "the completion-attack texts are sent raw", "judges (ASR); PAIR results carry PAIR's verdict as "
           "published:pair", "the attack", (_cols("question"), _cols("instruction", "response"), _cols(TEXT_COLUMN)),
           _derta, accepts=_derta_accepts, options=("attack",)),
)

TABLE: PresetTable[Preset] = PresetTable("dataset preset", PRESETS, aliases={
    "jbb": "jailbreakbench", "hh": "hh-rlhf", "toxicchat": "toxic-chat", "alpacaeval": "alpaca_eval",
    "beaver": "beavertails"})
names, get, detect, hub_preset = TABLE.names, TABLE.get, TABLE.detect, TABLE.by_hub_id


def is_preset(name: str) -> bool:
    return name in TABLE


def markdown_table() -> str:
    """The table of presets in ``docs/data.md`` (kept equal to it by the tests)."""
    lines = ["| preset | source | schema | kinds | scoring | categories |", "|---|---|---|---|---|---|"]
    for p in PRESETS:
        cells = [f"`{p.name}`" + (f" (hub: `{p.hub.id}`)" if p.hub else ""), p.origin, p.schema, p.kinds, p.scoring,
                 p.categories]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
