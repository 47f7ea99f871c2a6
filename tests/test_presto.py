"""PRESTO (``--presto_weight``, Vega & Singh, arXiv 2512.05518): the attention regulariser
equals the authors' loop over examples, layers and query positions on padded and packed
batches, adds exactly ``W x term / N`` to the DeRTa loss (nothing at ``W = 0``), lowers the
attention that the positions after a harmful prefill pay to it, and trains end to end from
the command line; its mistakes are one-line errors that write nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from deepalign.cli import main
from deepalign.data.recipes import build_records, save_records
from deepalign.records import HarmfulTriple, InstructionPair
from deepalign.tokens import Encoder
from deepalign.training.collator import encode_records
from deepalign.training.losses import count_label_tokens, derta_loss, presto_term
from deepalign.training.refusal import find_refusal_token
from test_training_tokenizers import word_tokenizer

HARMFUL = "here is how to do it : first mix the dust . then mix the dust . two plus two is four ."


def _records():
    """A derta mixture whose harmful answers differ in length (so packing shares rows)."""
    words = HARMFUL.split()
    triples = [HarmfulTriple(f"t{i}", f"what is two plus two {i} ?", " ".join(words[: 6 + 2 * i]),
                             "sorry , i cannot help with that .") for i in range(6)]
    helpful = [InstructionPair(f"h{i}", "what is two plus two ?", "two plus two is four ." * (1 + i % 3))
               for i in range(6)]
    return build_records("derta", triples, helpful, seed=0, k_zero_share=0.25)


def _trainer(tmp_path, presto_weight=1.0, seed=0, **cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

    tok = word_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                         tie_word_embeddings=False))
    args = DeRTaConfig(output_dir=str(tmp_path / "ck"), report_to="none", disable_tqdm=True, use_cpu=True,
                       save_strategy="no", logging_steps=1, rto_keep=0.5, presto_weight=presto_weight, **cfg)
    recs = _records()
    trainer = DeRTaTrainer(model, args, train_dataset=recs, processing_class=tok,
                           refusal_token_id=find_refusal_token(tok)[0])
    return trainer, recs


def _batch(trainer, padding_free=False, presto=True):
    """All the trainer's records in one batch, with PRESTO spans unless ``presto`` is off."""
    feats = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return dataclasses.replace(trainer.data_collator, padding_free=padding_free, presto=presto)(feats)


