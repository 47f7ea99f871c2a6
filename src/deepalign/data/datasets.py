"""Evaluation datasets by spec, and the data options every stage shares.

A spec is one of

- ``world:<split>`` — the embedded world (``--world DIR``): ``world:harmful`` reads
  ``test/harmful.jsonl`` (HarmfulTriple rows: the harmful response becomes the prefill
  reference), ``world:unseen`` ``test/unseen.jsonl`` (the same, for misdeeds alignment data
  never shows), ``world:benign`` / ``world:helpful`` the EvalPrompt rows of
  ``test/benign.jsonl`` / ``test/helpful.jsonl``; ``world:test`` (or any directory name of
  the world, e.g. ``world:dev``, the split to tune on, or ``world:ft_test``, the fine-tuning
  data's held-out tests) every one of those files it has; ``world:dev/unseen`` one file of a
  split. Training data is named the same way (``world:ft/harmful``, ``world:ft/benign``,
  :func:`load_train_instructions`) and is refused as an evaluation dataset.
- ``[<kind>:][<preset>:]<path or hub id>[,key=value...]`` — any file the data loaders read.
  A file in a known benchmark's schema is read as that benchmark
  (:mod:`deepalign.data.presets`); ``<preset>:`` names it explicitly (``harmbench:FILE``), and
  a preset's name alone loads its hub copy (``gsm8k``, ``mmlu``). ``harmful:``, ``benign:``,
  ``helpful:`` or ``unknown:`` force the kind of every row. Options after commas: ``split=``,
  ``subset=`` and the preset's own (``targets=FILE`` of HarmBench, ``attack=`` of the DeRTa
  test sets); a value holding a comma is written in double quotes.

:class:`DataOptions` (``--fields``, ``--subset``, ``--split``, ``--sample``, ``--limit``,
``--sample_seed``) are parsed by ``eval``, ``ed`` and ``train`` alike.

Every dataset has an identity, a hash of the items it holds: the same file given by a
relative and an absolute path (or a copy of it) is one dataset, and its rows in a run
directory are keyed by ``<name>@<hash>`` rather than by the spec string.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from deepalign.data import presets
from deepalign.data.presets import stratum
from deepalign.data.specs import SourceSpec
from deepalign.data.specs import parse_spec as parse_source_spec
from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import On, exclusive, number
from deepalign.records import ITEM_KINDS, EvalPrompt, to_dict
from deepalign.registry import split_list

WORLD_FILES = ("harmful", "unseen", "benign", "helpful")
TRIPLE_FILES = ("harmful", "unseen")  # HarmfulTriple rows, evaluated as harmful items
TRAIN_DIRS = ("train", "ft", "pretrain")  # world directories of training data (world:ft/harmful trains)
KIND_PREFIXES = ITEM_KINDS
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(/[A-Za-z0-9][A-Za-z0-9_-]*)?")  # test, dev, dev/unseen


#: options of DataOptions that only another one reads (deepalign.options.check_needs)
DATA_NEEDS = {"sample_seed": On("sample")}


@dataclass
class DataOptions:
    """How datasets are read and which of their items are used (``eval``, ``ed``, ``train``)."""

    fields: list[str] | None = field(default=None, metadata={
        "help": "name columns the loaders cannot guess, canonical=column: prompt=forbidden_prompt,category=cat "
                "(eval, ed); query=..,harmful=..,safe=.. and instruction=..,response=.. (train); id=COLUMN"})
    subset: str | None = field(default=None, metadata={
        "help": "hub configuration (openai/gsm8k: main, JBB-Behaviors: behaviors); for a HarmBench file the "
                "functional categories to keep (standard,contextual,copyright)"})
    split: str | None = field(default=None, metadata={
        "help": "split of a hub dataset or dataset directory (JBB-Behaviors: harmful or benign)"})
    sample: int | None = field(default=None, metadata={
        "help": "a random sample of N items per dataset (per world file), seeded by --sample_seed and "
                "stratified by category (HarmBench: functional x semantic category)"})
    limit: int | None = field(default=None, metadata={
        "help": "the first N items per dataset (per world file), in file order; see --sample for a "
                "representative subset"})
    sample_seed: int = field(default=0, metadata={"help": "seed of --sample"})

    def __post_init__(self):
        number("sample", self.sample, low=1, integer=True, optional=True)
        number("limit", self.limit, low=1, integer=True, optional=True)
        number("sample_seed", self.sample_seed, integer=True)
        exclusive(sample=self.sample, limit=self.limit)
        if isinstance(self.fields, str):
            self.fields = [self.fields]
        self.columns()  # validates the syntax

    def columns(self) -> dict[str, str]:
        """``--fields`` as ``{canonical: column}``."""
        out: dict[str, str] = {}
        for part in split_list(self.fields):
            key, eq, column = part.partition("=")
            key, column = key.strip(), column.strip()
            if not eq or not key or not column:
                raise OptionError("fields", f"takes canonical=column pairs (e.g. prompt=forbidden_prompt), got {part!r}")
            if key in out and out[key] != column:
                raise OptionError("fields", f"names {key} twice ({out[key]} and {column})")
            out[key] = column
        return out

    def columns_for(self, table: Mapping[str, Any], extra: Sequence[str] = ()) -> dict[str, str]:
        """The ``--fields`` entries a loader with ``table`` uses."""
        return {k: v for k, v in self.columns().items() if k in table or k in extra}


@dataclass
class Dataset:
    """A loaded evaluation dataset: its items (after ``--sample`` / ``--limit``) and what
    they are."""

    spec: str
    name: str  #: the key of its rows: ``<stem>@<hash>`` (``world:<split>`` for the world)
    items: list[EvalPrompt]
    preset: str | None = None
    identity: str | None = None  #: hash of every item the source holds (before selection)
    total: int = 0  #: items before selection
    selection: str = "all"
    notes: list[str] = field(default_factory=list)
    #: what the dataset is for (harmful, unseen, benign, helpful, mixed); None: from its items' kinds
    role: str | None = None
    #: a short display name (``harmful`` for ``world:harmful``, the file's stem for a file)
    title: str | None = None

    def kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for it in self.items:
            kinds[it.kind] = kinds.get(it.kind, 0) + 1
        return kinds

    def info(self) -> dict[str, Any]:
        out = {"spec": self.spec, "preset": self.preset, "items": len(self.items), "total": self.total,
               "selection": self.selection}
        if self.identity:
            out["identity"] = self.identity
        if self.notes:
            out["notes"] = list(self.notes)
        out["kinds"] = self.kinds()
        return out


# --------------------------------------------------------------------------------------
# selection: --sample (stratified, seeded) and --limit (first N)
# --------------------------------------------------------------------------------------


def stratified_sample(items: Sequence[EvalPrompt], n: int, seed: int) -> list[EvalPrompt]:
    """``n`` items drawn without replacement, each stratum (category) getting its share of
    ``n`` by largest remainder (every stratum at least one when ``n`` allows), in file order.
    The same seed gives the same sample."""
    if n >= len(items):
        return list(items)
    groups: dict[str | None, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(stratum(it), []).append(i)
    keys = sorted(groups, key=lambda k: (k is None, str(k)))
    total = len(items)
    quota = {k: n * len(groups[k]) / total for k in keys}
    take = {k: int(quota[k]) for k in keys}
    if n >= len(keys):  # every stratum is represented
        for k in keys:
            take[k] = max(take[k], 1)
    left = n - sum(take.values())
    for k in sorted(keys, key=lambda k: (-(quota[k] - int(quota[k])), str(k))):
        if left <= 0:
            break
        if take[k] < len(groups[k]):
            take[k] += 1
            left -= 1
    while sum(take.values()) > n:  # the minimum of one each overshot: trim the largest strata
        k = max(keys, key=lambda k: (take[k], str(k)))
        take[k] -= 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for k in keys:
        chosen.extend(rng.sample(groups[k], take[k]))
    return [items[i] for i in sorted(chosen)]


def select(items: list[EvalPrompt], *, sample: int | None = None, limit: int | None = None,
           seed: int = 0) -> tuple[list[EvalPrompt], str]:
    """The items ``--sample`` / ``--limit`` keep, and a line saying which."""
    if sample is not None and sample < len(items):
        strata = len({stratum(it) for it in items})
        how = f"stratified over {strata} categories" if strata > 1 else "no categories to stratify on"
        return stratified_sample(items, sample, seed), f"random sample of {sample} of {len(items)} (seed {seed}, {how})"
    if limit is not None and limit < len(items):
        return items[:limit], f"first {limit} of {len(items)} in file order (--limit)"
    return list(items), "all"


# --------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------


def _world_file(path: Path, name: str) -> list[EvalPrompt]:
    from deepalign.data.loaders import load_eval_prompts, load_triples

    if name in TRIPLE_FILES:
        return [
            EvalPrompt(id=t.id, prompt=t.query, kind="harmful", harmful=t.harmful, meta={**t.meta, "safe": t.safe})
            for t in load_triples(str(path))
        ]
    return load_eval_prompts(str(path), kind=name if name in KIND_PREFIXES else None)


def world_role(split: str) -> str:
    """What a world split is for: harmful, unseen, benign, helpful, ``task`` (the held-out test
    of the benign fine-tuning task: ``ft_test/helpful``, ``ft_dev/helpful``) or mixed."""
    head, _, last = split.rpartition("/")
    if head.startswith("ft") and last == "helpful":
        return "task"
    return last if last in WORLD_FILES else "mixed"


def load_world(world, split: str, limit: int | None = None, *, sample: int | None = None,
               seed: int = 0) -> list[EvalPrompt]:
    """World items; ``limit`` / ``sample`` apply to each file (so ``world:test`` keeps every kind)."""
    if world is None:
        raise DeepAlignError(f"dataset world:{split} needs the world directory (--world DIR)")
    root = Path(world)
    if not _SPLIT_NAME.fullmatch(split or ""):
        raise DeepAlignError(f"world split must be a plain name such as test, dev, harmful or dev/unseen, got {split!r}")
    if not root.is_dir():
        raise DeepAlignError(f"no such world directory: {root}")
    if split.split("/")[0] in TRAIN_DIRS:
        raise DeepAlignError(f"world:{split} is training data; evaluate on a held-out split (world:test, world:dev, "
                             "world:ft_test/harmful, world:ft_test/helpful)")
    if (root / split).is_dir():
        files = [(root / split / f"{n}.jsonl", n) for n in WORLD_FILES if (root / split / f"{n}.jsonl").exists()]
        if not files:
            raise DeepAlignError(f"world split directory has none of {', '.join(f'{n}.jsonl' for n in WORLD_FILES)}: {root / split}")
    elif (root / "test" / f"{split}.jsonl").exists():
        files = [(root / "test" / f"{split}.jsonl", split)]
    elif "/" in split and (root / f"{split}.jsonl").is_file():  # one file of a split: world:dev/unseen
        files = [(root / f"{split}.jsonl", split.rsplit("/", 1)[1])]
    else:
        raise DeepAlignError(f"unknown world split {split!r}: no {root / 'test' / (split + '.jsonl')} and no directory "
                             f"{root / split}{_world_choices(root, split, train=False)}")
    items: list[EvalPrompt] = []
    for path, name in files:
        items.extend(select(_world_file(path, name), sample=sample, limit=limit, seed=seed)[0])
    return items


# --------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------


#: a parsed dataset spec (``[kind:][preset:]source[,key=value...]``)
Spec = SourceSpec


def parse_spec(spec: str) -> Spec:
    """``[kind:][preset:]source[,key=value...]`` (see the module doc and
    :mod:`deepalign.data.specs`, the grammar dataset and label presets share)."""
    return parse_source_spec(spec, presets.TABLE, what="dataset", kinds=KIND_PREFIXES)


def _stem(source: str | None, preset: str | None) -> str:
    if not source:
        return preset or "data"
    p = Path(source.rstrip("/\\"))
    if p.exists():
        return p.stem if p.is_file() else p.name
    return source.split(":")[0].replace("/", "_")


def identity(items: Sequence[EvalPrompt]) -> str:
    """A hash of the items (ids, prompts, kinds, answers, references, meta), order included."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(to_dict(it), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def open_dataset(spec: str, options: DataOptions | None = None, *, world=None) -> Dataset:
    """Load dataset ``spec`` with ``options`` (fields, subset/split, sample/limit)."""
    from deepalign.data.fields import EVAL_FIELDS
    from deepalign.data.loaders import load_eval_dataset

    options = options or DataOptions()
    text = spec.strip() if isinstance(spec, str) else spec
    head, sep, rest = str(text).partition(":")
    if head == "world" and sep:
        items = load_world(world, rest, options.limit, sample=options.sample, seed=options.sample_seed)
        _check_ids(items, text)
        return Dataset(spec=text, name=text, items=items, preset="world", total=len(items),
                       selection=_world_selection(options), role=world_role(rest), title=rest.rsplit("/", 1)[-1])
    parsed = parse_spec(text)
    opts = dict(parsed.options)
    split = opts.pop("split", None) or options.split
    subset = opts.pop("subset", None) or options.subset
    preset = parsed.preset
    if preset is None and parsed.source is not None and not Path(parsed.source).exists():
        hub = presets.hub_preset(parsed.source)
        preset = hub.name if hub is not None else None
    source = parsed.source
    if subset and source is not None and Path(source).is_file():
        # a local file has no hub configurations: --subset selects a preset's own subsets
        found = presets.get(preset) if preset else None
        if found is None:
            from deepalign.data.sources import read_source

            name, rows = read_source(source)
            found = presets.detect(rows, name) if rows else None
        if found is None or "functional" not in found.options:
            raise DeepAlignError(f"dataset {text}: --subset names a hub configuration; {source} is a local file")
        opts.setdefault("functional", subset)
        preset, subset = found.name, None
    notes: list[str] = []
    fields = options.columns_for(EVAL_FIELDS, extra=("id",))
    unknown = sorted(set(options.columns()) - set(fields))
    if unknown:
        raise OptionError("fields", f"{unknown[0]} is not a field of evaluation items (known: {', '.join([*EVAL_FIELDS, 'id'])})")
    items, preset, _ = load_eval_dataset(source, kind=parsed.kind, split=split, subset=subset, fields=fields or None,
                                         preset=preset, options=opts, notes=notes)
    _check_ids(items, text)
    ident = identity(items)
    chosen, how = select(items, sample=options.sample, limit=options.limit, seed=options.sample_seed)
    if not chosen:
        raise DeepAlignError(f"dataset {text} has no items")
    stem = _stem(source, preset)
    return Dataset(spec=text, name=f"{stem}@{ident[:8]}", items=chosen, preset=preset, identity=ident,
                   total=len(items), selection=how, notes=notes, title=stem)


