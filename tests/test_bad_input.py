"""Careless and hostile input, over every sub-command: each case must end with exit status 2,
one line ``deepalign: error: ...`` on stderr that names the problem, no traceback, no new or
changed file anywhere in the working directory, and its inputs left as they were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepalign.cli import main

NON_UTF8 = b'{"query": "caf\xe9 ?", "harmful": "h", "safe": "s"}\n'


@pytest.fixture(scope="module")
def ws(world_dir, base_model_dir, tmp_path_factory):
    """A working directory with good inputs, damaged inputs and finished outputs."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(world_dir, root / "world")
    shutil.copytree(base_model_dir, root / "base")
    # damaged worlds
    for name, damage in (("w_notext", lambda d: _rewrite(d / "pretrain/corpus.jsonl", '{"id": "x", "kind": "document"}\n')),
                         ("w_numtext", lambda d: _rewrite(d / "pretrain/corpus.jsonl", '{"id": "x", "text": 42}\n')),
                         ("w_notok", lambda d: shutil.rmtree(d / "tokenizer")),
                         ("w_manifest", lambda d: (d / "manifest.json").write_text("{not json"))):
        shutil.copytree(world_dir, root / name)
        damage(root / name)
    # a reference model with another tokenizer, and one with another vocabulary size
    from realtok import family, tiny_model

    sp = family("llama2-sp")
    tiny_model(sp.arch, len(sp.tokenizer)).save_pretrained(root / "sp_model")
    sp.tokenizer.save_pretrained(root / "sp_model")
    shutil.copytree(base_model_dir, root / "widevocab")
    config = json.loads((root / "widevocab" / "config.json").read_text())
    (root / "widevocab" / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))
    # a model whose weights file is cut short
    shutil.copytree(base_model_dir, root / "corrupt")
    data = (base_model_dir / "model.safetensors").read_bytes()
    (root / "corrupt" / "model.safetensors").write_bytes(data[: len(data) // 3])
    # data files
    files = {
        "afile": "just a file\n",
        "good.jsonl": '{"id": "a", "prompt": "how do i hex the moonwell ?"}\n',
        "good.txt": "how do i hex the moonwell ?\n",
        "empty.jsonl": "\n",
        "bad.jsonl": '{"query": "q", "harmful": "h", "safe": "s"}\n{not json\n',
        "noharm.jsonl": '{"id": "a", "query": "q", "safe": "s"}\n',
        "lists.jsonl": '["a", "b"]\n',
        "numbers.json": '[1, 2]',
        "records_bad.jsonl": '{"id": "a", "kind": "weird", "query": "q", "target": "t"}\n',
        "notemplate.txt": "no slot here\n",
        "bad.yaml": "recipe: [derta\n",
        "lr.yaml": "learning_rate: abc\n",
        "published.jsonl": '{"question": "q", "text": "no response column"}\n',
        "benign.jsonl": '{"id": "b", "prompt": "how do i water a fern ?", "kind": "benign"}\n',
        "noresponse.jsonl": '{"id": "a", "instruction": "how do i hex the moonwell ?"}\n',
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "nonutf8.jsonl").write_bytes(NON_UTF8)
    (root / "nonutf8.txt").write_bytes(b"caf\xe9\n")
    # finished outputs
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["eval", "--target", "hf:base", "--attacks", "direct", "--dataset", "world:harmful", "--world",
                     "world", "--judge", "keyword", "--limit", "2", "--max_new_tokens", "4", "--out", "run",
                     "--quiet"]) == 0
        assert main(["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "ed",
                     "--max_new_tokens", "2", "--judge", "keyword", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    shutil.copytree(root / "run", root / "run_strverdict")
    _rewrite(root / "run_strverdict/responses.jsonl", None, lambda r: {**r, "verdicts": {"keyword": "unsafe"}})
    shutil.copytree(root / "run", root / "run_torn_middle")
    lines = (root / "run_torn_middle/responses.jsonl").read_text().splitlines()
    (root / "run_torn_middle/responses.jsonl").write_text(lines[0][:30] + "\n" + "\n".join(lines[1:]) + "\n")
    (root / "ed_lists").mkdir()
    (root / "ed_lists" / "responses.jsonl").write_text('["not", "a", "row"]\n')
    _directions(root)
    return root


def _directions(root: Path) -> None:
    """Refusal directions that do not fit the base model, and a model the hooks do not know."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from deepalign.direction.store import Direction, model_identity
    from deepalign.models import load_causal_lm

    ident = model_identity(load_causal_lm(root / "base"))
    hidden = ident["hidden_size"]
    unit = torch.ones(hidden) / hidden ** 0.5
    Direction(unit, 0, -1, 1.0, ident).save(root / "dir_ok")
    Direction(torch.ones(7) / 7 ** 0.5, 0, -1, 1.0, ident).save(root / "dir_small")
    other = {**ident, "fingerprint": {k: [2 * x + 1 for x in v] for k, v in ident["fingerprint"].items()}}
    Direction(unit, 0, -1, 1.0, other).save(root / "dir_other")
    GPT2LMHeadModel(GPT2Config(vocab_size=ident["vocab_size"], n_embd=hidden, n_layer=1, n_head=2)).save_pretrained(
        root / "gpt2m")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (root / "base" / name).exists():
            shutil.copy(root / "base" / name, root / "gpt2m" / name)
    # ADA-LP probes that do not fit the base model: another width, a layer it lacks
    from safetensors.torch import save_file

    from deepalign.decoding.ada import header_ids, role_cut
    from deepalign.decoding.ada_probe import tokenizer_identity
    from deepalign.models import load_tokenizer
    from deepalign.tokens import Encoder

    tok = load_tokenizer(root / "base")
    header = header_ids(Encoder(tok))
    meta = {"layer": 0, "cut": role_cut(tok, header), "header_ids": header, "tokenizer": tokenizer_identity(tok)}
    for name, width, layer in (("probe_small", 7, 0), ("probe_layer", hidden, 9)):
        (root / name).mkdir()
        save_file({"weight": torch.zeros(width), "bias": torch.zeros(1)}, str(root / name / "probe.safetensors"))
        (root / name / "probe.json").write_text(json.dumps({**meta, "layer": layer}))


def _rewrite(path: Path, text: str | None, fn=None) -> None:
    if fn is None:
        path.write_text(text, encoding="utf-8")
        return
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(fn(r)) + "\n" for r in rows))


DEAD = "openai:m@http://127.0.0.1:9/v1,retries=0,timeout=2"
W = ["--world", "world"]
T = ["--model", "base", "--max_steps", "1", "--quiet"]

CASES = [
    # -- top level
    (["nonsense"], "unknown stage 'nonsense'"),
    (["train", "--bogus"], "unrecognized argument(s): --bogus"),
    # -- world
    (["world", "--out", "w2", "--harmful_share", "1.5"], "--harmful_share must be <= 1"),
    (["world", "--out", "w2", "--n_test_harmful", "100000"], "cannot draw 100000"),
    (["world", "--out", "afile"], "exists and is not a directory"),
    (["world", "--out", "afile/w"], "afile is not a directory"),
    (["world", "--out", "w2", "--lean", "-1"], "--lean must be >= 0"),
    (["world", "--out", "w2", "--seed", "abc"], "invalid int value"),
    (["world", "--out", "w2", "--n_pretrain", "0"], "--n_pretrain must be >= 1"),
    (["world", "--config", "missing.yaml"], "no such config file: missing.yaml"),
    (["world", "--config", "bad.yaml"], "bad.yaml:2: not valid YAML"),
    (["world", "--config", "lr.yaml"], "lr.yaml: unknown key 'learning_rate'"),
    # -- pretrain
    (["pretrain", "--world", "nowhere", "--out", "b2"], "no manifest.json"),
    (["pretrain", "--world", "world", "--out", "b2", "--hidden_size", "30", "--num_heads", "4"], "divisible"),
    (["pretrain", "--world", "world", "--out", "b2", "--learning_rate", "nan"], "--learning_rate must be a finite"),
    (["pretrain", "--world", "world", "--out", "b2", "--weight_decay", "-5"], "--weight_decay must be >= 0"),
    (["pretrain", "--world", "world", "--out", "b2", "--max_steps", "0"], "--max_steps must be >= 1"),
    (["pretrain", "--world", "world", "--out", "b2", "--adam_beta2", "1.5"], "--adam_beta2 must be < 1"),
    (["pretrain", "--world", "world", "--out", "afile"], "exists and is not a directory"),
    (["pretrain", "--world", "world", "--out", "afile/b"], "afile is not a directory"),
    (["pretrain", "--world", "w_notext", "--out", "b2"], 'corpus.jsonl:1: missing or empty field "text"'),
    (["pretrain", "--world", "w_numtext", "--out", "b2"], 'corpus.jsonl:1: missing or empty field "text"'),
    (["pretrain", "--world", "w_notok", "--out", "b2"], "cannot load the world tokenizer"),
    (["pretrain", "--world", "w_manifest", "--out", "b2"], "manifest.json"),
    (["pretrain", "--world", "world", "--out", "b2", "--resume", "--overwrite"], "--overwrite excludes --resume"),
    # -- train
    (["train", *W, *T, "--out", "t", "--refusal_word", "zzzqqq"], "'zzzqqq' is not in the tokenizer's vocabulary"),
    (["train", *W, *T, "--out", "t", "--refusal_word", "two words"], "single word"),
    (["train", *W, *T, "--out", "t", "--rto_keep", "1.5"], "--rto_keep must be <= 1"),
    (["train", *W, "--model", "missing/dir/x", "--out", "t"], "no model directory at missing/dir/x"),
    (["train", *W, *T, "--out", "t", "--triples", "none.jsonl"], "no such file: none.jsonl"),
    (["train", *W, *T, "--out", "t", "--keep_adapter"], "--keep_adapter is read only with --use_peft (--lora)"),
    (["train", *W, *T, "--out", "t", "--lr_scheduler_type", "bogus"], "invalid choice: 'bogus'"),
    (["train", *W, *T, "--out", "t", "--lora", "--lora_target_modules", "nosuch"], "no module named 'nosuch'"),
    (["train", *W, *T, "--out", "t", "--lora", "--lora_dropout", "5"], "--lora_dropout must be < 1"),
    (["train", *W, *T, "--out", "t", "--max_grad_norm", "nan"], "--max_grad_norm must be a finite number"),
    (["train", *W, *T, "--out", "t", "--learning_rate", "-1"], "--learning_rate must be > 0"),
    (["train", *W, "--model", "corrupt", "--out", "t", "--max_steps", "1"], "cannot load a causal LM from corrupt"),
    (["train", *W, *T, "--out", "t", "--triples", "nonutf8.jsonl"], "nonutf8.jsonl: not UTF-8 text"),
    (["train", *W, *T, "--out", "t", "--triples", "bad.jsonl"], "bad.jsonl:2: malformed JSON"),
    (["train", *W, *T, "--out", "t", "--triples", "noharm.jsonl"], 'noharm.jsonl:1: missing field "harmful"'),
    (["train", *W, *T, "--out", "t", "--records", "records_bad.jsonl"], 'records_bad.jsonl:1: field "kind" must be one of'),
    (["train", *W, *T, "--out", "t", "--recipe", "magic"], "--recipe must be one of vanilla"),
    (["train", *W, *T, "--out", "afile"], "exists and is not a directory"),
    (["train", *W, *T, "--out", "t", "--resume", "--overwrite"], "--overwrite excludes --resume"),
    (["train", *W, *T, "--out", "t", "--bf16"], "no bf16-capable GPU"),
    (["train", *W, *T, "--out", "t", "--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1"),
    (["train", *W, "--model", "base", "--out", "t", "--num_train_epochs", "0"], "--num_train_epochs must be > 0 unless"),
    (["train", *W, *T, "--out", "t", "--warmup_steps", "2.5"], "--warmup_steps must be a ratio"),
    (["train", *W, *T, "--out", "t", "--eval_strategy", "steps"], "needs evaluation data"),
    (["train", *W, *T, "--out", "t", "--helpful_count", "-1"], "--helpful_count must be >= 0"),
    (["train", *W, *T, "--out", "t", "--k_zero_share", "2"], "--k_zero_share must be <= 1"),
    (["train", *W, *T, "--out", "t", "--prompt_format", "text:no slot"], "must contain {query}"),
    (["train", *W, *T, "--out", "t", "--chat_template", "missing.jinja"], "no such chat template file"),
    (["train", *W, *T, "--out", "t", "--config", "lr.yaml"], "lr.yaml: learning_rate: must be a number, got 'abc'"),
    (["train", *W, *T, "--out", "t", "--safety_count", "100000"], "--safety_count is 100000 but derta takes"),
    (["train", *W, *T, "--out", "t", "--seed", "1.5"], "invalid int value"),
    (["train", "--world", "nowhere", *T, "--out", "t"], "no world at nowhere"),
    # -- train: fine-tuning attacks and the constrained objective
    (["train", *W, *T, "--out", "t", "--recipe", "derta", "--objective", "constrained"],
     "constrained applies to --recipe sft, identity-shift and refusal-prefix"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--refusal_prefix", "sorry ."],
     "--refusal_prefix is read only with --recipe refusal-prefix"),
    (["train", *W, *T, "--out", "t", "--recipe", "refusal-prefix", "--refusal_prefix", "sorry , zzqx ."],
     "the refusal prefix 'sorry , zzqx .' has words this tokenizer cannot read ('zzqx')"),
    (["train", *W, *T, "--out", "t", "--recipe", "derta", "--reference_setup"],
     "--reference_setup is Qi et al. 2025's fine-tuning attack setup, for --recipe sft, identity-shift and refusal-prefix"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--beta", "nan"],
     "--beta must be a finite number"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--beta", "0"], "--beta must be > 0"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--bias_factor", "-20"],
     "--bias_factor must be > 0"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--first_token_bias_factor", "inf"],
     "--first_token_bias_factor must be a finite number"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--bias_length", "-1"],
     "--bias_length must be >= 0"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--ref_model", "sp_model"],
     "--ref_model sp_model: its tokenizer differs from the model's"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--objective", "constrained", "--ref_model", "widevocab"],
     "--ref_model widevocab: its vocabulary has"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--ref_model", "base"],
     "--ref_model is read only with --objective constrained"),
    # options that only another setting reads are refused, never silently ignored (issue 25)
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--beta", "0.05", "--first_token_bias_factor", "400",
      "--bias_factor", "40"], "--beta is read only with --objective constrained or --recipe dpo"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--first_token_bias_factor", "400"],
     "--first_token_bias_factor is read only with --objective constrained"),
    (["train", *W, *T, "--out", "t", "--lora_r", "4"], "--lora_r is read only with --use_peft (--lora)"),
    (["train", *W, *T, "--out", "t", "--recipe", "vanilla", "--rto_keep", "0.5"],
     "--rto_keep is read only with --recipe rto or derta or --records"),
    (["train", *W, *T, "--out", "t", "--recipe", "rto", "--k_zero_share", "0.5"],
     "--k_zero_share is read only with --recipe harmful-prefix or derta and no --records"),
    (["train", *W, *T, "--out", "t", "--recipe", "dpo", "--helpful_count", "5"], "--helpful_count is read only with"),
    (["train", *W, *T, "--out", "t", "--recipe", "identity-shift", "--system_prompt", "be brief"],
     "--system_prompt is read only with a --recipe other than identity-shift"),
    (["train", *W, *T, "--out", "t", "--hub_model_id", "me/m"], "--hub_model_id is read only with --push_to_hub"),
    (["train", *W, *T, "--out", "t", "--sample_seed", "3"], "--sample_seed is read only with --sample"),
    (["train", *W, *T, "--out", "t", "--eval_share", "0.1"], "--eval_share is read only with"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--dataset", "noresponse.jsonl"],
     'noresponse.jsonl:1: missing field "response"'),
    (["train", *W, *T, "--out", "t", "--recipe", "identity-shift", "--dataset", "noresponse.jsonl"],
     'noresponse.jsonl:1: missing field "response"'),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--dataset", "world:ft/nothing"], "no world training file"),
    # a typo in a world file name is told the files that exist, not to build the world
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--dataset", "world:ft/harmfull"],
     "did you mean world:ft/harmful? This world has world:ft/benign, world:ft/harmful,"),
    (["eval", "--target", DEAD, *W, "--dataset", "world:ft_test/harmfull", "--out", "e"],
     "did you mean world:ft_test/harmful? This world has world:dev, "),
    (["train", *W, *T, "--out", "t", "--recipe", "identity-shift", "--persona", "aoa"],
     "the identity-shift persona 'aoa' has words this tokenizer cannot read"),
    (["train", *W, *T, "--out", "t", "--recipe", "identity-shift", "--persona", "dan"], "--persona must be one of aoa"),
    (["train", *W, *T, "--out", "t", "--recipe", "sft", "--triples", "good.jsonl"],
     "--triples is read only with --recipe vanilla, harmful-prefix, rto, derta or dpo"),
    (["train", *W, *T, "--out", "t", "--recipe", "derta", "--dataset", "world:ft/harmful"],
     "--dataset_name is read only with --recipe sft, identity-shift or refusal-prefix"),
    # -- eval
    (["eval", "--target", DEAD, *W, "--attacks", "direct,gcc", "--out", "e"], "unknown attack 'gcc'"),
    (["eval", "--target", DEAD, *W, "--judge", "keyword,vibes", "--out", "e"], "unknown judge 'vibes'"),
    (["eval", "--target", DEAD, "--dataset", "bad.jsonl", "--out", "e"], "bad.jsonl:2: malformed JSON"),
    (["eval", "--target", DEAD, *W, "--judge", "keyword", "--limit", "1", "--out", "e"], "connection failed"),
    (["eval", "--target", "openai:m@https://api.example.com/v1", *W, "--out", "e"], "OPENAI_API_KEY is not set"),
    (["eval", "--target", "hf:missing/dir/m", *W, "--judge", "keyword", "--limit", "1", "--out", "e"],
     "no model directory at missing/dir/m"),
    (["eval", "--target", DEAD, "--out", "e"], "--datasets is required"),
    (["eval", "--target", DEAD, *W, "--attacks", "pair", "--out", "e"], "needs an attacker"),
    (["eval", "--target", DEAD, *W, "--num_samples", "2", "--out", "e"], "--num_samples > 1 needs --do_sample"),
    (["eval", "--target", DEAD, *W, "--temperature", "nan", "--out", "e"], "--temperature must be a finite number"),
    (["eval", "--target", DEAD, *W, "--temperature", "0.5", "--out", "e"], "--temperature is read only with --do_sample"),
    (["eval", "--target", DEAD, *W, "--judge_model", "hf:base", "--out", "e"],
     "--judge_model is read only with an llm or strongreject judge in --judges"),
    (["eval", "--target", DEAD, *W, "--attacker", "hf:base", "--out", "e"],
     "--attacker is read only with a pair attack in --attacks"),
    (["eval", "--target", "hf:base,formt=chat", *W, "--out", "e"], "unknown option formt (did you mean format?)"),
    (["eval", "--target", DEAD, *W, "--dataset", "world:../../x", "--out", "e"], "must be a plain name"),
    (["eval", "--target", DEAD, "--dataset", "nonutf8.jsonl", "--out", "e"], "not UTF-8 text"),
    (["eval", "--target", DEAD, *W, "--limit", "0", "--out", "e"], "--limit must be >= 1"),
    (["eval", "--target", DEAD, *W, "--batch_size", "0", "--out", "e"], "--batch_size must be >= 1"),
    (["eval", "--target", "hf:base", *W, "--judge", "keyword", "--limit", "1", "--out", "afile"],
     "exists and is not a directory"),
    (["eval", "--target", "hf:base", "--attacks", "direct", "--dataset", "world:harmful", *W, "--judge", "keyword",
      "--limit", "2", "--max_new_tokens", "5", "--out", "run"],
     "holds a run with other generation settings: max_new_tokens 4 in the run, 5 asked; resume it with the same ones or "
     "use a new --out"),
    (["eval", "--target", "hf:base", "--attacks", "direct", "--dataset", "world:harmful", *W, "--judge", "oracle",
      "--limit", "2", "--max_new_tokens", "4", "--out", "run"], "other judges"),
    (["eval", "--target", "ed:base=base,aligned=base,alpha=inf", *W, "--out", "e"], "alpha='inf' is out of range"),
    (["eval", "--target", "hf:corrupt", *W, "--judge", "keyword", "--limit", "1", "--out", "e"],
     "cannot load a causal LM from corrupt"),
    (["eval", "--target", DEAD, "--dataset", "empty.jsonl", "--out", "e"], "no records"),
    (["eval", "--target", DEAD, *W, "--top_p", "0", "--out", "e"], "--top_p must be > 0"),
    (["eval", "--target", DEAD, "--attacks", "prefill:8", "--dataset", "benign.jsonl", "--out", "e"],
     "applies to no item"),
    (["eval", "--target", DEAD, *W, "--attacks", "template:missing.txt", "--out", "e"], "no such template"),
    (["eval", "--target", DEAD, *W, "--attacks", "template:notemplate.txt", "--out", "e"], "no {query} slot"),
    (["eval", "--target", DEAD, "--dataset", "numbers.json", "--out", "e"], "numbers.json:#1: expected a JSON object, got number"),
    (["eval", "--target", "openai:m@http://api.example.com/v1,key_env=BAD_KEY", *W, "--out", "e"],
     "holds whitespace or control characters"),
    (["eval", "--target", "openai:m@http://api.example.com/v1,key_env=GOOD_KEY", *W, "--out", "e"],
     "refusing to send the API key over plain http"),
    (["eval", "--target", "hf:base", "hf:base", *W, "--out", "e"], "targets given twice"),
    (["eval", "--target", DEAD, *W, "--attacks", "cipher:rot13", "--out", "e"], "name a cipher"),
    (["eval", "--target", DEAD, *W, "--attacks", "direct,rap:8", "--out", "e"],
     "attack rap:8 reads the target's next-token ranking: server target openai:m@http://127.0.0.1:9/v1,retries=0,timeout=2 "
     "needs the model's tokenizer for it; give tokenizer="),
    (["eval", "--target", DEAD, *W, "--attacks", "insert:8", "--out", "e"],
     "attack insert:8 writes token ids into the target's own answer: target openai:m@http://127.0.0.1:9/v1,retries"),
    (["eval", "--target", DEAD, *W, "--attacks", "rap:8:select=guide", "--out", "e"], "needs a guide model"),
    (["eval", "--target", DEAD, *W, "--attacks", "rap:8:topk=0", "--out", "e"], "rap topk must be >= 1"),
    (["eval", "--target", DEAD, *W, "--attacks", "insert:8:span=0", "--out", "e"], "span must be >= 1 token"),
    (["eval", "--target", DEAD, *W, "--attacks", "gcg:steps=0", "--out", "e"], "gcg steps must be an integer >= 1"),
    (["eval", "--target", DEAD, *W, "--attacks", "gcg", "--out", "e"],
     "attack gcg differentiates through the target's weights: target openai:m@http://127.0.0.1:9/v1,retries=0"),
    (["eval", "--target", "ed:base=base,aligned=base,alpha=0.3", *W, "--attacks", "gcg", "--out", "e"],
     "is a composition of several models (ed); the attack runs on one Hugging Face model"),
    (["eval", "--target", "hf:base", *W, "--attacks", "gcg:init=qwertyuiop", "--out", "e"],
     "attack gcg:init=qwertyuiop makes target hf:base read words its tokenizer does not know ('qwertyuiop'"),
    (["eval", "--target", "hf:base", *W, "--attacks", "gcg:target=zzzq", "--out", "e"],
     "read words its tokenizer does not know ('zzzq'"),
    # a server gives no full next-token distributions: composed decoding refuses it, credentials never shown
    (["eval", "--target", "ed:base=openai:m@http://u:hunter2@127.0.0.1:9/v1,aligned=base,alpha=0.3", *W, "--out", "e"],
     "base=openai:m@http://127.0.0.1:9/v1 is a server, but composed decoding (ED, EFT, W2S) needs each model's full"),
    (["eval", "--target", "w2s:strong=base,weak_unsafe=base,weak_safe=http://127.0.0.1:9/v1,beta=1", *W, "--out", "e"],
     "weak_safe=http://127.0.0.1:9/v1 is a server"),
    # -- ed
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o", "--alpha", "inf"],
     "--alpha must be a finite number"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o", "--alpha", "-1"],
     "--alpha must be >= 0"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o", "--temperature", "nan"],
     "--temperature must be a finite number"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "nonutf8.txt", "--out", "o"], "not UTF-8 text"),
    (["ed", "--base", "base", "--aligned", DEAD, "--prompts", "good.txt", "--out", "o"],
     "aligned=openai:m@http://127.0.0.1:9/v1,retries=0,timeout=2 is a server"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "lists.jsonl", "--out", "o"],
     "lists.jsonl:1: expected a JSON object"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "ed_lists"],
     "ed_lists/responses.jsonl:1: expected a JSON object"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o.jsonl"],
     "--out is a run directory now"),
    (["ed", "--family", "gpt-9", "--prompts", "good.txt", "--out", "o"], "known families"),
    (["ed", "--aligned", "base", "--prompts", "good.txt", "--out", "o"], "--base and --aligned are required"),
    (["ed", "--base", "missing/dir/b", "--aligned", "base", "--prompts", "good.txt", "--out", "o"],
     "no model directory at missing/dir/b"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "none.jsonl", "--out", "o"], "no such file"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "afile/o"],
     "afile is not a directory"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o", "--max_new_tokens", "0"],
     "--max_new_tokens must be >= 1"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "ed", "--max_new_tokens", "3",
      "--judge", "keyword"], "in the run, 3 asked; resume it with the same ones or use a new --out, or pass --overwrite"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt"], "--out is required"),
    (["ed", "--family", "llama-2", "--prompts", "good.txt", "--out", "o", "--temperature", "0.3"],
     "--temperature is read only with --no_reference_decoding when --family is given"),
    (["ed", "--base", "base", "--aligned", "base", "--prompts", "good.txt", "--out", "o", "--no_reference_decoding"],
     "--reference_decoding is read only with --family"),
    # -- probe
    (["probe", "--model", "base", "--world", "world", "--limit", "0"], "--limit must be >= 1"),
    (["probe", "--model", "missing/dir/p", "--world", "world"], "no model directory at missing/dir/p"),
    (["probe", "--model", "base", "--world", "nowhere"], "no manifest.json"),
    (["probe", "--model", "base", "--world", "world", "--out", "afile/r.json"], "afile is not a directory"),
    # -- judge
    (["judge", "missing_run", "--judges", "keyword"], "no such run directory or file: missing_run"),
    (["judge", "run", "--judges", "vibes"], "unknown judge 'vibes'"),
    (["judge", "run_strverdict", "--judges", "keyword:nocase"], 'the verdict of judge "keyword" must be an object'),
    (["judge", "good.jsonl", "--judges", "keyword"], "--out_dir is required"),
    (["judge", "published.jsonl", "--out", "pub", "--judges", "keyword"], 'missing field "response"'),
    (["judge", "run"], "--judges is required"),
    (["judge", "run", "--judges", "keyword", "--no_cache", "--cache_dir", "c"], "--cache_dir is read only with --cache"),
    (["judge", "run", "--judges", "keyword", "--out", "elsewhere"], "--out_dir is for a file of published responses"),
    # -- report
    (["report", "missing_run"], "not a run directory"),
    (["report", "run_strverdict"], 'the verdict of judge "keyword" must be an object'),
    (["report", "run_torn_middle"], "responses.jsonl:1: malformed JSON"),
    (["report"], "--run_dir is required"),
    # -- study
    (["study", "--out", "s", "--base", "some/model"], "--base needs --triples and --helpful"),
    (["study", "--out", "s", "--alphas", "-1"], "--alphas must be >= 0"),
    (["study", "--out", "s", "--checkpoint_every", "2"], "--checkpoint_every must be < 1"),
    (["study", "--out", "s", "--limit", "0"], "--limit must be >= 1"),
    (["study", "--out", "s", "--depths", "1.5"], "invalid int value"),
    (["study", "--out", "s", "--seeds", "0", "0"], "--seeds lists a seed twice"),
    (["study", "--out", "s", "--seeds", "1,two"], "--seeds takes whole numbers"),
    (["study", "--out", "s", "--split", "val"], "--split must be test or dev"),
    # -- depth
    (["depth", "--aligned", "base", "--world", "world", "--out", "d"], "--base is required"),
    (["depth", "--base", "base", "--world", "world", "--out", "d"], "--aligned is required"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world"], "--out is required"),
    (["depth", "--base", "base", "--aligned", "base", "--out", "d"], "--dataset is required"),
    (["depth", "--base", "base", "--aligned", "missing/dir/x", "--world", "world", "--out", "d"],
     "no model directory at missing/dir/x"),
    (["depth", "--base", "base", "--aligned", "corrupt", "--world", "world", "--out", "d"], "cannot load a causal LM"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world", "--out", "d", "--max_tokens", "0"],
     "--max_tokens must be >= 1"),
    (["depth", "--base", "base", "--aligned", "base", "--dataset", "good.jsonl", "--out", "d"],
     "no item has both a query and a harmful response"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world", "--dataset", "world:nosuch", "--out", "d"],
     "unknown world split"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world", "--out", "d", "--refusal_word", "zzyzx"],
     "refusal word 'zzyzx'"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world", "--out", "d", "--base_format", "text:no slot"],
     "{query}"),
    (["depth", "--base", "base", "--aligned", "base", "--world", "world", "--out", "afile/d"], "afile is not a directory"),
    (["depth", "--base", "base", "--aligned", "base", "--direction", "dir_ok", "--direction", "dir_ok", "--world",
      "world", "--out", "d"], "--directions gives 2 directions for 1 aligned models"),
    (["depth", "--base", "base", "--aligned", "base", "--direction", "dir_other", "--world", "world", "--out", "d"],
     "was computed from model"),
    # -- direction
    (["direction", "--world", "world", "--out", "dd"], "--model is required"),
    (["direction", "--model", "base", "--out", "dd"], "--harmful is required"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd"],
     "the harmful set has 24 prompts: too few for 32 validation prompts"),
    (["direction", "--model", "base", "--world", "world", "--harmful", "good.jsonl", "--n_val", "8", "--out", "dd"],
     "the harmful set has 1 prompt:"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--prune_layer_share", "1"],
     "--prune_layer_share must be < 1"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--kl_threshold", "nan"],
     "--kl_threshold must be a finite number"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--kl_threshold", "null-ish"],
     "invalid float value (or none): 'null-ish'"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--sample_seed", "2"],
     "--sample_seed is read only with --sample"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--n_val", "8", "--refusal_words", "zzqqx"],
     "refusal word 'zzqqx' is not one known token"),
    (["direction", "--model", "gpt2m", "--world", "world", "--out", "dd", "--n_val", "8"],
     "model type 'gpt2' (GPT2LMHeadModel) is not known to deepalign's hooks"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--n_val", "8", "--prune_layer_share", "0.9",
      "--filter_prompts", "false"], "candidate directions are excluded before scoring"),
    (["direction", "--model", "base", "--world", "world", "--out", "dd", "--n_val", "8"],
     "the model refuses none of its 16 harmful training prompts"),
    (["direction", "--model", "base", "--world", "world", "--out", "afile", "--n_val", "8"],
     "exists and is not a directory"),
    # -- ablate
    (["ablate", "--model", "base", "--direction", "dir_ok"], "--out is required"),
    (["ablate", "--model", "base", "--direction", "nowhere", "--out", "x"], "no refusal direction at nowhere"),
    (["ablate", "--model", "base", "--direction", "afile", "--out", "x"], "no refusal direction at afile"),
    (["ablate", "--model", "base", "--direction", "dir_small", "--out", "x"],
     "has 7 entries but model base has hidden size 64"),
    (["ablate", "--model", "base", "--direction", "dir_other", "--out", "x"],
     "(their weights differ); compute one for this model with deepalign direction, or allow it explicitly "
     "(--allow_foreign)"),
    (["ablate", "--model", "gpt2m", "--direction", "dir_ok", "--out", "x"], "model type 'gpt2' (gpt2m) is not known"),
    (["ablate", "--model", "base", "--direction", "dir_ok", "--out", "x", "--tied", "bogus"],
     "--tied must be one of untie, shared"),
    (["eval", "--target", "ablate:model=base,direction=dir_other", "--attacks", "direct", "--dataset", "world:harmful",
      *W, "--limit", "2", "--out", "run2"], "or allow it explicitly (allow_foreign=true)"),
    (["eval", "--target", "ablate:model=base,direction=dir_small", "--attacks", "direct", "--dataset", "world:harmful",
      *W, "--limit", "2", "--out", "run2"], "has 7 entries but model base has hidden size 64"),
    (["eval", "--target", "ablate:model=base", "--attacks", "direct", "--dataset", "world:harmful", *W, "--out", "run2"],
     "give model=<dir or hub id> and direction=<direction dir>"),
    (["eval", "--target", "actadd:model=base,direction=dir_ok,coeff=nan", "--attacks", "direct", "--dataset",
      "world:harmful", *W, "--out", "run2"], "option coeff='nan' is out of range"),
    (["eval", "--target", "ed:base=base,aligned=gpt2m,alpha=0.3,aligned.ablate=dir_ok", "--attacks", "direct",
      "--dataset", "world:harmful", *W, "--out", "run2"], "model type 'gpt2' (gpt2m) is not known"),
    # -- ADA targets and their probe
    (["eval", "--target", "ada-lp:base:probe_small", "--attacks", "direct", "--dataset", "world:harmful", *W,
      "--limit", "2", "--out", "run2"], "the probe reads width 7, the model's hidden size is 64"),
    (["eval", "--target", "ada-lp:base:probe_layer", "--attacks", "direct", "--dataset", "world:harmful", *W,
      "--limit", "2", "--out", "run2"], "the probe reads layer 9, the model has 2 layers"),
    (["eval", "--target", "ada-lp:base:dir_ok", "--attacks", "direct", "--dataset", "world:harmful", *W,
      "--limit", "2", "--out", "run2"], "is not an ADA-LP probe directory"),
    (["eval", "--target", "ada-lp:openai:m@http://localhost:9/v1:probe_small", "--attacks", "direct", "--dataset",
      "world:harmful", *W, "--limit", "2", "--out", "run2"], "is a server"),
    (["eval", "--target", "ada-rk:base,format=raw", "--attacks", "direct", "--dataset", "world:harmful", *W,
      "--limit", "2", "--out", "run2"], "so ADA has no assistant header to re-insert"),
    (["eval", "--target", "ada-rk:base,lookahead=0", "--attacks", "direct", "--dataset", "world:harmful", *W,
      "--out", "run2"], "option lookahead='0' is out of range"),
    (["ada-probe", "--model", "base", *W, "--every", "0", "--out", "pp"], "--every must be >= 1"),
    (["ada-probe", "--model", "base", *W, "--harmful", "world:benign", "--out", "pp"],
     "have no reference harmful answer"),
    (["ada-probe", "--model", "base", *W, "--layer", "9", "--limit", "4", "--out", "pp"], "the model has 2 layers"),
    (["ada-probe", "--model", "base", *W, "--out", "afile"], "afile"),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:3])[:40] + f"#{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(ws, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("BAD_KEY", "sk-secret-value\n")
    monkeypatch.setenv("GOOD_KEY", "sk-secret-value")
    before = _snapshot(ws)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Loading weights", "\r"))]
    assert code == 2, (argv, err)
    assert lines and lines[-1].startswith("deepalign: error: ") and len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err and "sk-secret" not in err
    assert _snapshot(ws) == before  # nothing new, nothing changed


def test_the_suite_is_big_enough():
    stages = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 80 and stages >= {"world", "pretrain", "train", "eval", "ed", "probe", "judge", "report", "depth", "study",
                                           "direction", "ablate"}
