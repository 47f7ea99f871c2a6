"""The label-position loss equals a straightforward full-logits reference (values and grads),
including RTO positions and the keep mask, and the trainer normalises it over the whole
accumulated batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from deepalign.data.recipes import build_records
from deepalign.records import HarmfulTriple, InstructionPair
from deepalign.training.losses import IGNORE_INDEX
from deepalign.training.losses import count_label_tokens, derta_loss, linear_cross_entropy, reference_loss
from deepalign.training.refusal import find_refusal_token
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
                           refusal_token_id=find_refusal_token(tok)[0])
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


def test_trainer_compute_loss_takes_inputs_embeds(tmp_path):
    """A batch that brings its own embeddings (``inputs_embeds``, no ``input_ids``, as
    benchmarks/bench_loss.py feeds it) gets the same loss and gradients as the full-logits
    reference over the same embeddings; it used to fail with KeyError: 'input_ids'."""
    trainer, _, recs = _tiny_setup(tmp_path, rto_keep=0.3)
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(recs))])
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    inputs = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"], "labels": batch["labels"],
              "rto_labels": batch["rto_labels"]}
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grad = embeds.grad.clone()
    hidden, _, _, _ = trainer.final_hidden(model, {"inputs_embeds": embeds.detach(),
                                                   "attention_mask": batch["attention_mask"]})
    assert hidden.shape == embeds.shape
    embeds.grad = None
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    ref = reference_loss(logits, batch["labels"], batch["rto_labels"])
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(grad, embeds.grad, atol=1e-5, rtol=1e-4)


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


# -- the fused path: tiles, memory, no gradient work without grad -------------------------------


class _NewTensors(TorchDispatchMode):
    """Records every tensor an op creates on a fresh storage of at least ``min_numel`` elements
    (views, in-place and ``out=`` results reuse an input's storage and are not counted)."""

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel = min_numel
        self.created: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        known = {t.untyped_storage().data_ptr() for t in leaves}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in known:
                    self.created.append((str(func), t.dtype, tuple(t.shape), ptr))
        return out


def _rows_case(n=23, h=48, v=64, bias=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(h, v, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(v, generator=g))
    rows = (torch.randn(n, h, generator=g) * 0.7).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    weights = torch.rand(n, generator=g) + 0.5
    return head, rows, targets, weights


@pytest.mark.parametrize("chunk_rows,vocab_chunk", [(None, None), (5, None), (None, 7), (4, 9), (100, 13), (23, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_tiles_equal_full_logits(chunk_rows, vocab_chunk, bias):
    """One tile, row blocks, vocabulary tiles and both: values and gradients equal the
    full-logits computation to 1e-5 in fp32."""
    head, rows, targets, weights = _rows_case(bias=bias)
    total, per_row = linear_cross_entropy(rows, head, targets, weights, chunk_rows=chunk_rows,
                                          vocab_chunk=vocab_chunk, impl="fused")
    params = [rows, head.weight] + ([head.bias] if bias else [])
    grads = torch.autograd.grad(total * 0.37, params)
    ce = nn.functional.cross_entropy(head(rows).float(), targets, reduction="none")
    ref_grads = torch.autograd.grad((ce * weights).sum() * 0.37, params)
    torch.testing.assert_close(per_row, ce.detach(), atol=1e-5, rtol=1e-5)
    assert total.item() == pytest.approx((ce * weights).sum().item(), abs=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vocab_chunk", [None, 16])
def test_fused_loss_creates_one_weight_sized_tensor(vocab_chunk):
    """Forward + backward allocate exactly one weight-sized tensor, the weight's gradient, and
    autograd adopts it as ``.grad`` (no accumulation temporaries, no scaled copy)."""
    head, rows, targets, weights = _rows_case()
    watch = _NewTensors(head.weight.numel())
    with watch:
        total, _ = linear_cross_entropy(rows, head, targets, weights, chunk_rows=6, vocab_chunk=vocab_chunk,
                                        impl="fused")
        (total / 7).backward()
    assert len(watch.created) == 1, watch.created
    assert watch.created[0][3] == head.weight.grad.untyped_storage().data_ptr()
    ce = nn.functional.cross_entropy(head(rows.detach()), targets, reduction="none")
    (ref,) = torch.autograd.grad((ce * weights).sum() / 7, [head.weight])
    torch.testing.assert_close(head.weight.grad, ref, atol=1e-5, rtol=1e-5)
    # a second micro-batch accumulates into the existing .grad
    total, _ = linear_cross_entropy(rows, head, targets, weights, chunk_rows=6, vocab_chunk=vocab_chunk,
                                    impl="fused")
    (total / 7).backward()
    torch.testing.assert_close(head.weight.grad, 2 * ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["no_grad", "nothing_requires_grad"])
@pytest.mark.parametrize("vocab_chunk", [None, 16])
def test_fused_loss_does_no_gradient_work_without_grad(case, vocab_chunk):
    """Under ``torch.no_grad()`` (an evaluation loss of a trainable model), or when neither the
    rows nor the head require grad: one matmul per tile, no gradient buffers."""
    head, rows, targets, weights = _rows_case()
    if case == "nothing_requires_grad":
        rows = rows.detach()
        head.weight.requires_grad_(False)
    context = torch.no_grad() if case == "no_grad" else contextlib.nullcontext()
    watch = _NewTensors(1)
    with context, watch, FlopCounterMode(display=False) as flops:
        total, per_row = linear_cross_entropy(rows, head, targets, weights, vocab_chunk=vocab_chunk, impl="fused")
    n, h = rows.shape
    assert flops.get_total_flops() == 2 * n * h * head.weight.shape[0]  # the logits, nothing else
    gradient_shaped = [c for c in watch.created if c[2] in (tuple(head.weight.shape), tuple(rows.shape))]
    assert gradient_shaped == []
    assert total.grad_fn is None
    ce = nn.functional.cross_entropy(head(rows.detach()), targets, reduction="none")
    torch.testing.assert_close(per_row, ce.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_rows,vocab_chunk", [(None, None), (6, 16)])
def test_bf16_head_gets_a_bf16_gradient(chunk_rows, vocab_chunk):
    """bf16 weights: the head's gradient is created once, in bf16 (never as an fp32 weight-sized
    buffer), and matches the fp32 computation to bf16 precision."""
    head, rows, targets, weights = _rows_case(dtype=torch.bfloat16)
    watch = _NewTensors(head.weight.numel())
    with watch:
        total, _ = linear_cross_entropy(rows, head, targets, weights, chunk_rows=chunk_rows,
                                        vocab_chunk=vocab_chunk, impl="fused")
        total.backward()
    assert [(dtype, shape) for _, dtype, shape, _ in watch.created] == [(torch.bfloat16, tuple(head.weight.shape))]
    assert head.weight.grad.dtype == torch.bfloat16 and rows.grad.dtype == torch.bfloat16
    w32, x32 = head.weight.detach().float().requires_grad_(), rows.detach().float().requires_grad_()
    ce = nn.functional.cross_entropy(x32 @ w32.t(), targets, reduction="none")
    gw, gx = torch.autograd.grad((ce * weights).sum(), [w32, x32])
    assert total.item() == pytest.approx((ce * weights).sum().item(), rel=1e-2)
    torch.testing.assert_close(head.weight.grad.float(), gw, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(rows.grad.float(), gx, atol=2e-2, rtol=2e-2)


def test_fused_loss_under_autocast_keeps_fp32_master_gradients():
    """bf16 autocast over fp32 weights (Trainer's bf16 mixed precision): gradients come back in
    the parameters' dtype and close to the fp32 values."""
    head, rows, targets, weights = _rows_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = linear_cross_entropy(rows, head, targets, weights, vocab_chunk=16, impl="fused")
    total.backward()
    assert head.weight.grad.dtype == torch.float32 and rows.grad.dtype == torch.float32
    ce = nn.functional.cross_entropy(head(rows.detach()), targets, reduction="none")
    (gw,) = torch.autograd.grad((ce * weights).sum(), [head.weight])
    torch.testing.assert_close(head.weight.grad, gw, atol=3e-2, rtol=3e-2)


def test_fused_loss_rejects_targets_outside_the_vocabulary():
    head, rows, targets, weights = _rows_case()
    targets[3] = head.weight.shape[0]
    with pytest.raises(IndexError):
        linear_cross_entropy(rows, head, targets, weights, impl="fused")


@pytest.mark.parametrize("n,vocab,hidden", [(900, 128256, 2048), (16384, 128256, 4096), (100, 32000, 256),
                                            (30000, 280, 128), (1, 256000, 8192)])
def test_tile_plan_stays_within_its_budget(n, vocab, hidden):
    from deepalign.training.losses import BLOCK_ROWS, TILE_ELEMENTS, _tile_plan

    rows, cols = _tile_plan(n, vocab, hidden, None, None)
    if n * vocab <= TILE_ELEMENTS:
        assert (rows, cols) == (n, vocab)  # one tile: the three-matmul single pass
    else:
        assert rows == min(n, BLOCK_ROWS) and rows * cols <= TILE_ELEMENTS and cols * hidden <= TILE_ELEMENTS
        assert 1 <= cols <= vocab


@pytest.mark.parametrize("arch", ["llama", "qwen2-tied"])
def test_padding_free_batches_give_the_padded_loss_and_gradients(tmp_path, arch):
    """--padding_free packs a batch into a few rows (positions restarting at every record):
    the loss and gradients are the padded batch's, computed on fewer positions."""
    import dataclasses

    trainer, tok, recs = _tiny_setup(tmp_path, arch="qwen2" if arch.startswith("qwen2") else "llama", rto_keep=0.3,
                                     padding_free=True)
    model = trainer.model
    feats = [trainer.train_dataset[i] for i in range(len(recs))]
    packed = trainer.data_collator(feats)
    padded = dataclasses.replace(trainer.data_collator, padding_free=False)(feats)
    assert "attention_mask" not in packed and packed["input_ids"].numel() <= padded["input_ids"].numel()
    assert int((packed["position_ids"] == 0).sum()) == len(recs)
    # every labelled pair of the padded batch, once
    for key in ("labels", "rto_labels"):
        assert sorted(packed[key][packed[key] != IGNORE_INDEX].tolist()) == sorted(
            padded[key][padded[key] != IGNORE_INDEX].tolist())
    results = []
    for batch in (packed, padded):
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_padding_free_is_refused_for_a_model_that_mixes_packed_sequences(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from deepalign.errors import DeepAlignError
    from deepalign.training.trainer import check_packing

    class PositionBlind(LlamaForCausalLM):
        """An architecture that does not read packed positions (its own position scheme)."""

        def forward(self, input_ids=None, position_ids=None, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    torch.manual_seed(0)
    blind = PositionBlind(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(DeepAlignError, match=r"^--padding_free: PositionBlind lets packed sequences attend"):
        check_packing(blind)
    trainer, _, _ = _tiny_setup(tmp_path, padding_free=True)  # Llama and GPT-2 keep them apart: accepted
    check_packing(trainer.model)
    check_packing(GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=64)))