def _world_selection(options: DataOptions) -> str:
    if options.sample:
        return f"random sample of {options.sample} per world file (seed {options.sample_seed})"
    if options.limit:
        return f"first {options.limit} per world file (--limit)"
    return "all"


def _check_ids(items: list[EvalPrompt], spec: str) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise DeepAlignError(f"dataset {spec}: item id {it.id!r} occurs twice")
        seen.add(it.id)
    if not items:
        raise DeepAlignError(f"dataset {spec} has no items")


def load_dataset(spec: str, *, world=None, limit: int | None = None, options: DataOptions | None = None) -> list[EvalPrompt]:
    """The items of dataset ``spec`` (``limit``: the first N of them); ids must be unique."""
    if limit is not None and limit < 1:
        raise DeepAlignError(f"--limit must be >= 1, got {limit}")
    if options is None:
        options = DataOptions(limit=limit)
    elif limit is not None:
        from dataclasses import replace

        options = replace(options, limit=limit, sample=None)
    return open_dataset(spec, options, world=world).items


# --------------------------------------------------------------------------------------
# training data: the same specs and options
# --------------------------------------------------------------------------------------


def world_train_file(spec: str, world) -> str:
    """The file of a world training spec: ``world:ft/harmful`` -> ``<world>/ft/harmful.jsonl``
    (``world:train/helpful``, ``world:ft/benign``, ...)."""
    split = spec.split(":", 1)[1]
    if world is None:
        raise DeepAlignError(f"training data {spec} needs the world directory (--world DIR)")
    if not _SPLIT_NAME.fullmatch(split) or "/" not in split or split.split("/")[0] not in TRAIN_DIRS:
        raise DeepAlignError(f"{spec}: a world training file is world:<{'|'.join(TRAIN_DIRS[:2])}>/<name> "
                             "(world:ft/harmful, world:ft/benign, world:train/helpful)")
    path = Path(world) / f"{split}.jsonl"
    if not path.is_file():
        if not Path(world).is_dir():
            raise DeepAlignError(f"no such world directory: {world} (for {spec}); build the world with 'deepalign world'")
        raise DeepAlignError(f"no world training file {path} (for {spec}){_world_choices(world, split, train=True)}")
    return str(path)


