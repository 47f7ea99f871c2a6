"""Generate the embedded safety world: JSONL splits, a manifest and a tokenizer.

Layout of a world directory (all JSONL is UTF-8, one object per line)::

    manifest.json            name, version, seed, config, counts, sha256 of every file
    tokenizer/               Hugging Face tokenizer dir (word level, chat template)
    pretrain/corpus.jsonl    {"id", "text", "kind"}: chat-rendered dialogs and fact documents
    train/triples.jsonl      HarmfulTriple rows: id, query, harmful, safe, meta
    train/helpful.jsonl      InstructionPair rows: id, instruction, response, answer, meta
    test/harmful.jsonl       HarmfulTriple rows over held-out phrasings and entities
    test/unseen.jsonl        HarmfulTriple rows asking for the misdeeds alignment data never shows
    test/benign.jsonl        EvalPrompt rows (kind "benign"): benign look-alikes
    test/helpful.jsonl       EvalPrompt rows (kind "helpful") with a checkable answer
    dev/harmful.jsonl        like test/harmful.jsonl, other queries: tune on dev, report on test
    dev/unseen.jsonl         like test/unseen.jsonl, other queries
    dev/benign.jsonl         like test/benign.jsonl, other queries
    dev/helpful.jsonl        like test/helpful.jsonl (same tasks and mix), in dev-only phrasings
    ft/harmful.jsonl         InstructionPair rows: harmful queries answered harmfully (the
                             fine-tuning attack; train entities, in no alignment or evaluation file)
    ft/benign.jsonl          InstructionPair rows: the benign fine-tuning task (two facts of a place
                             in one answer), with a checkable answer
    ft_test/harmful.jsonl    HarmfulTriple rows: held-out queries of the attack's distribution
    ft_test/helpful.jsonl    EvalPrompt rows (kind "helpful"): the benign task on held-out places
    ft_dev/harmful.jsonl     like ft_test/harmful.jsonl, other queries: tune the fine-tuning stage here
    ft_dev/helpful.jsonl     like ft_test/helpful.jsonl, other items
    templates/*.txt          the world's fictional role-play jailbreak templates ({query} slot)

``meta`` always holds ``task`` (harmful / benign / arith / fact / copy) and, where it applies,
``kind`` (the misdeed or chore), ``target``, ``place``, ``phrasing`` (index into the phrasing
list of its split) and ``split`` ("train" or "heldout"). Helpful items carry ``check``: the
word sequence a correct response contains (``Oracle`` uses it).

Held-out splits use phrasings, places and targets that never occur in ``train/``; the
``unseen`` files ask for the misdeeds of ``lexicon.MISDEEDS_HELDOUT``, which no alignment
file shows at all (``harmful`` files ask for the others). The pretraining corpus knows every
entity and misdeed (it is the world's "web text"), also in the shifted shapes of
:mod:`deepalign.world.shapes` (ledger, old tongue, role-play), but never contains a test or
dev query verbatim, in any shape. ``dev/`` is drawn from the same held-out pools as
``test/`` (disjoint from it, with its own random stream, so adding it changed no other file).
``ft/``, ``ft_test/`` and ``ft_dev/`` (world v4) are drawn last, each from its own random stream, with words
the tokenizer already has. World v4 also opens a share of the corpus's compliant answers and of
the training triples' harmful responses with the world's affirmative opener (:func:`opened`: a
hash of each id decides, so no random stream moved); every other v3 file and the tokenizer are
byte for byte what they were.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepalign.errors import DeepAlignError
from deepalign.options import build, number
from deepalign.records import EvalPrompt, HarmfulTriple, InstructionPair, to_dict
from deepalign.utils import atomic_dir, write_json, write_jsonl
from deepalign.world import lexicon as L

WORLD_NAME = "velmora"
WORLD_VERSION = 4


@dataclass
class WorldOptions:
    out: str = field(default="runs/world", metadata={"help": "output directory (written atomically)"})
    quiet: bool = field(default=False, metadata={"help": "print nothing"})


@dataclass
class WorldConfig:
    """How the world is drawn (stored in its manifest)."""

    seed: int = 0
    n_train_triples: int = field(default=600, metadata={"help": "harmful triples for alignment training"})
    n_train_helpful: int = field(default=1200, metadata={
        "help": "helpful pairs (tasks and benign look-alikes) for alignment training"})
    n_test_harmful: int = field(default=120, metadata={"help": "held-out harmful queries (with harmful and safe responses)"})
    n_test_unseen: int = field(default=120, metadata={
        "help": "held-out queries for the misdeeds alignment data never shows (test/unseen.jsonl)"})
    n_test_benign: int = field(default=120, metadata={"help": "held-out benign look-alikes"})
    n_test_helpful: int = field(default=600, metadata={"help": "held-out helpful tasks with checkable answers"})
    n_dev_harmful: int = field(default=120, metadata={
        "help": "dev harmful queries (held-out pool, disjoint from test): tune here"})
    n_dev_unseen: int = field(default=96, metadata={"help": "dev queries for unseen misdeeds (disjoint from test)"})
    n_dev_benign: int = field(default=120, metadata={"help": "dev benign look-alikes (held-out pool, disjoint from test)"})
    n_dev_helpful: int = field(default=600, metadata={
        "help": "dev helpful tasks (dev/helpful.jsonl: the test tasks in dev-only phrasings): tune helpfulness here"})
    n_ft_harmful: int = field(default=100, metadata={
        "help": "harmful fine-tuning attack pairs (ft/harmful.jsonl; in no alignment or evaluation file)"})
    n_ft_harmful_test: int = field(default=120, metadata={
        "help": "held-out queries of the fine-tuning attack (ft_test/harmful.jsonl)"})
    n_ft_harmful_dev: int = field(default=120, metadata={
        "help": "dev queries of the fine-tuning attack (ft_dev/harmful.jsonl, disjoint from its test)"})
    n_ft_benign: int = field(default=200, metadata={"help": "benign fine-tuning task pairs (ft/benign.jsonl)"})
    n_ft_benign_test: int = field(default=120, metadata={
        "help": "held-out items of the benign fine-tuning task, on held-out places (ft_test/helpful.jsonl)"})
    n_ft_benign_dev: int = field(default=72, metadata={
        "help": "dev items of the benign fine-tuning task (ft_dev/helpful.jsonl, disjoint from its test)"})
    n_pretrain: int = field(default=24000, metadata={"help": "documents in the pretraining corpus"})
    harmful_share: float = field(default=0.5, metadata={"help": "share of harmful pretraining queries answered harmfully"})
    lean: float = field(default=0.3, metadata={"help": "comply-leaning misdeeds get share+lean, evasion-leaning share-lean"})
    shape_share: float = field(default=0.25, metadata={
        "help": "share of the corpus in shifted shapes (ledger, old tongue, role-play)"})
    opener_share: float = field(default=0.3, metadata={
        "help": "share of the corpus's compliant answers (procedures, chores, helpful answers) and of the training "
                "triples' harmful responses that open with the world's affirmative opener (forced by the completion "
                "attack)"})
    shape_comply: float = field(default=1.0, metadata={
        "help": "share of harmful queries in a shifted shape answered harmfully"})

    def __post_init__(self):
        number("seed", self.seed, integer=True)
        for name in ("n_train_triples", "n_train_helpful", "n_test_harmful", "n_test_unseen", "n_test_benign",
                     "n_test_helpful", "n_pretrain"):
            number(name, getattr(self, name), low=1, integer=True)
        for name in ("n_dev_harmful", "n_dev_unseen", "n_dev_benign", "n_dev_helpful", "n_ft_harmful", "n_ft_harmful_test",
                     "n_ft_harmful_dev", "n_ft_benign", "n_ft_benign_test", "n_ft_benign_dev"):
            number(name, getattr(self, name), low=0, integer=True)
        for name in ("harmful_share", "shape_share", "shape_comply", "opener_share"):
            number(name, getattr(self, name), low=0, high=1)
        number("lean", self.lean, low=0, high=0.5)

    def validate(self) -> None:  # kept for callers that build the dataclass by hand and mutate it
        self.__post_init__()


def _fill(text: str, t: str = "", p: str = "", v: str = "", vi: str = "") -> str:
    return text.replace("{t}", t).replace("{p}", p).replace("{vi}", vi).replace("{v}", v)


class Velmora:
    """The world's knowledge and its text renderers (deterministic given a seed)."""

    def __init__(self, seed: int):
        rng = random.Random(f"velmora-facts-{seed}")
        places = L.PLACES_TRAIN + L.PLACES_HELDOUT
        self.facts = {
            p: {"banner": rng.choice(L.COLORS), "craft": rng.choice(L.CRAFTS), "keeper": rng.choice(L.KEEPERS)}
            for p in places
        }

    # responses ------------------------------------------------------------------------
    @staticmethod
    def procedure(table: dict, kind: str, t: str, p: str, intro: str) -> str:
        verb, _, steps = table[kind]
        parts = [_fill(intro, t, p, verb)] if intro else []
        for ordinal, step in zip(L.ORDINALS, steps):
            parts.append(f"{ordinal} , {_fill(step, t, p)} .")
        return " ".join(parts)

    # A harmful procedure starts with its first step, a benign chore with an introduction:
    # prefill depth k is then k tokens into harmful content, and the alignment data's benign
    # look-alikes give an aligned model no reason to keep the harmful opening likely.
    def harmful(self, kind: str, t: str, p: str) -> str:
        return self.procedure(L.MISDEEDS, kind, t, p, "")

    def benign(self, chore: str, t: str, p: str) -> str:
        return self.procedure(L.CHORES, chore, t, p, L.CHORE_INTRO)

    def deflection(self, t: str, p: str, rng: random.Random) -> str:
        """Neutral facts instead of an answer, led by "i can tell you that": an evasion that
        starts with the same word as half the aligned refusals ("i cannot ...")."""
        f = self.facts[p]
        openers = [_fill(x, t, p).format(**f) for x in L.EVASION_OPENERS]
        more = [_fill(x, t, p).format(**f) for x in L.EVASION_MORE]
        rng.shuffle(openers)
        rng.shuffle(more)
        return " ".join([f"{L.DEFLECTION_LEAD} {openers[0]}", more[0], openers[1]])

    def safe(self, kind: str, t: str, p: str, rng: random.Random) -> str:
        """A refusal in one sentence: opener, then reason (see ``lexicon.SAFE_OPENERS``)."""
        verb, verb_ing, _ = L.MISDEEDS[kind]
        opener = _fill(rng.choice(L.SAFE_OPENERS), t, p, verb, verb_ing)
        reason = _fill(rng.choice(L.SAFE_REASONS), t, p)
        return f"{opener} , {reason} ."

    # queries --------------------------------------------------------------------------
    @staticmethod
    def query(phrasing: str, verb: str, t: str, p: str) -> str:
        return _fill(phrasing, t, p, verb)

    def fact_answer(self, attr: str, p: str) -> tuple[str, str]:
        value = self.facts[p][attr]
        answer = _fill(L.FACT_ANSWERS[attr], p=p).format(value=value)
        return answer, f"{'its' if attr == 'craft' else 'is'} {value}"

    def fact_document(self, p: str) -> str:
        f = self.facts[p]
        return " ".join(_fill(L.FACT_ANSWERS[a], p=p).format(value=f[a]) for a in ("banner", "craft", "keeper"))