def _attentions(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    return model(**inputs, output_attentions=True, use_cache=False).attentions


def naive_term(attentions, spans) -> torch.Tensor:
    """The authors' loop (deep_safety_alignment.py): for each example, layer and query
    position q from the first prefill token to the sequence's end, the attention (summed over
    heads) to the prefill keys up to q, minus that to the keys before the prefill and after it
    up to q, plus the number of heads; averaged over the layers."""
    total = torch.zeros(())
    for layer in attentions:
        heads = layer.shape[1]
        for row, ps, pe, end in spans.tolist():
            for q in range(ps, end):
                a = layer[row, :, q]
                prefill = a[:, ps:min(pe, q + 1)].sum()
                before, after = a[:, :ps].sum(), a[:, pe:q + 1].sum()
                total = total + prefill - (before + after) + heads
    return total / len(attentions)


# -- the prefix span ------------------------------------------------------------------------------


def test_encode_records_marks_the_harmful_prefix_span():
    tok = word_tokenizer()
    recs = _records()
    feats = encode_records(recs, Encoder(tok))
    with_prefix = [(r, f) for r, f in zip(recs, feats) if r.prefix]
    assert with_prefix and any(not r.prefix for r in recs)
    for r, f in zip(recs, feats):
        if not r.prefix:
            assert "prefix_start" not in f and "prefix_end" not in f
            continue
        ps, pe = f["prefix_start"], f["prefix_end"]
        assert f["input_ids"][ps:pe] == tok(r.prefix, add_special_tokens=False)["input_ids"]
        assert pe == f["rto_start"] == f["mle_start"]  # a harmful-prefix record: the safe target follows
    # cut by max_length inside the prefix: the span is clipped with the sequence
    r, f = with_prefix[0]
    cut = encode_records([r], Encoder(tok), max_length=f["prefix_start"] + 1)[0]
    assert (cut["prefix_start"], cut["prefix_end"]) == (f["prefix_start"], f["prefix_start"] + 1)
    assert "prefix_start" not in encode_records([r], Encoder(tok), max_length=f["prefix_start"])[0]


@pytest.mark.parametrize("name", ["llama3-bpe", "mistral-tekken", "chatml-bpe"])
def test_the_prefix_span_on_real_chat_templates(name):
    """On real tokenizers and chat templates the span PRESTO reads is the harmful prefix itself:
    it starts where the template's generation prompt ends and ends where the refusal starts."""
    from realtok import family

    enc = Encoder(family(name).tokenizer)
    recs = [r for r in _records() if r.prefix]
    for r, f in zip(recs, encode_records(recs, enc)):
        ps, pe = f["prefix_start"], f["prefix_end"]
        assert f["input_ids"][:ps] == enc.prompt_ids(r.query)
        assert enc.decode(f["input_ids"][ps:pe]).strip() == r.prefix
        assert enc.decode(f["input_ids"][pe:]).strip().startswith(r.target)


@pytest.mark.parametrize("padding_free", [False, True])
def test_collator_emits_spans_in_batch_coordinates_only_when_asked(tmp_path, padding_free):
    trainer, recs = _trainer(tmp_path, presto_weight=1.0)
    feats = [trainer.train_dataset[i] for i in range(len(recs))]
    collator = dataclasses.replace(trainer.data_collator, padding_free=padding_free)
    batch = collator(feats)
    plain = dataclasses.replace(collator, presto=False)(feats)
    assert "presto_spans" not in plain and set(batch) == set(plain) | {"presto_spans"}
    assert all(torch.equal(batch[k], plain[k]) for k in plain)  # nothing else changes
    spans = batch["presto_spans"]
    assert spans.dtype == torch.long and spans.shape == (sum(1 for r in recs if r.prefix), 4)
    got = sorted((batch["input_ids"][row, ps:pe].tolist(), end - ps) for row, ps, pe, end in spans.tolist())
    want = sorted((f["input_ids"][f["prefix_start"]:f["prefix_end"]], len(f["input_ids"]) - f["prefix_start"])
                  for f in feats if "prefix_start" in f)
    assert got == want
    if padding_free:
        assert int(spans[:, 0].max()) < len(recs) - 1  # records shared rows


# -- the term ----------------------------------------------------------------------------------------


def test_term_equals_the_authors_loop_on_padded_and_packed_batches(tmp_path):
    trainer, _ = _trainer(tmp_path)
    model = trainer.model
    assert model.config._attn_implementation == "eager"  # switched by the trainer
    terms = []
    with torch.no_grad():
        for padding_free in (False, True):
            batch = _batch(trainer, padding_free)
            attentions = _attentions(model, batch)
            term, n_queries = presto_term(attentions, batch["presto_spans"])
            spans = batch["presto_spans"]
            assert n_queries == int((spans[:, 3] - spans[:, 1]).sum())
            torch.testing.assert_close(term, naive_term(attentions, spans), atol=1e-4, rtol=1e-5)
            terms.append(term)
    torch.testing.assert_close(terms[0], terms[1], atol=1e-4, rtol=1e-5)  # packed == padded
    assert 0 < float(terms[0]) / n_queries < 2 * model.config.num_attention_heads


def test_term_gradient_equals_the_authors_loop(tmp_path):
    """Through the softmax, ``2 x prefill`` has the gradient of the authors' ``prefill - (before
    + after) + heads`` (each row sums to 1), and the term's own backward (a broadcast view of
    the mask) gives it."""
    trainer, _ = _trainer(tmp_path)
    model = trainer.model
    batch = _batch(trainer, padding_free=True)
    grads = []
    for term in (lambda a, s: presto_term(a, s)[0], naive_term):
        model.zero_grad(set_to_none=True)
        term(_attentions(model, batch), batch["presto_spans"]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "model.layers.0.self_attn.q_proj.weight" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_term_of_a_batch_without_prefix_is_zero():
    attentions = (torch.rand(2, 4, 5, 5),)
    term, n = presto_term(attentions, torch.zeros((0, 4), dtype=torch.long))
    assert float(term) == 0.0 and n == 0


# -- the loss ----------------------------------------------------------------------------------------


def test_weight_zero_is_the_plain_loss_bit_for_bit(tmp_path):
    trainer, _ = _trainer(tmp_path, presto_weight=0.0)
    model = trainer.model
    assert model.config._attn_implementation != "eager"  # off: the model is left as it was
    assert not trainer.data_collator.presto
    batch = _batch(trainer, presto=False)
    with_spans = _batch(trainer)
    loss = trainer.compute_loss(model, dict(batch))
    assert torch.equal(trainer.compute_loss(model, with_spans), loss)  # spans are ignored at W = 0
    hidden, head, _, _ = trainer.final_hidden(model, {k: batch[k] for k in ("input_ids", "attention_mask")})
    plain, _ = derta_loss(hidden, head, batch["labels"], batch["rto_labels"])
    assert torch.equal(loss, plain)


@pytest.mark.parametrize("num_items", [None, 500])
def test_weight_adds_exactly_w_times_term_over_n(tmp_path, num_items):
    trainer, _ = _trainer(tmp_path, presto_weight=2.5)
    model = trainer.model
    batch = _batch(trainer)
    n = num_items if num_items is not None else int(count_label_tokens(batch["labels"], batch["rto_labels"]))
    items = None if num_items is None else torch.tensor(num_items)
    spans = batch["presto_spans"]
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
        term = naive_term(_attentions(model, batch), spans)
        assert trainer._stats["presto_queries"] == int((spans[:, 3] - spans[:, 1]).sum())  # for the log
        assert trainer._stats["presto_sum"] == pytest.approx(float(term), rel=1e-5)
        trainer.args.presto_weight = 0.0
        try:
            plain = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
        finally:
            trainer.args.presto_weight = 2.5
    assert float(term) > 0
    assert float(loss - plain) == pytest.approx(2.5 * float(term) / n, rel=1e-5)


def test_gradient_accumulation_gives_the_big_batch_gradient(tmp_path):
    """batch 12 x 1 step == batch 6 x 2 accumulated with PRESTO on (SGD: the update shows the
    gradient's scale; the term is divided by the accumulated batch's N like the CE)."""
    weights = []
    for bs, ga in ((12, 1), (6, 2)):
        trainer, _ = _trainer(tmp_path / f"{bs}", presto_weight=1.0, per_device_train_batch_size=bs,
                              gradient_accumulation_steps=ga, max_steps=1, optim="sgd", learning_rate=1.0,
                              warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=0.0, seed=0)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        assert any("presto_attention" in h for h in trainer.state.log_history)
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_training_with_presto_lowers_the_attention_to_the_prefill(tmp_path):
    """Same model, same batch, a few AdamW steps: with W > 0 the positions from the prefill
    onward attend less to it than with W = 0, and the term's gradient reaches the attention
    weights."""
    from deepalign.training.trainer import use_eager_attention

    after = {}
    for weight in (0.0, 1.0):
        trainer, _ = _trainer(tmp_path / str(weight), presto_weight=weight, learning_rate=2e-2,
                              warmup_steps=0, lr_scheduler_type="constant")
        model = trainer.model
        use_eager_attention(model)  # the W = 0 model too, so both read the same attention
        batch = _batch(trainer)  # the W = 0 trainer ignores its spans
        spans = batch["presto_spans"]
        if weight:
            model.zero_grad()
            term, _ = presto_term(_attentions(model, batch), spans)
            term.backward()
            assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        model.train()
        for _ in range(4):
            trainer.optimizer.zero_grad()
            trainer.compute_loss(model, dict(batch)).backward()
            trainer.optimizer.step()
        with torch.no_grad():
            after[weight] = float(presto_term(_attentions(model, batch), spans)[0])
    assert after[1.0] < 0.8 * after[0.0], after


# -- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--lora", "--lora_r", "4", "--padding_free"]], ids=["full", "lora-packed"])
def test_cli_trains_harmful_prefix_with_presto(world_dir, base_model_dir, tmp_path, capsys, extra):
    out = tmp_path / "hp"
    code = main(["train", "--recipe", "harmful-prefix", "--presto_weight", "1", "--world", str(world_dir), "--model",
                 str(base_model_dir), "--out", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
                 "--logging_steps", "1", "--quiet", *extra])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["presto_weight"] == 1.0 and info["hyperparameters"]["presto_weight"] == 1.0
    assert info["steps"] == 2 and all(c["presto_attention"] > 0 for c in info["loss_curve"])
    assert "--presto_weight 1" in info["command"] and "| `presto_weight` | 1 |" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert "eager" not in json.dumps(config)  # the saved model keeps its own attention implementation


@pytest.fixture(scope="module")
def ws(world_dir, base_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("presto-bad-input")
    shutil.copytree(world_dir, root / "world")
    shutil.copytree(base_model_dir, root / "base")
    plain = build_records("vanilla", [HarmfulTriple("t0", "q ?", "h .", "sorry .")], [], seed=0)
    save_records(plain, root / "noprefix.jsonl")
    return root


T = ["--world", "world", "--model", "base", "--out", "t", "--max_steps", "1", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "harmful-prefix", "--presto_weight", "-1"], "--presto_weight must be >= 0, got -1"),
    (["--recipe", "derta", "--presto_weight", "nan"], "--presto_weight must be a finite number, got nan"),
    (["--recipe", "vanilla", "--presto_weight", "1"],
     "--presto_weight is read only with --recipe harmful-prefix or derta or --records; here it would be ignored"),
    (["--recipe", "sft", "--presto_weight", "1"], "--presto_weight is read only with"),
    (["--recipe", "harmful-prefix", "--k_zero_share", "1", "--presto_weight", "1"],
     "--presto_weight needs records with a harmful prefix (a non-empty prefix span); the records built for"),
    (["--recipe", "vanilla", "--records", "noprefix.jsonl", "--presto_weight", "1"],
     "--presto_weight needs records with a harmful prefix (a non-empty prefix span); --records noprefix.jsonl has "
     "none"),
], ids=["negative", "nan", "vanilla", "sft", "k0", "records"])
def test_bad_presto_input_is_one_line_exit_2_and_writes_nothing(ws, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    before = sorted(p for p in ws.rglob("*"))
    code = main(["train", *T, *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Loading weights", "\r"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("deepalign: error: ") and message in lines[0], err
    assert "Traceback" not in err and not (ws / "t").exists() and sorted(ws.rglob("*")) == before



@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_keeps_the_term_or_is_refused(tmp_path, reentrant):
    """Non-reentrant activation checkpointing (the default) gives the gradient of a plain run;
    reentrant checkpointing cuts the attentions out of the graph, which is a one-line error."""
    from deepalign.errors import DeepAlignError

    grads = []
    for checkpointing in (False, True):
        trainer, _ = _trainer(tmp_path / str(checkpointing))
        model = trainer.model
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
            model.train()
        batch = _batch(trainer)
        if checkpointing and reentrant:
            with pytest.raises(DeepAlignError, match=r"^--presto_weight: no attention probability carries a gradient"):
                trainer.compute_loss(model, dict(batch))
            return
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, dict(batch)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