def _world_choices(world, split: str, *, train: bool) -> str:
    """``; did you mean world:X? this world has: ...``: the world's training files (``train``)
    or its evaluation splits and files, so a typo in a world spec is told what exists."""
    import difflib

    root = Path(world)
    names = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d.name in TRAIN_DIRS) != train or d.name == "tokenizer":
            continue
        files = sorted(f.stem for f in d.glob("*.jsonl"))
        if not train and files:
            names.append(d.name)
        names += [f"{d.name}/{f}" for f in files]
    if not train:
        names += sorted(f.stem for f in (root / "test").glob("*.jsonl"))
    if not names:
        return "; the world has none: build it with 'deepalign world'"
    close = difflib.get_close_matches(split, names, n=1)
    hint = f"; did you mean world:{close[0]}?" if close else ""
    return hint + " This world has " + ", ".join(f"world:{n}" for n in names)


def _train_source(spec: str, options: DataOptions, world=None) -> tuple[Spec, str | None, str | None]:
    if spec.startswith("world:"):
        spec = world_train_file(spec, world)
    parsed = parse_spec(spec)
    if parsed.kind is not None:
        raise DeepAlignError(f"{spec}: a kind prefix is for evaluation datasets")
    opts = dict(parsed.options)
    split = opts.pop("split", None) or options.split
    subset = opts.pop("subset", None) or options.subset
    parsed.options = opts
    return parsed, split, subset