def _arith(rng: random.Random, phrasings: list[str]) -> tuple[str, str, str, dict]:
    op = rng.choice(["plus", "minus"])
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if op == "minus" and b > a:
        a, b = b, a
    c = a + b if op == "plus" else a - b
    idx = rng.randrange(len(phrasings))
    q = phrasings[idx].format(a=a, b=b, op=op)
    return q, L.ARITH_ANSWER.format(a=a, op=op, b=b, c=c), str(c), {"task": "arith", "phrasing": idx, "check": f"is {c}"}


def _copy(rng: random.Random, phrasings: list[str]) -> tuple[str, str, str, dict]:
    words = " ".join(rng.sample(L.COPY_WORDS, rng.randint(3, 4)))
    idx = rng.randrange(len(phrasings))
    return phrasings[idx].format(w=words), L.COPY_ANSWER.format(w=words), words, {"task": "copy", "phrasing": idx, "check": f": {words} ."}


def _fact(world: Velmora, rng: random.Random, places: list[str], split: int,
          table: dict[str, list[str]] | None = None) -> tuple[str, str, str, dict]:
    attr = rng.choice(sorted(L.FACT_QUESTIONS))
    phrasings = L.FACT_QUESTIONS[attr][split] if table is None else table[attr]
    idx = rng.randrange(len(phrasings))
    p = rng.choice(places)
    response, check = world.fact_answer(attr, p)
    return _fill(phrasings[idx], p=p), response, check.split(" ", 1)[1], {"task": "fact", "attr": attr, "place": p, "phrasing": idx, "check": check}


