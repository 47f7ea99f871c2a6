"""No attack may make a model read a token it cannot read.

An attack adds text of its own to what a target reads: a forced start of the answer (prefill,
completion start, a shaped answer begun), a frame around the query (templates, ciphers, code,
role-play), a system text. When the target's tokenizer turns a word of that text into its
unknown token (``<unk>``: a word-level vocabulary, a SentencePiece model without byte
fallback), or silently drops characters it has no piece for (what a SentencePiece model
converted to a Hugging Face tokenizer without byte pieces does), the model reads nothing where
the attack meant a word, and the attack measures something else than it says. A word is
readable when its tokens hold no unknown token and decode back to it (as the tokenizer's own
normaliser writes it). Before any work, :func:`unknown_words` finds every such word per
target, attack and item; the runner refuses the run in one line naming the attack, the target
and the word, unless ``--allow_unknown_tokens`` is given, in which case the rows keep the
words in ``meta["unknown_words"]`` and the report flags their cells.

Only text the attack adds is checked (a dataset's own query is the dataset's business). Attacks
whose requests are made during the run (PAIR's attacker) cannot be checked beforehand.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from deepalign.records import EvalPrompt


def tokenizer_of(target) -> Any | None:
    """The tokenizer a built target reads its forced text with (None: it has none here)."""
    for path in (("tokenizer",), ("decoder", "tokenizer"), ("encoder", "tokenizer")):
        obj = target
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None and callable(obj):
            return obj
    return None


def _squash(text: str) -> str:
    return "".join(text.replace("\u2581", " ").split())


class WordCheck:
    """Which words a tokenizer cannot read (cached per word): see the module doc."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.unk = getattr(tokenizer, "unk_token_id", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.normalizer = getattr(backend, "normalizer", None)
        self.seen: dict[str, bool] = {}
        self.counts: dict[str, int] = {}

    def _normalized(self, word: str) -> str:
        return self.normalizer.normalize_str(word) if self.normalizer is not None else word

    def unknown(self, word: str) -> bool:
        if word not in self.seen:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            lost = _squash(self.tokenizer.decode(ids, skip_special_tokens=False)) != _squash(self._normalized(word))
            self.seen[word] = (self.unk is not None and self.unk in ids) or lost
        return self.seen[word]

    def first_tokens(self, text: str, k: int) -> str:
        """The words of ``text`` its first ``k`` tokens cover (at least partly)."""
        out, used = [], 0
        for word in text.split():
            if used >= k:
                break
            out.append(word)
            if word not in self.counts:
                self.counts[word] = len(self.tokenizer(word, add_special_tokens=False)["input_ids"])
            used += self.counts[word]
        return " ".join(out)


def fingerprint(tokenizer) -> str:
    """What decides how a tokenizer reads words: its serialised pipeline (vocabulary,
    normaliser, added tokens) where it has one, else its class, source and size."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(
        (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", None), len(tokenizer),
         getattr(tokenizer, "unk_token_id", None)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: one WordCheck per tokenizer fingerprint for the life of the process: the study's targets share
#: a tokenizer, and each of its evaluations checks the same words again
_CHECKS: dict[str, WordCheck] = {}


def word_check(tokenizer) -> WordCheck:
    """The process's :class:`WordCheck` for a tokenizer that reads words as ``tokenizer`` does."""
    key = fingerprint(tokenizer)
    if key not in _CHECKS:
        _CHECKS[key] = WordCheck(tokenizer)
    return _CHECKS[key]


def _applies(attack, item: EvalPrompt) -> bool:
    return attack.applies(item)


def added_text(attack, item: EvalPrompt, check: WordCheck, applies=_applies) -> list[str]:
    """The words ``attack`` adds to what a target reads for ``item`` (see the module doc);
    none where ``applies(attack, item)`` says the attack will not run on it."""
    prepare = getattr(attack, "prepare", None)
    if prepare is None or not applies(attack, item):
        return []
    request = prepare(item).request
    own = set(item.prompt.split())
    words = [w for w in (request.query or request.text or "").split() if w not in own]
    words += (request.system or "").split()
    forced = request.prefill or ""
    if request.prefill_tokens is not None:
        forced = check.first_tokens(forced, request.prefill_tokens)
    return words + forced.split()


def unknown_words(tokenizer, attacks: Sequence, data: Mapping[str, list[EvalPrompt]], *,
                  applies=_applies) -> dict[tuple[str, str, str], list[str]]:
    """``(attack label, dataset, item id) -> unknown words`` for every cell where an attack
    makes this tokenizer read its unknown token (only cells where ``applies(attack, item)``:
    the runner passes its own rule, so no run is refused over items it would skip)."""
    check = word_check(tokenizer)
    out: dict[tuple[str, str, str], list[str]] = {}
    for attack in attacks:
        for dname, items in data.items():
            for it in items:
                bad = list(dict.fromkeys(w for w in added_text(attack, it, check, applies) if check.unknown(w)))
                if bad:
                    out[(attack.label, dname, it.id)] = bad
    return out