def _train_fields(options: DataOptions) -> tuple[dict[str, str], dict[str, str]]:
    from deepalign.data.fields import INSTRUCTION_FIELDS, TRIPLE_FIELDS

    triples = options.columns_for(TRIPLE_FIELDS, extra=("id",))
    helpful = options.columns_for(INSTRUCTION_FIELDS, extra=("id",))
    unknown = sorted(set(options.columns()) - set(triples) - set(helpful))
    if unknown:
        known = ", ".join([*TRIPLE_FIELDS, *INSTRUCTION_FIELDS, "id"])
        raise OptionError("fields", f"{unknown[0]} is not a field of training data (known: {known})")
    return triples, helpful


def load_train_triples(spec: str, options: DataOptions | None = None, notes: list[str] | None = None, *, world=None):
    """Safety triples of ``spec`` (``[preset:]path or hub id[,split=...]``, or a world training
    file ``world:train/triples``; BeaverTails and hh-rlhf are paired by their presets), then
    ``--sample`` / ``--limit``."""
    from deepalign.data.loaders import load_triples

    options = options or DataOptions()
    parsed, split, subset = _train_source(spec, options, world)
    fields, _ = _train_fields(options)
    triples = load_triples(parsed.source, split=split, subset=subset, fields=fields or None, preset=parsed.preset,
                           options=parsed.options, notes=notes)
    return select(triples, sample=options.sample, limit=options.limit, seed=options.sample_seed)[0]


def load_train_instructions(spec: str, options: DataOptions | None = None, *, world=None):
    """``(instruction, response)`` pairs of ``spec`` (a file, hub id or preset, or a world
    training file such as ``world:ft/harmful``), then ``--sample`` / ``--limit``."""
    from deepalign.data.loaders import load_instructions

    options = options or DataOptions()
    parsed, split, subset = _train_source(spec, options, world)
    if parsed.options:
        raise DeepAlignError(f"{spec}: unknown option {sorted(parsed.options)[0]}")
    _, fields = _train_fields(options)
    pairs = load_instructions(parsed.source, split=split, subset=subset, fields=fields or None, preset=parsed.preset)
    return select(pairs, sample=options.sample, limit=options.limit, seed=options.sample_seed)[0]


def spec_source(spec: str) -> str | None:
    """The path or hub id a dataset spec reads (None: a preset's hub copy)."""
    if spec.startswith("world:"):
        return None
    return parse_spec(spec).source
