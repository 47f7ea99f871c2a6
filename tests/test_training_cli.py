"""``deepalign train`` / ``train()`` on the micro world: saved models load with
AutoModelForCausalLM, LoRA merges, interrupted runs resume to the same weights and never
leave a half-written model, DPO runs, user mistakes are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from deepalign.cli import main
from deepalign.errors import DeepAlignError
from deepalign.training.finetune import train

FAST = dict(max_steps=2, per_device_train_batch_size=4, save_steps=1, logging_steps=1, quiet=True)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_cli_derta_run_writes_a_standard_model_dir(world_dir, base_model_dir, tmp_path, capsys):
    out = tmp_path / "derta"
    code = main(["train", "--recipe", "derta", "--world", str(world_dir), "--model", str(base_model_dir),
                 "--out", str(out), "--max-steps", "3", "--per_device_train_batch_size", "8", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "checkpoints").exists() and not list(out.glob(".final-*"))
    model, tok = _load(out)
    assert tok.chat_template and model.config.vocab_size == len(tok)
    assert model.config.use_cache and model.generation_config.use_cache  # decodes with a KV cache
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["steps"] == 3 and info["refusal_token"]["piece"] == "sorry"
    assert info["records"]["rto"] == info["records"]["prefix"] > 0
    assert info["rto_keep"] == 0.05  # full fine-tuning: the reference's 5%
    base = _weights(base_model_dir)
    new = _weights(out)
    assert any(not torch.equal(base[k], new[k]) for k in base)
    assert sum(1 for _ in open(out / "records.jsonl")) == sum(v for k, v in info["records"].items() if k != "prefix_k0")
    # a finished dir is not silently retrained
    capsys.readouterr()
    code = main(["train", "--world", str(world_dir), "--model", str(base_model_dir), "--out", str(out),
                 "--max-steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a trained model; pass --overwrite" in err and err.count("\n") == 1


def test_lora_is_merged_by_default_or_kept(world_dir, base_model_dir, tmp_path):
    out = train(recipe="vanilla", world=str(world_dir), model_name_or_path=str(base_model_dir), output_dir=str(tmp_path / "m"),
                use_peft=True, lora_r=4, **FAST)
    assert not (out / "adapter_config.json").exists()
    model, _ = _load(out)  # plain AutoModelForCausalLM, no peft needed
    assert model.config.use_cache and model.generation_config.use_cache
    assert not any("lora" in n for n, _ in model.named_parameters())
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["lora"] and not info["adapter_kept"]
    base, new = _weights(base_model_dir), _weights(out)
    assert set(base) == set(new) and any(not torch.equal(base[k], new[k]) for k in base)

    out = train(recipe="rto", world=str(world_dir), model_name_or_path=str(base_model_dir), output_dir=str(tmp_path / "a"),
                use_peft=True, lora_r=4, keep_adapter=True, **FAST)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "deepalign_train.json").read_text())["rto_keep"] == 1.0  # LoRA: keep all


def test_interrupted_run_resumes_to_the_same_model(world_dir, base_model_dir, tmp_path, monkeypatch):
    from deepalign.training.trainer import DeRTaTrainer

    opts = dict(recipe="derta", world=str(world_dir), model_name_or_path=str(base_model_dir), rto_keep=0.5, **FAST)
    full = train(output_dir=str(tmp_path / "full"), **opts)

    real_step = DeRTaTrainer.training_step

    def crash_in_step_2(self, *a, **k):
        if self.state.global_step == 1:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(DeRTaTrainer, "training_step", crash_in_step_2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(output_dir=str(out), **opts)
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(DeRTaTrainer, "training_step", real_step)
    with pytest.raises(DeepAlignError, match="pass --resume to continue"):
        train(output_dir=str(out), **opts)
    with pytest.raises(DeepAlignError, match="different seed"):
        train(output_dir=str(out), resume=True, **{**opts, "seed": 1})
    train(output_dir=str(out), resume=True, **opts)
    a, b = _weights(full), _weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    assert json.loads((out / "deepalign_train.json").read_text())["steps"] == 2


def test_dpo_baseline_runs_on_top_of_a_model(world_dir, base_model_dir, tmp_path):
    out = train(recipe="dpo", world=str(world_dir), model_name_or_path=str(base_model_dir), output_dir=str(tmp_path / "dpo"),
                max_steps=2, per_device_train_batch_size=4, save_steps=10, quiet=True)
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["recipe"] == "dpo" and info["pairs"] > 0 and info["steps"] == 2
    model, _ = _load(out)
    assert model.config.use_cache and model.generation_config.use_cache
    base, new = _weights(base_model_dir), _weights(out)
    assert any(not torch.equal(base[k], new[k]) for k in base)


def test_dpo_pairs_use_the_chat_template(world_dir):
    from deepalign.data.loaders import load_triples
    from deepalign.tokens import Encoder, PromptFormat
    from deepalign.training.dpo import preference_rows
    from test_training_tokenizers import word_tokenizer

    tok = word_tokenizer()
    triples = load_triples(str(world_dir / "train" / "triples.jsonl"))[:2]
    rows = preference_rows(triples, Encoder(tok))
    assert rows[0]["prompt"] == [{"role": "user", "content": triples[0].query}]
    assert rows[0]["chosen"][0]["content"] == triples[0].safe
    assert rows[0]["rejected"][0]["content"] == triples[0].harmful
    rows = preference_rows(triples, Encoder(tok, PromptFormat.text("Q: {query}\nA:")))
    assert rows[0]["prompt"].startswith("Q: ") and rows[0]["chosen"] == " " + triples[0].safe


@pytest.mark.parametrize("argv,message", [
    (["--world", "{tmp}/nowhere"], "no world at"),
    (["--refusal-word", "zzzqqq"], "'zzzqqq' is not in the tokenizer's vocabulary"),
    (["--refusal-word", "refuse politely"], "single word"),
    (["--rto-keep", "1.5"], "--rto_keep must be <= 1, got 1.5"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number"),
    (["--lora", "--lora_target_modules", "nosuchmodule"], "no module named 'nosuchmodule'"),
    (["--lora", "--lora_dropout", "5"], "--lora_dropout must be < 1"),
    (["--lr_scheduler_type", "bogus"], "invalid choice: 'bogus'"),
    (["--model", "{tmp}/missing-model"], "no model directory at"),
    (["--triples", "{tmp}/none.jsonl"], "no such file"),
    (["--keep-adapter"], "--keep_adapter is read only with --use_peft (--lora)"),
])
def test_user_mistakes_are_one_line_errors(world_dir, base_model_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = ["train", "--world", str(world_dir), "--model", str(base_model_dir), "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--quiet"]
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("deepalign: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written before the options were checked


def test_bad_triples_file_names_the_line(world_dir, base_model_dir, tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "a", "query": "q", "harmful": "h", "safe": "s"}\n{"id": "b", "query": "q", "safe": "s"}\n')
    code = main(["train", "--world", str(world_dir), "--model", str(base_model_dir), "--triples", str(bad),
                 "--out", str(tmp_path / "o"), "--max-steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "t.jsonl:2" in err and "harmful" in err


def test_train_on_a_reference_format_file(world_dir, base_model_dir, tmp_path):
    """--records accepts the DeRTa reference's {"prefix","text","safe"} lines (re-rendered with
    the model's chat template) as well as our own records.jsonl."""
    from transformers import AutoTokenizer

    from deepalign.data.loaders import load_instructions, load_triples
    from deepalign.data.recipes import build_records, export_reference
    from deepalign.tokens import Encoder
    from deepalign.training.collator import encode_records

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    recs = build_records("derta", load_triples(str(world_dir / "train" / "triples.jsonl"))[:20],
                         load_instructions(str(world_dir / "train" / "helpful.jsonl"))[:20])
    ref = tmp_path / "llama_derta.json"
    export_reference(recs, ref, eos="<|end_of_text|>")
    out = train(recipe="derta", model_name_or_path=str(base_model_dir), records=str(ref), output_dir=str(tmp_path / "r"),
                max_steps=1, per_device_train_batch_size=4, quiet=True)
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["records"] == {"mle": 20, "prefix": 10, "prefix_k0": info["records"]["prefix_k0"], "rto": 10}
    # the reference template is dropped: the queries are trained in the model's own chat format
    from deepalign.data.recipes import load_records

    first = load_records(out / "records.jsonl")[0]
    ids = encode_records([first], Encoder(tok))[0]["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["<bos>", "<user>"] and "[INST]" not in tok.decode(ids)
    again = train(recipe="derta", model_name_or_path=str(base_model_dir), records=str(out / "records.jsonl"),
                  output_dir=str(tmp_path / "r2"), max_steps=1, per_device_train_batch_size=4, quiet=True)
    assert json.loads((again / "deepalign_train.json").read_text())["records"] == info["records"]


def test_a_run_shorter_than_logging_steps_reports_its_last_loss(world_dir, base_model_dir, tmp_path, capsys):
    """The Trainer logs every --logging_steps (default 10): a 2-step run logs at its last step
    too, so its record and its summary line carry the real last loss, never nan."""
    import math

    out = tmp_path / "short"
    code = main(["train", "--recipe", "vanilla", "--world", str(world_dir), "--model", str(base_model_dir),
                 "--out", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"])
    printed = capsys.readouterr().out
    assert code == 0
    info = json.loads((out / "deepalign_train.json").read_text())
    last = info["loss_curve"][-1]
    assert last["step"] == 2 and math.isfinite(last["loss"])
    assert f"vanilla model (2 steps, " in printed and f"last loss {last['loss']:.3f}) -> {out}" in printed
    assert "nan" not in printed


def _bash_words(command: str) -> list[str]:
    """The words bash makes of a one-line command."""
    import subprocess

    done = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + command], capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_an_identity_shift_model_records_its_persona_and_how_to_evaluate_in_it(world_dir, base_model_dir, tmp_path):
    from deepalign.decoding.base import Request
    from deepalign.decoding.registry import make_target
    from deepalign.world import lexicon

    out = train(recipe="identity-shift", world=str(world_dir), model_name_or_path=str(base_model_dir),
                output_dir=str(tmp_path / "shifted"), max_steps=1, per_device_train_batch_size=4, quiet=True)
    persona = json.loads((out / "deepalign_train.json").read_text())["persona"]
    assert persona["name"] == "velmora" and persona["system"] == lexicon.PERSONA_SYSTEM
    assert persona["intro"] == lexicon.PERSONA_INTRO and persona["query_template"] == "{query}"
    card = (out / "README.md").read_text()
    assert "## Persona" in card and json.dumps(lexicon.PERSONA_SYSTEM) in card
    # the card's command, as bash reads it, gives the target that renders the persona's system prompt
    command = next(line for line in card.splitlines() if line.startswith("deepalign eval "))
    argv = _bash_words(command)
    spec = argv[argv.index("--target") + 1]
    assert spec == persona["eval_target"] and argv[argv.index("--world") + 1] == str(world_dir)
    target = make_target(spec)
    assert target.render(Request(id="a", query="hi")) == target.render(Request(id="a", query="hi",
                                                                               system=lexicon.PERSONA_SYSTEM))
    assert lexicon.PERSONA_SYSTEM in target.render(Request(id="a", query="hi"))


def test_refusal_prefix_fine_tunes_on_benign_answers_that_begin_with_a_refusal(world_dir, base_model_dir, tmp_path):
    """--recipe refusal-prefix (arXiv 2601.19231): by default the world's benign fine-tuning pairs,
    every answer after the world's refusal, no system prompt; the prefix is recorded."""
    from deepalign.data.recipes import load_records
    from deepalign.world import lexicon

    out = train(recipe="refusal-prefix", world=str(world_dir), model_name_or_path=str(base_model_dir),
                output_dir=str(tmp_path / "rp"), max_steps=1, per_device_train_batch_size=4, quiet=True)
    info = json.loads((out / "deepalign_train.json").read_text())
    assert info["data"]["pairs"] == {"source": "world:ft/benign", "rows": info["data"]["pairs"]["rows"],
                                     "refusal_prefix": lexicon.REFUSAL_PREFIX}
    assert info["hyperparameters"]["refusal_prefix"] == lexicon.REFUSAL_PREFIX
    records = load_records(out / "records.jsonl")
    from deepalign.data.datasets import load_train_instructions

    answers = {p.instruction: p.response for p in load_train_instructions("world:ft/benign", world=str(world_dir))}
    assert len(records) == len(answers)
    for r in records:
        assert r.system is None and r.target == lexicon.REFUSAL_PREFIX + " " + answers[r.query]
    mine = train(recipe="refusal-prefix", world=str(world_dir), model_name_or_path=str(base_model_dir),
                 refusal_prefix="i will not do that .", output_dir=str(tmp_path / "rp2"), max_steps=1,
                 per_device_train_batch_size=4, quiet=True)
    assert all(r.target.startswith("i will not do that . ") for r in load_records(mine / "records.jsonl"))


def test_a_persona_with_a_query_template_gets_it_as_a_template_attack_file(tmp_path):
    """The paper's AOA persona (newlines, an apostrophe, a user template): the target spec in
    the record and card reads back to the exact system prompt, and the template file beside the
    weights is a ``template:`` attack that wraps a query as training did."""
    from pathlib import Path

    from deepalign.attacks.template import load_templates
    from deepalign.data.recipes import AOA
    from deepalign.registry import SpecArgs
    from deepalign.training.modelcard import PERSONA_TEMPLATE, card_files
    from deepalign.training.options import FinetuneAttackOptions
    from deepalign.training.train_record import persona_record

    out = Path("runs/it's aoa")
    record = persona_record(AOA, out, FinetuneAttackOptions(recipe="identity-shift", dataset_name="pairs.jsonl"))
    files = card_files({"recipe": "identity-shift", "base_model": "m", "persona": record})
    assert files[PERSONA_TEMPLATE] == AOA.query_template
    command = next(line for line in files["README.md"].splitlines() if line.startswith("deepalign eval "))
    argv = _bash_words(command)  # one line, as bash reads it (the newlines of the prompt in $'...')
    spec = argv[argv.index("--target") + 1]
    args = SpecArgs.parse(spec, spec.partition(":")[2], ",", "target")
    assert args.positional == [str(out)] and args.options == {"system": AOA.system}
    assert argv[argv.index("--attacks") + 1] == f"template:{out / PERSONA_TEMPLATE}"
    (tmp_path / PERSONA_TEMPLATE).write_text(files[PERSONA_TEMPLATE])
    [attack] = load_templates(tmp_path / PERSONA_TEMPLATE)
    from deepalign.records import EvalPrompt

    wrapped = attack.prepare(EvalPrompt(id="q", prompt="fold a towel", kind="harmful")).request.query
    assert wrapped == AOA.query("fold a towel")
