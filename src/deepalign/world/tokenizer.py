"""The world's word-level tokenizer, built with ``tokenizers`` and saved as a standard
Hugging Face tokenizer directory (``AutoTokenizer.from_pretrained`` loads it).

One token is one lower-case word or punctuation mark, so token positions equal word
positions in world text. Chat format: ``<bos> <user> query <assistant> response <eos>``
(with an optional ``<system> ...`` turn first).
"""

from __future__ import annotations

import re
from typing import Iterable

from deepalign.world import lexicon as L

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>", "<system>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<system> {{ message['content'] }} "
    "{% elif message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def words(text: str) -> list[str]:
    """Split text the way the world tokenizer does (lower-case words and punctuation)."""
    return _WORD.findall(text.lower())


def build_tokenizer(texts: Iterable[str]):
    """Build the tokenizer whose vocabulary covers ``texts`` plus the attack vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pieces: set[str] = set()
    for text in texts:
        pieces.update(text.split())
    vocab_words: set[str] = set()
    for piece in pieces - set(SPECIAL_TOKENS):
        vocab_words.update(words(piece))
    vocab_words.update(words(L.ATTACK_WORDS))
    vocab_words.update("abcdefghijklmnopqrstuvwxyz")
    vocab_words.update(str(i) for i in range(128))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(vocab_words):
        vocab.setdefault(w, len(vocab))

    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^a-z0-9]"), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<user>", "<assistant>", "<system>"],
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