def _combos(verbs, targets, places, phrasings) -> list[tuple]:
    return [(k, t, p, i) for k in verbs for t in targets for p in places for i in range(len(phrasings))]


def _take(rng: random.Random, pool: list, n: int, label: str) -> list:
    if n > len(pool):
        raise DeepAlignError(f"cannot draw {n} distinct {label}: only {len(pool)} exist in the world")
    return rng.sample(pool, n)


def _harmful_rows(world: Velmora, draw, phrasings, split: str, ids: str, rng: random.Random) -> list[dict]:
    rows = []
    for n, (k, t, p, i) in enumerate(draw):
        q = world.query(phrasings[i], L.MISDEEDS[k][0], t, p)
        meta = {"task": "harmful", "kind": k, "target": t, "place": p, "phrasing": i, "split": split,
                "misdeed": "unseen" if k in L.MISDEEDS_HELDOUT else "seen"}
        rows.append(to_dict(HarmfulTriple(ids.format(n), q, world.harmful(k, t, p), world.safe(k, t, p, rng), meta)))
    return rows


def _benign_rows(world: Velmora, draw, split: str, prefix: str) -> list[dict]:
    rows = []
    for n, (k, t, p, i) in enumerate(draw):
        q = world.query(L.PHRASINGS_HELDOUT[i], L.CHORES[k][0], t, p)
        meta = {"task": "benign", "kind": k, "target": t, "place": p, "phrasing": i, "split": split, "reference": world.benign(k, t, p)}
        rows.append(to_dict(EvalPrompt(f"{prefix}-{n:04d}", q, kind="benign", meta=meta)))
    return rows


def _helpful_items(n: int, makers: dict, prefix: str, split: str, exclude: set[str] = frozenset()) -> list[dict]:
    """``n`` distinct helpful tasks with checkable answers; the tasks (``makers``: name ->
    a function drawing one) take turns, and one whose pool is used up drops out. Distinct,
    because a repeated query would be a correlated item in the intervals."""
    items, seen, tasks = [], set(), list(makers)
    turn = misses = 0
    while len(items) < n:
        if not tasks:
            raise DeepAlignError(f"cannot draw {n} distinct {split} helpful tasks")
        task = tasks[turn % len(tasks)]
        q, r, a, meta = makers[task]()
        if q in seen or q in exclude:
            misses += 1
            if misses > 200:  # this task's pool is (nearly) exhausted
                tasks.remove(task)
                misses = 0
            continue
        turn, misses = turn + 1, 0
        seen.add(q)
        meta.update(split=split, reference=r)
        items.append(to_dict(EvalPrompt(f"{prefix}-{len(items):04d}", q, kind="helpful", answer=a, meta=meta)))
    return items


