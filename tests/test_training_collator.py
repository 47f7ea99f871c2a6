"""Collator: span boundaries -> MLE labels and the RTO label channel on the same sequence."""

from __future__ import annotations

import math

import pytest
import torch

from deepalign.data.recipes import build_records
from deepalign.records import HarmfulTriple, InstructionPair
from deepalign.tokens import Encoder
from deepalign.training.collator import DeRTaCollator, encode_records, keep_positions
from deepalign.training.losses import IGNORE_INDEX
from deepalign.training.refusal import find_refusal_token
from test_training_tokenizers import tekken_fast, word_tokenizer

HARM = "here is how to do it : first mix the dust . second mix the dust . finally mix the dust ."
SAFE = "Sorry , I cannot help with that ."


def _trip(n=6):
    return [HarmfulTriple(id=f"t{i}", query=f"what is two plus two {i} ?", harmful=HARM, safe=SAFE)
            for i in range(n)]


def _help(n=3):
    return [InstructionPair(id=f"h{i}", instruction="what is two plus two ?", response="two plus two is four .")
            for i in range(n)]


def _batch(tok, recs, keep=1.0, seed=0, epoch=0):
    rid = find_refusal_token(tok)[0]
    feats = encode_records(recs, Encoder(tok))
    col = DeRTaCollator(pad_token_id=tok.pad_token_id, refusal_token_id=rid, rto_keep=keep, seed=seed, epoch=epoch)
    return feats, col(feats), rid


def _spans(tok, recs, batch):
    """Decode label and RTO positions of each row."""
    out = []
    for i, r in enumerate(recs):
        ids, lab, rto = batch["input_ids"][i], batch["labels"][i], batch["rto_labels"][i]
        mle = tok.decode(ids[lab != IGNORE_INDEX].tolist())
        rto_ids = ids[rto != IGNORE_INDEX].tolist()
        out.append((mle, rto_ids))
    return out


@pytest.mark.parametrize("which", ["word", "tekken"])
def test_labels_cover_exactly_the_target_and_rto_spans(which):
    tok = word_tokenizer() if which == "word" else tekken_fast()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    recs = build_records("derta", _trip(), _help(), encoder=Encoder(tok), seed=0, k_zero_share=0.5)
    feats, batch, rid = _batch(tok, recs)
    end = tok.eos_token
    for f, r in zip(feats, recs):
        # the sequence is the conversation exactly as the model's chat template writes it
        text = tok.apply_chat_template([{"role": "user", "content": r.query},
                                        {"role": "assistant", "content": r.response}], tokenize=False)
        assert f["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        assert f["input_ids"].count(tok.bos_token_id) == 1 and f["input_ids"].count(tok.eos_token_id) == 1
    spans = _spans(tok, recs, batch)
    n_rto_seen = 0
    for r, (mle, rto_ids), lab, rl in zip(recs, spans, batch["labels"], batch["rto_labels"]):
        if r.kind == "rto":
            assert mle == ""
            n_harm = len(Encoder(tok).response_ids(r.query, r.rto, end=True))
            # every token of the RTO span (harmful text + end of turn) carries the refusal target
            assert len(rto_ids) == n_harm
            assert set(rl[rl != IGNORE_INDEX].tolist()) == {rid}
            n_rto_seen += 1
        else:
            assert rto_ids == []
            target = r.parts()[-1]  # the target with the space that separates it from a forced prefix
            if which == "tekken":  # byte-level BPE decodes back to the exact target text + end of turn
                assert mle == target + end
            else:  # word level: the labelled tokens are the target's tokens + end of turn
                ids = batch["input_ids"][recs.index(r)]
                assert tok.convert_ids_to_tokens(ids[lab != IGNORE_INDEX].tolist()) == tok.tokenize(target) + [end]
    assert n_rto_seen == 3
    assert batch["attention_mask"].sum().item() == sum(len(f["input_ids"]) for f in feats)


def test_tekken_refusal_after_harmful_prefix_is_the_rto_token():
    """After forced harmful words, the safe response starts with ' Sorry': the same token RTO trains."""
    tok = tekken_fast()
    recs = build_records("harmful-prefix", _trip(3), [], k_zero_share=0, seed=1)
    feats, batch, rid = _batch(tok, recs)
    for i in range(len(recs)):
        first = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX][0].item()
        assert first == rid


