"""The RTO refusal token on real tokenizers (mistral-common's Tekken and SentencePiece files,
shipped inside the installed package) and on a word-level tokenizer.

Also holds the tokenizer helpers the other training tests import.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from deepalign.errors import DeepAlignError
from deepalign.training.refusal import find_refusal_token


def mistral_data() -> Path:
    mc = pytest.importorskip("mistral_common")
    return Path(mc.__file__).parent / "data"


@functools.lru_cache(maxsize=None)
def tekken_fast(name: str = "tekken_240911.json"):
    """mistral-common's Tekken (byte-level BPE, 131K vocab) as a Hugging Face fast tokenizer."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tok = convert_tekken_tokenizer(str(mistral_data() / name))
    return tok


@functools.lru_cache(maxsize=None)
def mistral_common_tokenizer(name: str):
    """A mistral-common tokenizer file wrapped by transformers' MistralCommonBackend."""
    from transformers.tokenization_mistral_common import MistralCommonBackend

    return MistralCommonBackend(str(mistral_data() / name))


def word_tokenizer(extra: str = ""):
    """A tiny word-level tokenizer with the world's chat format (lower-casing)."""
    from deepalign.world.tokenizer import build_tokenizer

    texts = ["sorry , i cannot help with that . here is how to do it : first mix the dust . "
             "what is two plus two ? two plus two is four . " + extra]
    return build_tokenizer(texts)


@pytest.mark.parametrize("name", ["tekken_240718.json", "tekken_240911.json"])
def test_tekken_refusal_token_is_space_sorry(name):
    tok = mistral_common_tokenizer(name)
    tid, piece = find_refusal_token(tok)
    assert piece == " Sorry"
    # it is the token that "Sorry" becomes mid-response
    ids = tok.encode("I see. Sorry, I cannot help.", add_special_tokens=False)
    assert tid in ids
    assert tok.decode([tid]) == " Sorry"
    # the HF fast conversion of the same file agrees
    if name == "tekken_240911.json":
        assert find_refusal_token(tekken_fast(name))[0] == tid


@pytest.mark.parametrize("name", ["tokenizer.model.v1", "mistral_instruct_tokenizer_240216.model.v2",
                                  "mistral_instruct_tokenizer_240323.model.v3",
                                  "mistral_instruct_tokenizer_241114.model.v7"])
def test_sentencepiece_refusal_token_is_word_boundary_sorry(name):
    pytest.importorskip("sentencepiece")
    tok = mistral_common_tokenizer(name)
    tid, piece = find_refusal_token(tok)
    assert piece == "▁Sorry"
    assert tid in tok.encode("I see. Sorry, I cannot help.", add_special_tokens=False)


def test_refusal_word_option_and_errors_on_real_tokenizers():
    tok = mistral_common_tokenizer("tekken_240911.json")
    tid, piece = find_refusal_token(tok, "Unfortunately")
    assert piece == " Unfortunately"
    with pytest.raises(DeepAlignError) as err:
        find_refusal_token(tok, "Entschuldigung")
    msg = str(err.value)
    assert "not a single token" in msg and "' Ent'" in msg and "'igung'" in msg and "\n" not in msg
    with pytest.raises(DeepAlignError, match="single word"):
        find_refusal_token(tok, "I am sorry")


def test_word_level_tokenizer_refusal_token():
    tok = word_tokenizer()
    tid, piece = find_refusal_token(tok)  # "Sorry" is lower-cased by the tokenizer: one token
    assert piece == "sorry" and tid == tok.convert_tokens_to_ids("sorry")
    assert find_refusal_token(tok, "cannot")[1] == "cannot"
    with pytest.raises(DeepAlignError, match=r"'apologies' is not in the tokenizer's vocabulary \(it becomes '<unk>'\)"):
        find_refusal_token(tok, "apologies")