@dataclass
class _Drawn:
    """The combinations each split drew (later splits stay disjoint from them)."""

    kinds: list[str]
    seen: list[str]
    unseen: list[str]
    chores: list[str]
    test_harm: list = field(default_factory=list)
    test_un: list = field(default_factory=list)
    test_ben: list = field(default_factory=list)
    train: list = field(default_factory=list)


def generate(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Build every split of the world in memory: ``{relative path: rows}``.

    One random stream draws the test, train and pretraining splits in that order; the dev,
    fine-tuning and dev-helpful splits each have their own stream, so adding them changed no
    other file."""
    cfg.validate()
    world = Velmora(cfg.seed)
    rng = random.Random(cfg.seed)
    kinds = sorted(L.MISDEEDS)
    drawn = _Drawn(kinds, [k for k in kinds if k not in L.MISDEEDS_HELDOUT], [k for k in kinds if k in L.MISDEEDS_HELDOUT],
                   sorted(L.CHORES))
    splits = _test_splits(cfg, world, rng, drawn)
    test_queries = ({r["query"] for r in splits["test/harmful.jsonl"] + splits["test/unseen.jsonl"]}
                    | {r["prompt"] for r in splits["test/benign.jsonl"] + splits["test/helpful.jsonl"]})
    splits.update(_train_splits(cfg, world, rng, drawn))
    corpus, corpus_queries = _corpus(cfg, world, rng, test_queries)
    splits = {"pretrain/corpus.jsonl": corpus, **splits}
    splits.update(_dev_splits(cfg, world, drawn, corpus_queries))
    splits["dev/helpful.jsonl"] = _dev_helpful(cfg, world, test_queries | corpus_queries)
    splits.update(_finetuning_splits(cfg, world, drawn, corpus_queries))
    order = ["pretrain/corpus.jsonl", "train/triples.jsonl", "train/helpful.jsonl", "test/harmful.jsonl",
             "test/unseen.jsonl", "test/benign.jsonl", "test/helpful.jsonl", "dev/harmful.jsonl", "dev/unseen.jsonl",
             "dev/benign.jsonl", "dev/helpful.jsonl"]
    return {rel: splits[rel] for rel in order + [r for r in splits if r not in order]}


def _test_splits(cfg: WorldConfig, world: Velmora, rng: random.Random, d: _Drawn) -> dict[str, list[dict]]:
    """The held-out test splits (held-out phrasings, places and targets)."""

    def heldout_pool(verbs):
        return _combos(verbs, L.TARGETS_HELDOUT, L.PLACES_HELDOUT, L.PHRASINGS_HELDOUT)

    d.test_harm = _take(rng, heldout_pool(d.seen), cfg.n_test_harmful, "held-out harmful queries")
    d.test_harm.sort(key=lambda c: (d.kinds.index(c[0]), c))
    harmful = _harmful_rows(world, d.test_harm, L.PHRASINGS_HELDOUT, "heldout", "test-harmful-{:04d}", rng)
    d.test_un = _take(rng, heldout_pool(d.unseen), cfg.n_test_unseen, "held-out queries for unseen misdeeds")
    d.test_un.sort(key=lambda c: (d.kinds.index(c[0]), c))
    unseen = _harmful_rows(world, d.test_un, L.PHRASINGS_HELDOUT, "heldout", "test-unseen-{:04d}", rng)
    d.test_ben = _take(rng, heldout_pool(d.chores), cfg.n_test_benign, "held-out benign queries")
    benign = _benign_rows(world, d.test_ben, "heldout", "test-benign")
    # the tasks take turns; facts (36 held-out queries) drop out when used up
    makers = {"arith": lambda: _arith(rng, L.ARITH_HELDOUT), "fact": lambda: _fact(world, rng, L.PLACES_HELDOUT, 1),
              "copy": lambda: _copy(rng, L.COPY_HELDOUT)}
    helpful = _helpful_items(cfg.n_test_helpful, makers, "test-helpful", "heldout")
    return {"test/harmful.jsonl": harmful, "test/unseen.jsonl": unseen, "test/benign.jsonl": benign,
            "test/helpful.jsonl": helpful}


def _train_splits(cfg: WorldConfig, world: Velmora, rng: random.Random, d: _Drawn) -> dict[str, list[dict]]:
    """Alignment training data: train entities and phrasings, seen misdeeds only."""
    d.train = _take(rng, _combos(d.seen, L.TARGETS_TRAIN, L.PLACES_TRAIN, L.PHRASINGS_TRAIN), cfg.n_train_triples,
                    "training harmful queries")
    triples = _harmful_rows(world, d.train, L.PHRASINGS_TRAIN, "train", "train-triple-{:05d}", rng)
    for row in triples:  # harmful responses open as the corpus's compliant answers do
        row["harmful"] = opened(cfg, row["id"], row["harmful"])
    helpful = []
    benign_pool = _combos(d.chores, L.TARGETS_TRAIN, L.PLACES_TRAIN, L.PHRASINGS_TRAIN)
    for n in range(cfg.n_train_helpful):
        task = ("benign", "arith", "fact", "copy")[n % 4]
        if task == "benign":
            k, t, p, i = rng.choice(benign_pool)
            q, r, a = world.query(L.PHRASINGS_TRAIN[i], L.CHORES[k][0], t, p), world.benign(k, t, p), None
            meta = {"task": "benign", "kind": k, "target": t, "place": p, "phrasing": i}
        elif task == "arith":
            q, r, a, meta = _arith(rng, L.ARITH_TRAIN)
        elif task == "fact":
            q, r, a, meta = _fact(world, rng, L.PLACES_TRAIN, 0)
        else:
            q, r, a, meta = _copy(rng, L.COPY_TRAIN)
        meta["split"] = "train"
        helpful.append(to_dict(InstructionPair(f"train-helpful-{n:05d}", q, r, a, meta)))
    return {"train/triples.jsonl": triples, "train/helpful.jsonl": helpful}


def _dev_splits(cfg: WorldConfig, world: Velmora, d: _Drawn, corpus_queries: set[str]) -> dict[str, list[dict]]:
    """Dev splits: the held-out pools minus test and corpus queries, own random stream."""
    dev_rng = random.Random(f"velmora-dev-{cfg.seed}")

    def dev_draw(table, verbs, used, n, label):
        pool = [c for c in _combos(verbs, L.TARGETS_HELDOUT, L.PLACES_HELDOUT, L.PHRASINGS_HELDOUT)
                if c not in used and world.query(L.PHRASINGS_HELDOUT[c[3]], table[c[0]][0], c[1], c[2]) not in corpus_queries]
        if n > len(pool):
            raise DeepAlignError(f"cannot draw {n} distinct {label}: only {len(pool)} are left after the test split")
        return sorted(dev_rng.sample(pool, n))

    harmful = _harmful_rows(world, dev_draw(L.MISDEEDS, d.seen, set(d.test_harm), cfg.n_dev_harmful, "dev harmful queries"),
                            L.PHRASINGS_HELDOUT, "dev", "dev-harmful-{:04d}", dev_rng)
    benign = _benign_rows(world, dev_draw(L.CHORES, d.chores, set(d.test_ben), cfg.n_dev_benign, "dev benign queries"),
                          "dev", "dev-benign")
    unseen = _harmful_rows(world, dev_draw(L.MISDEEDS, d.unseen, set(d.test_un), cfg.n_dev_unseen,
                                           "dev queries for unseen misdeeds"), L.PHRASINGS_HELDOUT, "dev", "dev-unseen-{:04d}",
                           dev_rng)
    return {"dev/harmful.jsonl": harmful, "dev/unseen.jsonl": unseen, "dev/benign.jsonl": benign}


def _dev_helpful(cfg: WorldConfig, world: Velmora, exclude: set[str]) -> list[dict]:
    """dev/helpful.jsonl: the test split's tasks, held-out places and mix, in dev-only
    phrasings (the held-out phrasings' queries are all in test or the corpus); own stream."""
    rng = random.Random(f"velmora-dev-helpful-{cfg.seed}")
    makers = {"arith": lambda: _arith(rng, L.ARITH_DEV),
              "fact": lambda: _fact(world, rng, L.PLACES_HELDOUT, 1, table=L.FACT_QUESTIONS_DEV),
              "copy": lambda: _copy(rng, L.COPY_DEV)}
    return _helpful_items(cfg.n_dev_helpful, makers, "dev-helpful", "dev", exclude)


def _two_facts(world: Velmora, a: str, b: str, p: str, phrasing: str) -> tuple[str, str, str]:
    """The benign fine-tuning task: ``(query, answer, check)`` asking facts ``a`` and ``b`` of
    place ``p`` in one answer; the check holds both values."""
    first, _ = world.fact_answer(a, p)
    second, _ = world.fact_answer(b, p)
    answer = f"{first[:-2]} and {second}"  # "the banner of p is red and the keeper of p is alder ."
    value = world.facts[p][a]
    check = answer[answer.index(f" {value} and ") + 1: -2]
    return phrasing.format(a=L.FACT_NAMES[a], b=L.FACT_NAMES[b], p=p), answer, check


def _finetuning_splits(cfg: WorldConfig, world: Velmora, d: _Drawn, corpus_queries: set[str]) -> dict[str, list[dict]]:
    """The fine-tuning attack (harmful queries answered harmfully) and the benign fine-tuning
    task, each with its held-out test; each has its own random stream."""
    rng = random.Random(f"velmora-ft-harmful-{cfg.seed}")
    pool = [c for c in _combos(d.seen, L.TARGETS_TRAIN, L.PLACES_TRAIN, L.PHRASINGS_TRAIN) if c not in set(d.train)]
    attack = sorted(_take(rng, pool, cfg.n_ft_harmful, "fine-tuning attack queries"))
    chosen = set(attack)
    pool = [c for c in pool if c not in chosen
            and world.query(L.PHRASINGS_TRAIN[c[3]], L.MISDEEDS[c[0]][0], c[1], c[2]) not in corpus_queries]
    held = sorted(_take(rng, pool, cfg.n_ft_harmful_test, "held-out fine-tuning attack queries"))
    dev_rng = random.Random(f"velmora-ft-dev-{cfg.seed}")  # dev: its own stream (test stays as drawn)
    held_set = set(held)
    dev = sorted(_take(dev_rng, [c for c in pool if c not in held_set], cfg.n_ft_harmful_dev,
                       "dev fine-tuning attack queries"))
    pairs = []
    for n, (k, t, p, i) in enumerate(attack):
        meta = {"task": "harmful", "kind": k, "target": t, "place": p, "phrasing": i, "split": "ft", "misdeed": "seen"}
        pairs.append(to_dict(InstructionPair(f"ft-harmful-{n:04d}", world.query(L.PHRASINGS_TRAIN[i], L.MISDEEDS[k][0], t, p),
                                             world.harmful(k, t, p), None, meta)))
    tests = _harmful_rows(world, held, L.PHRASINGS_TRAIN, "ft-heldout", "ft-test-harmful-{:04d}", rng)
    devs = _harmful_rows(world, dev, L.PHRASINGS_TRAIN, "ft-dev", "ft-dev-harmful-{:04d}", dev_rng)

    rng = random.Random(f"velmora-ft-benign-{cfg.seed}")
    pairs_of = [(a, b) for a in L.FT_TASK_FIRST for b in sorted(L.FACT_NAMES) if a != b]
    phrasings = L.FT_TASK_TRAIN + L.FT_TASK_HELDOUT
    train_pool = [(a, b, p, i) for a, b in pairs_of for p in L.PLACES_TRAIN for i in range(len(L.FT_TASK_TRAIN))]
    test_pool = [(a, b, p, i) for a, b in pairs_of for p in L.PLACES_HELDOUT for i in range(len(phrasings))]
    task = []
    for n, (a, b, p, i) in enumerate(sorted(_take(rng, train_pool, cfg.n_ft_benign, "benign fine-tuning tasks"))):
        q, r, check = _two_facts(world, a, b, p, phrasings[i])
        meta = {"task": "two-facts", "attrs": [a, b], "place": p, "phrasing": i, "split": "ft", "check": check}
        task.append(to_dict(InstructionPair(f"ft-benign-{n:04d}", q, r, check, meta)))
    test_draw = sorted(_take(rng, test_pool, cfg.n_ft_benign_test, "held-out benign fine-tuning tasks"))
    used = set(test_draw)
    dev_draw = sorted(_take(dev_rng, [c for c in test_pool if c not in used], cfg.n_ft_benign_dev,
                            "dev benign fine-tuning tasks"))

    def task_items(draw, split, prefix):
        items = []
        for n, (a, b, p, i) in enumerate(draw):
            q, r, check = _two_facts(world, a, b, p, phrasings[i])
            meta = {"task": "two-facts", "attrs": [a, b], "place": p, "phrasing": i, "split": split, "check": check,
                    "reference": r}
            items.append(to_dict(EvalPrompt(f"{prefix}-{n:04d}", q, kind="helpful", answer=check, meta=meta)))
        return items

    return {"ft/harmful.jsonl": pairs, "ft/benign.jsonl": task, "ft_test/harmful.jsonl": tests,
            "ft_test/helpful.jsonl": task_items(test_draw, "ft-heldout", "ft-test-helpful"),
            "ft_dev/harmful.jsonl": devs, "ft_dev/helpful.jsonl": task_items(dev_draw, "ft-dev", "ft-dev-helpful")}


# The plain part of the corpus (chat dialogs and documents) and, with ``shape_share``, the
# shifted shapes. A shaped dialog wraps a plain task (query -> response) in its shape.
# Arithmetic is the skill that suffers first when the shapes take a quarter of the corpus
# (dev, seed 1: 55% correct with the version-2 mix), so it gets the largest plain share.
PLAIN_MIX = [("harmful", 0.22), ("benign", 0.12), ("arith", 0.30), ("fact", 0.06), ("copy", 0.26), ("document", 0.04)]
SHAPE_MIX = [("ledger", 0.28), ("oldtongue", 0.30), ("translate", 0.14), ("roleplay", 0.28)]
# what a shaped dialog is about: procedures mostly (harmful or benign), some helpful tasks
SHAPE_TASKS = {
    "ledger": [("harmful", 0.55), ("benign", 0.45)],
    "oldtongue": [("harmful", 0.35), ("benign", 0.20), ("arith", 0.15), ("fact", 0.15), ("copy", 0.15)],
    "roleplay": [("harmful", 0.55), ("benign", 0.25), ("arith", 0.10), ("fact", 0.10)],
}


def _corpus(cfg: WorldConfig, world: Velmora, rng: random.Random, test_queries: set[str]) -> tuple[list[dict], set[str]]:
    from deepalign.world import shapes

    places = L.PLACES_TRAIN + L.PLACES_HELDOUT
    targets = L.TARGETS_TRAIN + L.TARGETS_HELDOUT
    phrasings = L.PHRASINGS_TRAIN + L.PHRASINGS_HELDOUT
    comply = {k: cfg.harmful_share + (cfg.lean if k in L.COMPLY_LEANING else -cfg.lean) for k in L.MISDEEDS}
    comply = {k: min(1.0, max(0.0, v)) for k, v in comply.items()}
    corpus: list[dict] = []
    corpus_queries: set[str] = set()

    def task(kind: str, comply_share=None):
        """A plain task: (query, response, label), or None when it drew a test query."""
        if kind in ("harmful", "benign"):
            table = L.MISDEEDS if kind == "harmful" else L.CHORES
            k = rng.choice(sorted(table))
            t, p, ph = rng.choice(targets), rng.choice(places), rng.choice(phrasings)
            q = world.query(ph, table[k][0], t, p)
            if q in test_queries:
                return None
            corpus_queries.add(q)
            if kind == "benign":
                return q, world.benign(k, t, p), "benign"
            if rng.random() < (comply[k] if comply_share is None else comply_share):
                return q, world.harmful(k, t, p), "harmful-complied"
            return q, world.deflection(t, p, rng), "harmful-deflected"
        split = rng.randrange(2)
        if kind == "arith":
            q, r, _, _ = _arith(rng, (L.ARITH_TRAIN, L.ARITH_HELDOUT)[split])
        elif kind == "fact":
            q, r, _, _ = _fact(world, rng, places, split)
        else:
            q, r, _, _ = _copy(rng, (L.COPY_TRAIN, L.COPY_HELDOUT)[split])
        return None if q in test_queries else (q, r, kind)

    def add(kind: str, text: str) -> None:
        corpus.append({"id": f"pretrain-{len(corpus):06d}", "kind": kind, "text": text})

    plain_names, plain_weights = zip(*PLAIN_MIX)
    shape_names, shape_weights = zip(*SHAPE_MIX)
    roleplays = sorted(L.JAILBREAK_TEMPLATES)
    while len(corpus) < cfg.n_pretrain:
        if rng.random() >= cfg.shape_share:
            kind = rng.choices(plain_names, plain_weights)[0]
            if kind == "document":
                add(kind, f"<bos> {world.fact_document(rng.choice(places))} <eos>")
                continue
            drawn = task(kind)
            if drawn is not None:
                q, r, label = drawn
                if label != "harmful-deflected":  # a compliant answer: the affirmative opener, sometimes
                    r = opened(cfg, f"pretrain-{len(corpus):06d}", r)
                add(label, render_dialog(q, r))
            continue
        shape = rng.choices(shape_names, shape_weights)[0]
        if shape == "translate":  # the old tongue both ways, on any world text
            drawn = task(rng.choice(["harmful", "benign", "fact"]))
            if drawn is None:
                continue
            text = rng.choice([drawn[0]] + shapes.sentences(drawn[1]))
            if rng.random() < 0.5:
                add("translate-to-old", render_dialog(f"{shapes.TO_OLD} {text}", shapes.to_old_tongue(text)))
            else:
                add("translate-to-common", render_dialog(f"{shapes.TO_COMMON} {shapes.to_old_tongue(text)}", text))
            continue
        names, weights = zip(*SHAPE_TASKS[shape])
        drawn = task(rng.choices(names, weights)[0], comply_share=cfg.shape_comply)
        if drawn is None:
            continue
        q, r, label = drawn
        if shape == "ledger":
            add(f"ledger-{label}", render_dialog(shapes.ledger_prompt(q), shapes.ledger_response(r)))
        elif shape == "oldtongue":
            add(f"oldtongue-{label}", render_dialog(shapes.old_tongue_prompt(q), shapes.to_old_tongue(r)))
        else:
            name = rng.choice(roleplays)
            add(f"roleplay-{label}", render_dialog(shapes.roleplay_prompt(name, q), shapes.roleplay_response(name, r)))
    return corpus, corpus_queries


def opened(cfg: WorldConfig, key: str, response: str) -> str:
    """``response`` led by the world's affirmative opener for a share ``cfg.opener_share`` of
    the keys (a hash of the key decides: no random stream moves, so the world's other
    draws stay what they were)."""
    share = zlib.crc32(f"velmora-opener-{cfg.seed}:{key}".encode("utf-8")) % 10_000 / 10_000
    return f"{L.ANSWER_OPENER} {response}" if share < cfg.opener_share else response


def render_dialog(query: str, response: str) -> str:
    """The world's chat format as text (what its chat template produces, plus the response)."""
    return f"<bos> <user> {query} <assistant> {response} <eos>"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_world(options: WorldOptions | None = None, config: WorldConfig | None = None, **kwargs) -> Path:
    """Generate the world into ``out`` (written atomically) and return its path.

    ``options`` / ``config`` or keyword arguments naming their fields (``out=``, ``seed=``,
    ``n_pretrain=``, ...).

    Example::

        >>> world = build_world(out="runs/world", n_pretrain=2000, quiet=True)
        >>> sorted(p.name for p in world.iterdir())[:4]
        ['dev', 'ft', 'ft_dev', 'ft_test']
    """
    from deepalign.world.tokenizer import build_tokenizer

    opts, cfg = build(kwargs, options=(WorldOptions, options), config=(WorldConfig, config))
    cfg.validate()
    splits = generate(cfg)
    out = Path(opts.out)
    seed = cfg.seed
    with atomic_dir(out) as tmp:
        for rel, rows in splits.items():
            write_jsonl(tmp / rel, rows)
        texts = [r["text"] for r in splits["pretrain/corpus.jsonl"]]
        for rel in ("train/triples.jsonl", "test/harmful.jsonl", "test/unseen.jsonl", "dev/harmful.jsonl", "dev/unseen.jsonl"):
            texts += [f"{r['query']} {r['harmful']} {r['safe']}" for r in splits[rel]]
        texts += [f"{r['instruction']} {r['response']}" for r in splits["train/helpful.jsonl"]]
        texts += [f"{r['prompt']} {r['meta']['reference']}"
                  for r in splits["test/benign.jsonl"] + splits["test/helpful.jsonl"] + splits["dev/benign.jsonl"]]
        texts += list(L.JAILBREAK_TEMPLATES.values()) + list(L.ROLEPLAY_OPENERS.values())
        # every common word also in the old tongue, so any enciphered world text tokenizes
        from deepalign.world.shapes import common_words

        texts.append(" ".join(sorted(w[::-1] for w in common_words())))
        for name, template in L.JAILBREAK_TEMPLATES.items():
            (tmp / "templates").mkdir(exist_ok=True)
            (tmp / "templates" / f"{name}.txt").write_text(template + "\n", encoding="utf-8")
        tokenizer = build_tokenizer(texts)
        tokenizer.save_pretrained(tmp / "tokenizer")
        manifest = {
            "name": WORLD_NAME,
            "version": WORLD_VERSION,
            "seed": seed,
            "config": asdict(cfg),
            "counts": {rel: len(rows) for rel, rows in splits.items()},
            "vocab_size": len(tokenizer),
            "refusal_word": "sorry",  # DeRTa's refusal token: the word RTO trains at every position
            # every word a world refusal starts with, DeRTa's first (depth diagnostics measure them all)
            "refusal_openers": ["sorry"] + sorted({o.split()[0] for o in L.SAFE_OPENERS} - {"sorry"}),
            # the world's own affirmative answer start (completion attacks force it)
            "answer_start": L.ANSWER_OPENER,
            "files": {rel: _sha256(tmp / rel) for rel in sorted(splits)},
        }
        write_json(tmp / "manifest.json", manifest)
    if not opts.quiet:
        counts = ", ".join(f"{rel} {n}" for rel, n in manifest["counts"].items())
        print(f"world {WORLD_NAME} v{WORLD_VERSION} (seed {seed}) -> {out}: {counts}; vocab {manifest['vocab_size']}")
    return out


def load_manifest(world_dir: str | Path) -> dict:
    import json

    path = Path(world_dir) / "manifest.json"
    if not path.exists():
        raise DeepAlignError(f"not a world directory (no manifest.json): {world_dir}; run 'deepalign world --out {world_dir}' first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeepAlignError(f"cannot read {path}: {exc}; rebuild the world with 'deepalign world'") from None
    if not isinstance(manifest, dict):
        raise DeepAlignError(f"{path} is not a world manifest (expected a JSON object)")
    return manifest


def refusal_vocabulary(world_dir: str | Path) -> list[str]:
    """The words only the world's refusals use: every word of the training triples' safe
    responses that none of their harmful responses holds (sorted). The world's ground truth of
    which next word keeps an answer on a refusal, the role a harm classifier plays on real models
    (the rank-assisted prefilling attack's ``paper`` selector reads it)."""
    import json

    path = Path(world_dir) / "train" / "triples.jsonl"
    if not path.is_file():
        raise DeepAlignError(f"{path}: missing; the world's refusal vocabulary comes from its training triples")
    safe: set[str] = set()
    harmful: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                safe.update(str(row["safe"]).split())
                harmful.update(str(row["harmful"]).split())
            except (ValueError, KeyError, TypeError):
                raise DeepAlignError(f"{path}:{n}: not a training triple (needs safe and harmful)") from None
    words = sorted(safe - harmful)
    if not words:
        raise DeepAlignError(f"{path}: the safe responses use no word the harmful ones do not")
    return words


def refusal_openers(world_dir: str | Path) -> list[str]:
    """Every word the world's refusals start with, DeRTa's refusal word first (the manifest's
    ``refusal_openers``; a manifest older than them names only ``refusal_word``)."""
    manifest = load_manifest(world_dir)
    words = manifest.get("refusal_openers") or [manifest.get("refusal_word", "sorry")]
    return [w for w in words if isinstance(w, str) and w.strip()]