def test_keep_ratio_is_seeded_per_record_and_epoch():
    tok = word_tokenizer()
    recs = build_records("rto", _trip(8), [], seed=0)
    rto_recs = [r for r in recs if r.kind == "rto"]
    n = len(Encoder(tok).response_ids(rto_recs[0].query, rto_recs[0].rto))
    _, b1, _ = _batch(tok, rto_recs, keep=0.05, seed=7)
    _, b2, _ = _batch(tok, rto_recs, keep=0.05, seed=7)
    _, b3, _ = _batch(tok, rto_recs, keep=0.05, seed=7, epoch=1)
    kept = (b1["rto_labels"] != IGNORE_INDEX).sum(1)
    assert kept.tolist() == [math.ceil(0.05 * n)] * 4  # max(1, ceil(keep * n)) per record
    assert torch.equal(b1["rto_labels"], b2["rto_labels"])
    assert not torch.equal(b1["rto_labels"], b3["rto_labels"])
    # different records draw different positions
    pos = [tuple((row != IGNORE_INDEX).nonzero().flatten().tolist()) for row in b1["rto_labels"]]
    assert len(set(pos)) > 1
    assert keep_positions(10, 0.0, 0, 0, "a").size == 0
    assert keep_positions(10, 1.0, 0, 0, "a").tolist() == list(range(10))
    assert len(keep_positions(40, 0.25, 0, 0, "a")) == 10


def test_padding_truncation_and_missing_refusal_token():
    tok = word_tokenizer()
    recs = build_records("derta", _trip(2), _help(1), seed=0)
    feats = encode_records(recs, Encoder(tok), max_length=12)
    assert max(len(f["input_ids"]) for f in feats) <= 12
    col = DeRTaCollator(pad_token_id=tok.pad_token_id, refusal_token_id=5, pad_to_multiple_of=8)
    b = col(feats)
    assert b["input_ids"].shape[1] == 16
    assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="no refusal token id"):
        DeRTaCollator(pad_token_id=0)(encode_records([r for r in recs if r.kind == "rto"], Encoder(tok)))


def test_padding_free_packs_records_whole_with_their_own_positions():
    """Packed rows: each record whole and contiguous, positions 0..n-1, its labels and RTO
    labels where the padded batch has them (shifted with the record), fewer positions than the
    padded batch when short and long records mix, and the same draw of kept RTO positions."""
    import dataclasses

    tok = word_tokenizer()
    recs = build_records("derta", _trip(6), _help(6), seed=0)
    rid = find_refusal_token(tok)[0]
    feats = encode_records(recs, Encoder(tok))
    padded = DeRTaCollator(pad_token_id=tok.pad_token_id, refusal_token_id=rid, rto_keep=0.5, seed=1)(feats)
    col = DeRTaCollator(pad_token_id=tok.pad_token_id, refusal_token_id=rid, rto_keep=0.5, seed=1, padding_free=True)
    packed = col(feats)
    assert packed["input_ids"].numel() < padded["input_ids"].numel() and packed["input_ids"].shape[0] < len(feats)
    width = max(len(f["input_ids"]) for f in feats)
    assert packed["input_ids"].shape[1] == width  # rows never longer than the longest record
    found = 0
    for row in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][row] == 0).nonzero().flatten().tolist()
        for s in starts:
            n = next(len(f["input_ids"]) for f in feats
                     if packed["input_ids"][row, s:s + len(f["input_ids"])].tolist() == f["input_ids"])
            i = next(i for i, f in enumerate(feats) if packed["input_ids"][row, s:s + n].tolist() == f["input_ids"])
            assert packed["position_ids"][row, s:s + n].tolist() == list(range(n))
            for key in ("labels", "rto_labels"):
                assert packed[key][row, s:s + n].tolist() == padded[key][i, :n].tolist()
            found += 1
    assert found == len(feats)
    assert dataclasses.replace(col, padding_free=False)(feats)["input_ids"].equal(padded["input_ids"])
