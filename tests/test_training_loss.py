"""The label-position loss equals a straightforward full-logits reference (values and grads),
including RTO positions and the keep mask, and the trainer normalises it over the whole
accumulated batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepalign.data.recipes import build_records
from deepalign.records import HarmfulTriple, InstructionPair
from deepalign.training.losses import IGNORE_INDEX
from deepalign.training.losses import count_label_tokens, derta_loss, linear_cross_entropy, reference_loss
from deepalign.training.refusal import refusal_token
from test_training_tokenizers import word_tokenizer


def _random_batch(b=3, t=13, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((b, t), IGNORE_INDEX)
    rto = torch.full((b, t), IGNORE_INDEX)
    labels[0, 6:] = torch.randint(0, v, (t - 6,), generator=g)
    labels[1, 9:] = torch.randint(0, v, (t - 9,), generator=g)
    rto[1, 3:9] = 7          # an RTO span followed by an MLE target
    rto[2, [2, 6, 10]] = 7   # a sparse keep mask
    rto[0, 8] = 7            # a position with both an MLE and an RTO target
    return labels, rto


@pytest.mark.parametrize("impl", ["fused", "module"])
@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_grads_equal_full_logits_reference(impl, chunk, bias):
    torch.manual_seed(0)
    b, t, h, v = 3, 13, 16, 40
    head = nn.Linear(h, v, bias=bias)
    hidden = torch.randn(b, t, h, requires_grad=True)
    labels, rto = _random_batch(b, t, v)
    loss, stats = derta_loss(hidden, head, labels, rto, rto_weight=0.6, chunk_rows=chunk, impl=impl)
    params = [hidden, head.weight] + ([head.bias] if bias else [])
    grads = torch.autograd.grad(loss, params)

    hidden2 = hidden.detach().clone().requires_grad_()
    ref = reference_loss(head(hidden2), labels, rto, rto_weight=0.6)
    ref_grads = torch.autograd.grad(ref, [hidden2] + params[1:])
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert stats["n_mle"] == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert stats["n_rto"] == int((rto[:, 1:] != IGNORE_INDEX).sum())


def test_loss_counts_each_labelled_pair_once():
    """mean over all labelled pairs of both kinds (the reference's CE mean over labels)."""
    torch.manual_seed(1)
    head = nn.Linear(8, 20, bias=False)
    hidden = torch.randn(3, 13, 8)
    labels, rto = _random_batch(3, 13, 20)
    logp = torch.log_softmax(head(hidden)[:, :-1], -1)
    terms = []
    for lab in (labels, rto):
        for i, j in (lab[:, 1:] != IGNORE_INDEX).nonzero().tolist():
            terms.append(-logp[i, j, lab[i, j + 1]])
    expect = torch.stack(terms).mean()
    loss, _ = derta_loss(hidden, head, labels, rto)
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)
    assert count_label_tokens(labels, rto).item() == len(terms)
    # normalising by an outer count (gradient accumulation) divides the same sum
    loss_n, _ = derta_loss(hidden, head, labels, rto, num_items=100)
    assert loss_n.item() == pytest.approx(expect.item() * len(terms) / 100, abs=1e-6)


def test_no_labels_gives_zero_loss_with_a_graph():
    head = nn.Linear(4, 10)
    hidden = torch.randn(1, 5, 4, requires_grad=True)
    labels = torch.full((1, 5), IGNORE_INDEX)
    loss, _ = derta_loss(hidden, head, labels, labels.clone())
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None


def test_softcap_and_frozen_head():
    torch.manual_seed(2)
    head = nn.Linear(6, 30, bias=False)
    head.weight.requires_grad_(False)  # a LoRA run freezes the head: the weight grad is skipped
    rows = torch.randn(11, 6, requires_grad=True)
    tgt = torch.randint(0, 30, (11,))
    total, per_row = linear_cross_entropy(rows, head, tgt, chunk_rows=4, impl="fused")
    ref = nn.functional.cross_entropy(head(rows), tgt, reduction="sum")
    assert total.item() == pytest.approx(ref.item(), abs=1e-4)
    (g,) = torch.autograd.grad(total, [rows])
    (r,) = torch.autograd.grad(ref, [rows])
    torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    capped, _ = linear_cross_entropy(rows, head, tgt, softcap=3.0)
    logits = torch.tanh(head(rows) / 3.0) * 3.0
    assert capped.item() == pytest.approx(nn.functional.cross_entropy(logits, tgt, reduction="sum").item(), abs=1e-4)


# -- through the trainer on a tiny model -------------------------------------------------------


def _tiny_setup(tmp_path, arch="llama", **cfg):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from deepalign.training.trainer import DeRTaConfig, DeRTaTrainer

    tok = word_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    triples = [HarmfulTriple(f"t{i}", f"what is two plus two {i} ?", "here is how to do it : first mix the dust .",
                             "sorry , i cannot help with that .") for i in range(8)]
    helpful = [InstructionPair(f"h{i}", "what is two plus two ?", "two plus two is four .") for i in range(8)]
    recs = build_records("derta", triples, helpful, seed=0, k_zero_share=0.25)
    args = DeRTaConfig(output_dir=str(tmp_path / "ck"), report_to="none", disable_tqdm=True, use_cpu=True,
                       save_strategy="no", logging_steps=1, **cfg)
    trainer = DeRTaTrainer(model, args, train_dataset=recs, processing_class=tok,
                           refusal_token_id=refusal_token(tok)[0])
    return trainer, tok, recs


@pytest.mark.parametrize("arch", ["llama", "qwen2-tied", "llama-checkpointing"])
def test_trainer_compute_loss_equals_full_logits_reference(tmp_path, arch):
    extra = {"activation_checkpointing": True} if arch.endswith("checkpointing") else {}
    trainer, tok, recs = _tiny_setup(tmp_path, arch="qwen2" if arch.startswith("qwen2") else "llama", rto_keep=0.3,
                                     **extra)
    model = trainer.model
    if extra:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(recs))])
    assert (batch["rto_labels"] != IGNORE_INDEX).any() and (batch["labels"] != IGNORE_INDEX).any()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = reference_loss(logits, batch["labels"], batch["rto_labels"])
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_gradient_accumulation_gives_the_big_batch_gradient(tmp_path):
    """batch 8 x 1 step == batch 4 x 2 accumulated (SGD, so the update shows the gradient scale;
    the micro-batches hold different numbers of labelled tokens, MLE and RTO)."""
    weights = []
    for bs, ga in ((8, 1), (4, 2)):
        trainer, _, _ = _tiny_setup(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                                    max_steps=1, optim="sgd", learning_rate=1.0, warmup_steps=0,
                                    lr_scheduler_type="constant", max_grad_norm=0.0, rto_keep=1.0, seed=3)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    moved = max((weights[0][n] - p).abs().max().item() for n, p in _tiny_setup(tmp_path / "x")[0].model.named_parameters())
    assert moved > 1e-3  # the step did something
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=1e-5, rtol=1e-4, msg=n)
