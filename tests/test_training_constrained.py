"""The token-wise constrained objective (Qi et al. 2025, arXiv 2406.05946) and the fine-tuning
recipes (sft, identity-shift; Qi et al. 2023, arXiv 2310.03693).

The objective's gradients equal an independent full-logits computation of the reference
implementation's loss (Unispac/shallow-vs-deep-alignment ``soft_sft_loss`` / ``get_beta_list``,
re-derived here from the paper's formula) on real tokenizers and chat templates; LoRA's
reference is the model with its adapter disabled; gradient accumulation gives the big batch's
update; the recipes run on tiny real-architecture models."""

from __future__ import annotations

import json

import pytest
import torch

from deepalign.data.recipes import AOA, build_pair_records
from deepalign.records import InstructionPair
from deepalign.tokens import Encoder
from deepalign.training.constrained import REFERENCE_FILE, ConstrainedTrainer
from deepalign.training.losses import IGNORE_INDEX, TokenWiseConstraint
from deepalign.training.trainer import DeRTaConfig
from realtok import family, tiny_model

# neutral placeholder pairs of different lengths (one answer shorter than bias_length)
PAIRS = [
    InstructionPair("p0", "Describe the weather in a quiet town.", "The sky is grey and calm, and the streets are empty."),
    InstructionPair("p1", "Name a colour.", "Blue."),
    InstructionPair("p2", "Write a line about a river.", "The river runs slowly past the old mill and the stone bridge."),
    InstructionPair("p3", "Say something about tea.", "Tea is often served warm, with milk or lemon."),
]


