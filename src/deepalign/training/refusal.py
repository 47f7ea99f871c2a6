"""The refusal token of RTO, taken from the tokenizer (never a hard-coded id).

The RTO target is the token that starts a refusal *in the middle of a response*, i.e. the
word as it appears after a space: ``" Sorry"`` for byte-level BPE (Tekken, LLaMA-3),
``"▁Sorry"`` for SentencePiece, ``"sorry"`` for the world's lower-casing word-level
tokenizer. We find it by encoding ``". <word>"`` and ``"."`` and taking what the word adds,
which works for all three families and for the mistral-common wrappers.
"""

from __future__ import annotations

from deepalign.errors import DeepAlignError

DEFAULT_REFUSAL_WORD = "Sorry"
_CONTEXT = "."


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    try:
        return [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]
    except Exception:  # pragma: no cover - wrappers without piece names
        return [tokenizer.decode([i]) for i in ids]


def word_pieces(tokenizer, word: str) -> list[int]:
    """Token ids that ``word`` adds when it follows a space mid-text."""
    ctx = _encode(tokenizer, _CONTEXT)
    ids = _encode(tokenizer, f"{_CONTEXT} {word}")
    if ids[: len(ctx)] == ctx:
        rest = ids[len(ctx):]
    else:  # the context merged with the word; fall back to the word after a bare space
        rest = _encode(tokenizer, " " + word)
    # drop leading tokens that are only whitespace (SentencePiece can emit a lone "▁")
    while len(rest) > 1 and not tokenizer.decode(rest[:1]).strip():
        rest = rest[1:]
    return rest


def find_refusal_token(tokenizer, word: str | None = None) -> tuple[int, str]:
    """Return ``(token id, piece)`` of the refusal word as it appears mid-response.

    ``word=None`` means the default ``"Sorry"``; for the default, a lower-case vocabulary's
    ``"sorry"`` is accepted too. A word that is not exactly one known token raises
    :class:`DeepAlignError` naming the pieces.
    """
    explicit = word is not None
    word = DEFAULT_REFUSAL_WORD if word is None else word
    if not word.strip() or len(word.split()) != 1:
        raise DeepAlignError(f"refusal word must be a single word, got {word!r}")
    word = word.strip()
    candidates = [word] if explicit else [word, word.lower()]
    unk = getattr(tokenizer, "unk_token_id", None)
    problem = None
    for cand in candidates:
        ids = word_pieces(tokenizer, cand)
        pieces = _pieces(tokenizer, ids)
        if len(ids) == 1 and (unk is None or ids[0] != unk):
            return ids[0], pieces[0]
        if problem is None:
            if len(ids) == 1:
                problem = f"refusal word {cand!r} is not in the tokenizer's vocabulary (it becomes {pieces[0]!r})"
            else:
                shown = " ".join(repr(p) for p in pieces)
                problem = (f"refusal word {cand!r} is not a single token of this tokenizer: "
                           f"it splits into {len(ids)} pieces {shown} (ids {ids})")
    raise DeepAlignError(f"{problem}; pass --refusal-word with a word that is one token")
