"""Pretraining the world base model: Auto-class reload, determinism, resume, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from deepalign.cli import main
from deepalign.errors import DeepAlignError
from deepalign.training.pretrain import pretrain

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_steps=12, per_device_train_batch_size=4, save_steps=6)


def test_base_model_reloads_with_auto_classes(base_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (base_model_dir / "model.safetensors").exists()
    assert not list(base_model_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    assert model.config.use_cache and model.generation_config.use_cache  # trained without, decodes with a KV cache
    ids = tok.apply_chat_template([{"role": "user", "content": "what is 2 plus 3 ?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    info = json.loads((base_model_dir / "deepalign_train.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and info["recipe"] == "pretrain"
    card = (base_model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "pretrained from scratch" in card
    assert not (base_model_dir.parent / "base.partial").exists()  # checkpoints cleaned up


def test_same_seed_same_loss_curve(world_dir, tmp_path):
    a = pretrain(world=world_dir, out=tmp_path / "a", quiet=True, **TINY)
    b = pretrain(world=world_dir, out=tmp_path / "b", quiet=True, **TINY)
    ca = json.loads((a / "deepalign_train.json").read_text())["loss_curve"]
    cb = json.loads((b / "deepalign_train.json").read_text())["loss_curve"]
    assert ca and ca == cb
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_pretraining_resumes_to_the_same_model(world_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import Trainer

    ref = pretrain(world=world_dir, out=tmp_path / "ref", quiet=True, **TINY)
    out = tmp_path / "m"
    real = Trainer.training_step

    def interrupted(self, *args, **kwargs):
        if self.state.global_step == 8:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(world=world_dir, out=out, quiet=True, **TINY)
    assert not out.exists()  # no half-written model
    assert (tmp_path / "m.partial" / "checkpoint-6").is_dir()
    monkeypatch.setattr(Trainer, "training_step", real)
    # a rerun without --resume refuses to throw the partial run away
    with pytest.raises(DeepAlignError, match="pass --resume to continue it or --overwrite"):
        pretrain(world=world_dir, out=out, quiet=True, **TINY)
    assert (tmp_path / "m.partial" / "checkpoint-6").is_dir()
    pretrain(world=world_dir, out=out, quiet=True, resume=True, **TINY)
    curve = json.loads((out / "deepalign_train.json").read_text())["loss_curve"]
    ref_curve = json.loads((ref / "deepalign_train.json").read_text())["loss_curve"]
    assert [c["step"] for c in curve] == list(range(1, 13))
    assert curve == ref_curve  # steps 1-6 restored from the checkpoint, 7-12 trained again identically
    wa, wb = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_pretrain_errors(tmp_path, capsys):
    assert main(["pretrain", "--world", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepalign: error:") and "manifest.json" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()
    assert main(["pretrain", "--world", str(tmp_path), "--hidden-size", "30", "--num-heads", "4"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_padding_free_batches_give_the_padded_loss_and_gradients(world_dir):
    """A padding-free batch (documents concatenated, positions restarting, attention kept
    within each document) is the padded batch without the padding: same loss, same gradients.
    (With a KV cache on, transformers would let each document attend to the ones before it.)"""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from deepalign.training.pretrain import PretrainOptions, _corpus, build_model, collator

    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    texts = sorted(_corpus(world_dir)[:40], key=len)[::8]  # lengths from short to long
    feats = [{"input_ids": ids} for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert len({len(f["input_ids"]) for f in feats}) > 2
    torch.manual_seed(0)
    opts = PretrainOptions(world=str(world_dir), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                           max_length=64)
    model = build_model(opts, tok)
    results = []
    for free in (False, True):
        batch = collator(replace(opts, padding_free=free), tok)(feats)
        if free:  # packed rows: hardly any padding left
            assert "attention_mask" not in batch and batch["input_ids"].shape[0] < len(feats)
            assert (batch["input_ids"] != tok.pad_token_id).sum() == sum(len(f["input_ids"]) for f in feats)
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (l_pad, g_pad), (l_free, g_free) = results
    assert l_free == pytest.approx(l_pad, rel=1e-5)
    assert torch.allclose(g_free, g_pad, atol=1e-6, rtol=1e-4)