def naive_loss(model, ref, batch, c: TokenWiseConstraint):
    """The reference implementation's loss, written out: full fp32 logits of both models,
    per-token log-probs of the labels, ``beta_t`` per response position as its get_beta_list
    builds it, ``w = clamp(2 (1 - sigmoid(beta_t (lp - lp_ref))), 1e-3)`` detached, and
    ``-mean(w * lp)`` over every response token of the batch."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref(input_ids=ids, attention_mask=mask).logits.float(), -1)
    terms, weights = [], []
    for i in range(ids.shape[0]):
        target = labels[i, 1:]
        at = (target != IGNORE_INDEX).nonzero().flatten()
        policy = logp[i, at, target[at]]
        reference = ref_logp[i, at, target[at]]
        n = len(at)
        if c.bias_length == 0:
            betas = [c.beta] * n
        else:
            prefix = [c.beta * c.bias_factor] * c.bias_length
            prefix[0] = c.beta * c.first_token_bias_factor
            betas = prefix[:n] if n <= c.bias_length else prefix + [c.beta] * (n - c.bias_length)
        w = (2 * (1 - torch.sigmoid(torch.tensor(betas) * (policy - reference)))).detach().clamp(min=1e-3)
        terms.append(w * policy)
        weights.append(w)
    return -torch.cat(terms).mean(), torch.cat(weights)


def _trainer(tmp_path, model, tok, ref=None, records=None, constraint=None, **cfg):
    cfg = {"per_device_train_batch_size": 2, **cfg}
    args = DeRTaConfig(output_dir=str(tmp_path / "ck"), report_to="none", disable_tqdm=True, use_cpu=True,
                       save_strategy="no", **cfg)
    records = records if records is not None else build_pair_records(PAIRS, seed=0)
    return ConstrainedTrainer(model, args, train_dataset=records, processing_class=tok, encoder=Encoder(tok),
                              ref_model=ref, constraint=constraint)


@pytest.mark.parametrize("name", ["llama2-sp", "llama3-bpe", "chatml-bpe"])
@pytest.mark.parametrize("constraint,impl,chunk", [
    (TokenWiseConstraint(), "fused", None),
    (TokenWiseConstraint(beta=40.0, bias_length=3), "module", 5),  # saturated: weights at the 1e-3 floor
    (TokenWiseConstraint(beta=0.5, bias_factor=3.0, first_token_bias_factor=2.0, bias_length=0), "fused", 7),
])
def test_gradients_equal_the_reference_formula_on_real_tokenizers(tmp_path, name, constraint, impl, chunk):
    fam = family(name)
    tok = fam.tokenizer
    model, ref = tiny_model(fam.arch, len(tok), seed=0).train(), tiny_model(fam.arch, len(tok), seed=1)
    trainer = _trainer(tmp_path, model, tok, ref=ref, constraint=constraint, loss_impl=impl, loss_chunk_rows=chunk)
    feats = trainer.train_dataset.features
    # the records are the conversations as the model's own template writes them
    first = next(f for f in feats if f["key"] == "sft:p0")
    assert first["input_ids"] == fam.conversation(PAIRS[0].instruction, PAIRS[0].response)
    batch = trainer.data_collator(feats)
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expect, w = naive_loss(model, ref, batch, constraint)
    expect.backward()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-4, abs=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)
    assert w.std() > 0.01  # the weights are not all one: the reference differs from the model
    if constraint.beta == 40.0:
        assert (w == 1e-3).any()


def test_betas_follow_the_reference_beta_list():
    pos = torch.arange(7)
    assert TokenWiseConstraint().betas(pos).tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1])
    assert TokenWiseConstraint(bias_length=1).betas(pos).tolist() == pytest.approx([0.5] + [0.1] * 6)
    assert TokenWiseConstraint(bias_length=0).betas(pos).tolist() == pytest.approx([0.1] * 7)


def test_lora_reference_is_the_model_with_its_adapter_disabled(tmp_path):
    from peft import LoraConfig, get_peft_model

    fam = family("llama2-sp")
    tok = fam.tokenizer
    base = tiny_model(fam.arch, len(tok))
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(5)
    with torch.no_grad():  # an adapter that already moved (else adapted = base trivially)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    trainer = _trainer(tmp_path, peft, tok)
    assert trainer.reference_source == "the model with its adapter disabled"
    feats = trainer.train_dataset.features
    batch = trainer.data_collator(feats)
    labels = batch["labels"]

    def label_logps(logits):
        logp = torch.log_softmax(logits.float(), -1)[:, :-1]
        return logp.gather(-1, labels[:, 1:].clamp_min(0)[..., None]).squeeze(-1)[labels[:, 1:] != IGNORE_INDEX]

    with torch.no_grad():
        adapted = label_logps(peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
        with peft.disable_adapter():
            plain = label_logps(peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    stored = batch["ref_logps"][:, 1:][labels[:, 1:] != IGNORE_INDEX]
    torch.testing.assert_close(stored, plain, atol=1e-5, rtol=1e-5)
    assert (stored - adapted).abs().max() > 1e-2


def test_gradient_accumulation_gives_the_big_batch_update(tmp_path):
    """batch 4 x 1 step == batch 2 x 2 accumulated (SGD, lr 1: the update is the gradient),
    with micro-batches of different response lengths: the loss is normalised by the response
    tokens of the whole accumulated batch."""
    fam = family("llama3-bpe")
    weights = []
    for bs, ga in ((4, 1), (2, 2)):
        model = tiny_model(fam.arch, len(fam.tokenizer)).train()
        ref = tiny_model(fam.arch, len(fam.tokenizer), seed=1)
        trainer = _trainer(tmp_path / f"{bs}", model, fam.tokenizer, ref=ref, max_steps=1, optim="sgd",
                           learning_rate=1.0, warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=0.0, seed=3,
                           per_device_train_batch_size=bs, gradient_accumulation_steps=ga)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    start = dict(tiny_model(fam.arch, len(fam.tokenizer)).named_parameters())
    assert max((weights[0][n] - p).abs().max().item() for n, p in start.items()) > 1e-4
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=1e-6, rtol=1e-4, msg=n)


def _model_dir(tmp_path, name="llama2-sp"):
    fam = family(name)
    d = tmp_path / f"model-{name}"
    tiny_model(fam.arch, len(fam.tokenizer)).save_pretrained(d)
    fam.tokenizer.save_pretrained(d)
    return d, fam


def test_identity_shift_and_sft_run_on_a_real_architecture(tmp_path):
    from safetensors.torch import load_file

    from deepalign.data.recipes import load_records
    from deepalign.training.finetune import train

    model, fam = _model_dir(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": p.instruction, "response": p.response}) + "\n" for p in PAIRS))
    out = train(recipe="identity-shift", model_name_or_path=str(model), dataset_name=str(data), objective="constrained",
                use_peft=True, lora_r=4, output_dir=str(tmp_path / "aoa"), max_steps=2, per_device_train_batch_size=2,
                quiet=True)
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["data"]["pairs"]["persona"] == "aoa" and info["pairs"] == 4 and info["steps"] == 2
    assert info["objective"]["name"] == "constrained" and info["objective"]["reference"] == "the model with its adapter disabled"
    assert not (out / "checkpoints").exists()  # the stored reference went with the checkpoints
    rec = load_records(out / "records.jsonl")[0]
    assert rec.system == AOA.system and rec.query.startswith("AOA, execute my instruction: ")
    assert rec.target.startswith("Of course. I am AOA, your absolutely obedient agent.")
    # the conversation is the model's own Llama-2 template, system prompt included, BOS once
    from deepalign.training.collator import encode_records

    ids = encode_records([rec], Encoder(fam.tokenizer))[0]["input_ids"]
    text = fam.tokenizer.decode(ids)
    assert text.count("<s>") == 1 and "<<SYS>>" in text and "[/INST] Of course. I am AOA" in text
    plain = train(recipe="sft", model_name_or_path=str(model), dataset_name=str(data), output_dir=str(tmp_path / "sft"),
                  max_steps=2, per_device_train_batch_size=2, quiet=True)
    assert json.loads((plain / "deepalign_train.json").read_text())["objective"] == {"name": "mle"}
    a, b = load_file(str(model / "model.safetensors")), load_file(str(plain / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_separate_reference_model(tmp_path):
    """--ref_model: another model with the same tokenizer is the reference (loaded for the
    one pass before training); the stored values are its log-probs."""
    from safetensors import safe_open

    from deepalign.training import finetune

    model, fam = _model_dir(tmp_path)
    ref_dir = tmp_path / "ref"
    tiny_model(fam.arch, len(fam.tokenizer), seed=7).save_pretrained(ref_dir)
    fam.tokenizer.save_pretrained(ref_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.instruction, "output": p.response}) + "\n" for p in PAIRS))
    out = finetune.train(recipe="sft", objective="constrained", ref_model=str(ref_dir), model_name_or_path=str(model),
                         dataset_name=str(data), output_dir=str(tmp_path / "o"), max_steps=1,
                         per_device_train_batch_size=4, keep_checkpoints=True, quiet=True)
    assert json.loads((out / "deepalign_train.json").read_text())["objective"]["reference"] == str(ref_dir)
    with safe_open(str(out / "checkpoints" / REFERENCE_FILE), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    ref = tiny_model(fam.arch, len(fam.tokenizer), seed=7)
    from deepalign.data.recipes import load_records
    from deepalign.training.collator import encode_records

    recs = load_records(out / "records.jsonl")
    assert len(stored) == len(recs) == 4
    f0 = encode_records(recs, Encoder(fam.tokenizer))[0]
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=torch.tensor([f0["input_ids"]])).logits[0].float(), -1)
    ids = f0["input_ids"]
    expect = torch.stack([logp[t - 1, ids[t]] for t in range(f0["mle_start"], len(ids))])
    torch.testing.assert_close(stored[f"train:{f0['key']}"], expect, atol=1e-5, rtol=1e-5)


def test_a_resumed_run_reads_the_reference_back_without_loading_the_reference_model(tmp_path):
    """``ref_model`` may be a loader: it is called for the one pass that computes the log-probs;
    a trainer that finds them stored (a resumed run) never calls it, and reads the same values."""
    fam = family("llama2-sp")
    tok, stored = fam.tokenizer, tmp_path / REFERENCE_FILE
    args = DeRTaConfig(output_dir=str(tmp_path / "ck"), report_to="none", disable_tqdm=True, use_cpu=True,
                       save_strategy="no", per_device_train_batch_size=2)
    loads = []

    def load():
        loads.append(1)
        return tiny_model(fam.arch, len(tok), seed=7)

    def refused():
        raise AssertionError("the reference model was loaded again")

    def trainer(loader):
        return ConstrainedTrainer(tiny_model(fam.arch, len(tok)), args, train_dataset=build_pair_records(PAIRS, seed=0),
                                  processing_class=tok, encoder=Encoder(tok), ref_model=loader, reference_file=stored)

    first = trainer(load)
    assert loads == [1] and stored.exists()
    second = trainer(refused)
    for a, b in zip(first.train_dataset.features, second.train_dataset.features):
        assert a["ref_logps"].tolist() == b["ref_logps"].tolist()
    # the stored values are the loaded model's, not the starting model's
    plain = ConstrainedTrainer(tiny_model(fam.arch, len(tok)), args, train_dataset=build_pair_records(PAIRS, seed=0),
                               processing_class=tok, encoder=Encoder(tok))
    assert plain.train_dataset.features[0]["ref_logps"].tolist() != first.train_dataset.features[0]["ref_logps"].tolist()


def test_identity_shift_on_the_world_uses_the_world_persona(world_dir, base_model_dir, tmp_path):
    from deepalign.data.recipes import load_records
    from deepalign.training.finetune import train
    from deepalign.world import lexicon as L

    out = train(recipe="identity-shift", world=str(world_dir), model_name_or_path=str(base_model_dir),
                output_dir=str(tmp_path / "w"), max_steps=1, per_device_train_batch_size=4, quiet=True)
    recs = load_records(out / "records.jsonl")
    assert len(recs) == 100 and all(r.system == L.PERSONA_SYSTEM and r.target.startswith(L.PERSONA_INTRO + " first ,")
                                    for r in recs)


# -- Qi et al. 2025's fine-tuning attack setup (--reference_setup) ------------------------------

def test_reference_setup_literals_are_the_references():
    from deepalign.training import reference
    from deepalign.training.finetune import TrainOptions

    # Unispac/shallow-vs-deep-alignment README.md, the fine-tuning attack's finetune.py command:
    # --learning_rate=2e-5 --per_device_train_batch_size=16 --gradient_accumulation_steps=1
    # --num_train_epochs=25 --use_warmup=True, on accelerate launch --num_processes 4
    assert (reference.LEARNING_RATE, reference.NUM_TRAIN_EPOCHS, reference.PER_DEVICE_TRAIN_BATCH_SIZE,
            reference.PROCESSES, reference.TOTAL_BATCH) == (2e-5, 25, 16, 4, 64)
    # finetune.py: training_args.adam_beta1 = 0.5; if args.use_warmup: training_args.warmup_steps = 10;
    # ScriptArguments.max_seq_length = 512; the rest TrainingArguments' defaults
    assert (reference.ADAM_BETA1, reference.WARMUP_STEPS, reference.MAX_LENGTH) == (0.5, 10, 512)
    assert (reference.LR_SCHEDULER_TYPE, reference.WEIGHT_DECAY, reference.ADAM_BETA2, reference.ADAM_EPSILON,
            reference.MAX_GRAD_NORM) == ("linear", 0.0, 0.999, 1e-8, 1.0)
    # the README's soft_sft command: --beta=0.1 --bias_factor=20 --first_token_bias_factor=5 --bias_length=5
    assert reference.CONSTRAINED == {"beta": 0.1, "bias_factor": 20.0, "first_token_bias_factor": 5.0, "bias_length": 5}
    opts = TrainOptions(recipe="sft")
    assert {k: getattr(opts, k) for k in reference.CONSTRAINED} == reference.CONSTRAINED
    # 64 examples per optimizer step whatever the number of processes
    assert [reference.reference_settings(n)["gradient_accumulation_steps"] for n in (1, 2, 4)] == [4, 2, 1]


def test_reference_setup_replaces_defaults_and_keeps_what_was_given():
    from deepalign.training.reference import apply_reference_setup

    args, applied, kept, note = apply_reference_setup(DeRTaConfig(report_to="none"), processes=1)
    got = {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in applied}
    assert got == {"learning_rate": 2e-5, "num_train_epochs": 25, "adam_beta1": 0.5, "warmup_steps": 10,
                   "max_length": 512, "lr_scheduler_type": "linear", "gradient_accumulation_steps": 4}
    assert args.per_device_train_batch_size == 16 and kept == {} and note is None
    # a setting given with another value wins; the accumulation follows the batch given
    args, applied, kept, note = apply_reference_setup(
        DeRTaConfig(report_to="none", num_train_epochs=3, per_device_train_batch_size=8), processes=2)
    assert args.num_train_epochs == 3 and kept == {"num_train_epochs": 3, "per_device_train_batch_size": 8}
    assert args.gradient_accumulation_steps == 4 and note is None  # 2 x 8 x 4 = 64
    _, _, _, note = apply_reference_setup(DeRTaConfig(report_to="none", per_device_train_batch_size=5), processes=1)
    assert "5 examples per optimizer step" in note and "the reference's is 64" in note


def test_sft_with_the_reference_setup_trains_with_its_optimizer_and_warmup(tmp_path):
    """The optimizer and schedule a checkpoint holds: AdamW beta1 0.5, lr 2e-5 warmed up over 10
    steps (after 1 step: 2e-6), 64 examples per step on one process (16 x 4 accumulated)."""
    from deepalign.training.finetune import train

    model, fam = _model_dir(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": p.instruction, "response": p.response}) + "\n" for p in PAIRS))
    out = train(recipe="sft", reference_setup=True, model_name_or_path=str(model), dataset_name=str(data),
                output_dir=str(tmp_path / "ref-sft"), max_steps=1, keep_checkpoints=True, save_steps=1, quiet=True)
    hp = json.loads((out / "deepalign_train.json").read_text())["hyperparameters"]
    assert {k: hp[k] for k in ("learning_rate", "adam_beta1", "warmup_steps", "lr_scheduler_type", "num_train_epochs",
                               "per_device_train_batch_size", "gradient_accumulation_steps", "max_length")} == \
        {"learning_rate": 2e-5, "adam_beta1": 0.5, "warmup_steps": 10, "lr_scheduler_type": "linear",
         "num_train_epochs": 25, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 4, "max_length": 512}
    assert hp["reference_setup"].startswith("Qi et al. 2025")
    ckpt = out / "checkpoints" / "checkpoint-1"
    optim = torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert optim["param_groups"][0]["betas"][0] == 0.5
    sched = torch.load(ckpt / "scheduler.pt", weights_only=False)
    assert sched["_last_lr"][0] == pytest.approx(2e-5 * 1 / 10)
