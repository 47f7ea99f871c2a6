"""One configuration path: ``--config FILE.yaml`` for every stage, flags override the file,
bad values are one line naming ``file: key`` (or the flag) with exit status 2, and the
shipped examples run as written (at tiny size, through flag overrides)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepalign.cli import STAGES, main, stage_module
from deepalign.cli.parser import StageParser
from deepalign.training.finetune import TrainOptions
from deepalign.training.trainer import DeRTaConfig

EXAMPLES = Path(__file__).parent.parent / "examples"


def parse(tmp_path, yaml_text: str | None, *argv: str):
    parser = StageParser("train", (TrainOptions, DeRTaConfig))
    if yaml_text is not None:
        cfg = tmp_path / "train.yaml"
        cfg.write_text(yaml_text, encoding="utf-8")
        argv = ("--config", str(cfg), *argv)
    return parser.parse(list(argv))


def test_file_sets_options_and_flags_override_it(tmp_path):
    opts, args = parse(tmp_path, "recipe: vanilla\nlearning_rate: 3.0e-4\nmodel: m1\nlora: true\n"
                                 "lora_target_modules: [q_proj, v_proj]\nnum_train_epochs: 1\n")
    assert (opts.recipe, args.learning_rate, opts.model_name_or_path, opts.use_peft) == ("vanilla", 3e-4, "m1", True)
    assert opts.lora_target_modules == ["q_proj", "v_proj"] and args.num_train_epochs == 1
    # a flag beats the file; dashes and underscores both work; aliases too
    opts, args = parse(tmp_path, "recipe: vanilla\nlearning_rate: 3.0e-4\nlora_target_modules: [q_proj]\n",
                       "--learning-rate", "1e-3", "--recipe", "rto", "--lora_target_modules", "o_proj")
    assert (opts.recipe, args.learning_rate, opts.lora_target_modules) == ("rto", 1e-3, ["o_proj"])
    # untouched options keep their one default
    assert args.lr_scheduler_type.value == "cosine" and args.per_device_train_batch_size == 16
    # HF-owned Trainer settings pass straight through, from the file or a flag
    opts, args = parse(tmp_path, "report_to: tensorboard\neval_strategy: steps\nbf16: false\n", "--push_to_hub",
                       "--hub_model_id", "me/model")
    assert args.report_to == ["tensorboard"] and args.eval_strategy.value == "steps"
    assert args.push_to_hub and args.hub_model_id == "me/model"


def test_list_flags_add_up_when_repeated(tmp_path):
    from deepalign.decoding.base import GenConfig
    from deepalign.evaluation.runner import EvalOptions

    parser = StageParser("eval", (EvalOptions, GenConfig))
    cfg = tmp_path / "e.yaml"
    cfg.write_text("targets: [hf:a, hf:b]\nout: runs/x\n", encoding="utf-8")
    opts, _ = parser.parse(["--config", str(cfg)])
    assert opts.targets == ["hf:a", "hf:b"]
    opts, _ = StageParser("eval", (EvalOptions, GenConfig)).parse(["--config", str(cfg), "--target", "hf:c",
                                                                   "--target", "hf:d", "hf:e"])
    assert opts.targets == ["hf:c", "hf:d", "hf:e"]  # the flag replaces the file's list, repeats add up


@pytest.mark.parametrize("yaml_text, message", [
    ("learning_rate: -1\n", "train.yaml: learning_rate: must be > 0, got -1"),
    ("learning_rate: .nan\n", "train.yaml: learning_rate: must be a finite number"),
    ("max_steps: abc\n", "train.yaml: max_steps: must be an integer, got 'abc'"),
    ("max_steps: 2.5\n", "train.yaml: max_steps: must be an integer, got 2.5"),
    ("use_peft: maybe\n", "train.yaml: use_peft: must be true or false, got 'maybe'"),
    ("lr_scheduler_type: bogus\n", "train.yaml: lr_scheduler_type: must be one of"),
    ("recipe: [a, b]\n", "train.yaml: recipe: expected a single value"),
    ("rto_keep: 2\n", "train.yaml: rto_keep: must be <= 1, got 2"),
    ("recipe: magic\n", "train.yaml: recipe: must be one of vanilla, harmful-prefix, rto, derta, dpo"),
    ("learing_rate: 1.0e-4\n", "train.yaml: unknown key 'learing_rate' (did you mean learning_rate"),
    ("- a\n- b\n", "train.yaml: a config file holds a mapping"),
    ("recipe: [derta\n", "train.yaml:2: not valid YAML"),
    ("resume: true\noverwrite: true\n", "train.yaml: overwrite: excludes --resume"),
])
def test_bad_config_values_are_one_line_naming_file_and_key(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml_text, encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepalign: error: ") and err.count("\n") == 1, err
    assert message in err.replace(str(tmp_path) + "/", ""), err
    assert not (tmp_path / "o").exists()


def test_a_flag_that_fixes_a_bad_file_value_wins_and_a_bad_flag_names_the_flag(tmp_path, capsys):
    parse(tmp_path, "learning_rate: -1\n", "--learning_rate", "1e-4")  # no error: the flag wins
    with pytest.raises(Exception, match="--learning_rate must be > 0, got -1"):
        parse(tmp_path, "learning_rate: 1.0e-4\n", "--learning_rate", "-1")
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_takes_a_config_file(stage, capsys):
    with pytest.raises(SystemExit):
        StageParser(stage, stage_module(stage).OPTIONS).parse(["--help"])
    assert "--config FILE.yaml" in capsys.readouterr().out


def test_config_env_sets_environment_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPALIGN_TEST_ENV", raising=False)
    parse(tmp_path, "env:\n  DEEPALIGN_TEST_ENV: on\nrecipe: rto\n")
    import os

    assert os.environ["DEEPALIGN_TEST_ENV"] == "True"  # YAML reads `on` as a boolean


@pytest.fixture()
def workspace(world_dir, base_model_dir, tmp_path, monkeypatch):
    """A working directory laid out as the examples expect: runs/world and runs/base."""
    (tmp_path / "runs").mkdir()
    shutil.copytree(world_dir, tmp_path / "runs" / "world")
    shutil.copytree(base_model_dir, tmp_path / "runs" / "base")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_examples_run_as_written_at_tiny_size(workspace, capsys):
    tiny = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--quiet"]
    assert main(["train", "--config", str(EXAMPLES / "world_derta.yaml"), *tiny]) == 0
    info = json.loads(Path("runs/derta/deepalign_train.json").read_text())
    assert info["recipe"] == "derta" and info["learning_rate"] == 2e-4 and info["steps"] == 2
    assert main(["train", "--config", str(EXAMPLES / "world_derta.yaml"), "--recipe", "vanilla", "--out",
                 "runs/vanilla", *tiny]) == 0
    # the real-model LoRA config, pointed at the world's model and data
    assert main(["train", "--config", str(EXAMPLES / "lora_derta_real.yaml"), "--model", "runs/base",
                 "--triples", "runs/world/train/triples.jsonl", "--helpful", "runs/world/train/helpful.jsonl",
                 "--dtype", "float32", "--activation_checkpointing", "false", "--out", "runs/lora", *tiny]) == 0
    info = json.loads(Path("runs/lora/deepalign_train.json").read_text())
    assert info["lora"] and info["hyperparameters"]["lora_target_modules"][0] == "q_proj"
    assert main(["eval", "--config", str(EXAMPLES / "eval_battery.yaml"), "--limit", "2", "--max_new_tokens", "4",
                 "--quiet"]) == 0
    summary = json.loads(Path("runs/eval_battery/summary.json").read_text())
    assert len(summary["targets"]) == 3 and "prefill:8:skip=24" in summary["attacks"]
    assert main(["ed", "--config", str(EXAMPLES / "ed_sweep.yaml"), "--limit", "2", "--max_new_tokens", "4",
                 "--quiet"]) == 0
    rows = [json.loads(x) for x in Path("runs/ed_sweep.jsonl").read_text().splitlines()]
    assert sorted({r["alpha"] for r in rows}) == [0.3, 1.0, 2.0] and len(rows) == 2 * 3 * 2
    assert Path("runs/ed_sweep/report.md").exists()
    assert "error" not in capsys.readouterr().err


def test_model_card_says_what_the_directory_holds(workspace):
    from deepalign import train

    out = train(recipe="derta", model_name_or_path="runs/base", world="runs/world", output_dir="runs/m",
                max_steps=2, per_device_train_batch_size=4, logging_steps=1, quiet=True)
    card = (out / "README.md").read_text()
    info = json.loads((out / "deepalign_train.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\n") and '- "derta"' in card
    assert "base_model:" not in card  # a local path is not a hub reference
    assert "fine-tuned from `runs/base` with DeRTa" in card and "deepalign 0.1.0" in card
    assert "| triples | `runs/world/train/triples.jsonl` | 120 |" in card
    assert f"RTO target: `sorry` (id {info['refusal_token']['id']})" in card
    assert "| `learning_rate` | 0.0002 |" in card and "| `max_steps` | 2 |" in card
    assert "## Training loss" in card and f"| {info['loss_curve'][-1]['step']} |" in card
    assert "deepalign train --model_name_or_path runs/base --out runs/m" in card  # --out: the output flag
    assert "## Evaluation" not in card
    from deepalign.training.modelcard import add_evaluation

    add_evaluation(out, {"description": "World held-out harmful queries.", "rows": [["prefill:8 harmful %", "0.0"]]})
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "| prefill:8 harmful % | 0.0 |" in card


def test_push_to_hub_uploads_the_final_directory_with_its_card(workspace, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, revision=None, ignore_patterns=None, commit_message=None):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["ignore"] = ignore_patterns

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["train", "--recipe", "vanilla", "--out", "runs/pushed", "--max_steps", "1", "--push_to_hub",
                 "--hub_model_id", "me/world-vanilla", "--quiet"]) == 0
    assert calls["repo"] == ("me/world-vanilla", None, True)
    assert {"README.md", "model.safetensors", "config.json", "deepalign_train.json"} <= set(calls["files"])
    assert "checkpoints/*" in calls["ignore"]


def test_rejudging_a_finished_run_adds_a_judge_and_resumes(workspace, capsys):
    from deepalign.runs.rundir import RunDir

    argv = ["eval", "--target", "hf:runs/base", "--attacks", "direct,prefill:4", "--dataset", "world:harmful",
            "--world", "runs/world", "--judge", "oracle", "--limit", "3", "--max_new_tokens", "4", "--out", "runs/e",
            "--quiet"]
    assert main(argv) == 0
    before = (Path("runs/e") / "responses.jsonl").read_bytes()
    assert main(["judge", "runs/e", "--judges", "keyword", "keyword:nocase", "--quiet"]) == 0
    assert (Path("runs/e") / "responses.jsonl").read_bytes() == before  # nothing regenerated
    rows = RunDir("runs/e").rows()
    assert all(set(r.verdicts) == {"oracle", "keyword", "keyword:nocase"} for r in rows)
    summary = json.loads(Path("runs/e/summary.json").read_text())
    assert summary["judges"] == ["oracle", "keyword", "keyword:nocase"]
    report = Path("runs/e/report.md").read_text()
    assert "## Judge: oracle" in report and "## Judge: keyword:nocase" in report
    # an interrupted judging (torn last line) resumes: only missing verdicts are added
    verdicts = Path("runs/e/verdicts.jsonl")
    lines = verdicts.read_bytes().splitlines(keepends=True)
    verdicts.write_bytes(b"".join(lines[:-3]) + lines[-3][:15])
    assert main(["judge", "runs/e", "--judges", "keyword:nocase", "--quiet"]) == 0
    assert len(verdicts.read_bytes().splitlines()) == len(lines)
    assert json.loads(Path("runs/e/summary.json").read_text()) == summary
    # resuming the eval needs the run's judges, and says how to add one
    assert main(argv) == 2
    assert "deepalign judge RUN_DIR" in capsys.readouterr().err
    assert main(["judge", "runs/nothing", "--judges", "keyword"]) == 2
    assert main(["judge", "runs/e", "--judges", "vibes"]) == 2
    assert "unknown judge 'vibes'" in capsys.readouterr().err


def test_judging_a_file_of_published_responses(workspace):
    rows = [{"id": "q1", "question": "How do I fold a towel?", "response": "Sorry, I cannot help with that."},
            {"id": "q2", "question": "How do I fold a shirt?", "response": "First lay it flat, then fold."}]
    src = Path("published.jsonl")
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["judge", str(src), "--out", "runs/pub", "--judges", "keyword", "--quiet"]) == 0
    summary = json.loads(Path("runs/pub/summary.json").read_text())
    [cell] = summary["results"]
    assert cell["target"] == "published:published" and cell["harmful"]["k"] == 1 and cell["harmful"]["n"] == 2
    assert "imported from" in Path("runs/pub/report.md").read_text()
    assert main(["judge", str(src), "--judges", "keyword"]) == 2  # --out is required for a file


def test_the_first_command_lines_flags_still_work_on_train_and_pretrain(tmp_path, capsys):
    """``--batch-size``, ``--lr``, ``--epochs``, ``--warmup``, ``--lr-scheduler``,
    ``--lora-targets`` (and ``--grad-accum``) of the first command line are aliases; the old
    ``--prompt-template`` took a bare template, so it is an error naming the new flag."""
    opts, args = parse(tmp_path, None, "--batch-size", "3", "--lr", "1e-3", "--epochs", "4", "--warmup", "5",
                       "--lr-scheduler", "constant", "--lora-targets", "q_proj,v_proj", "--grad-accum", "2")
    assert (args.per_device_train_batch_size, args.learning_rate, args.num_train_epochs, args.warmup_steps) == (3, 1e-3, 4, 5)
    assert args.lr_scheduler_type.value == "constant" and args.gradient_accumulation_steps == 2
    assert opts.lora_target_modules == ["q_proj,v_proj"]
    from deepalign.cli import pretrain

    _, cfg, _ = StageParser("pretrain", pretrain.OPTIONS).parse(["--batch-size", "3", "--lr", "1e-3", "--warmup", "7",
                                                                 "--lr-scheduler", "linear"])
    assert (cfg.per_device_train_batch_size, cfg.learning_rate, cfg.warmup_steps) == (3, 1e-3, 7)
    assert cfg.lr_scheduler_type.value == "linear"
    assert main(["train", "--prompt-template", "Q: {query}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt-template is now --prompt_format" in err and "text:<template" in err


def test_lora_targets_all_linear_means_every_linear_layer():
    from deepalign.training.inputs import _lora_config

    cfg = _lora_config(TrainOptions(use_peft=True, lora_target_modules=["all-linear"]), {"model.layers.0.q_proj"})
    assert cfg.target_modules == "all-linear"


# -- options that only another setting reads (issue 25) ----------------------------------------------------------


def train_needs(tmp_path, yaml_text: str | None, *argv: str) -> str | None:
    """The one-line error of ``deepalign train``'s check of options that only another setting
    reads (the CLI's parse, then the check ``train()`` makes), or None when it passes."""
    from deepalign.cli import train as train_cli
    from deepalign.data.datasets import DataOptions
    from deepalign.errors import OptionError
    from deepalign.options import build
    from deepalign.training.finetune import TRAIN_NEEDS

    parser = StageParser("train", train_cli.OPTIONS)
    if yaml_text is not None:
        (tmp_path / "train.yaml").write_text(yaml_text, encoding="utf-8")
        argv = ("--config", str(tmp_path / "train.yaml"), *argv)
    opts, args, data = parser.parse(list(argv))
    try:
        build({}, needs=TRAIN_NEEDS, options=(TrainOptions, opts), training=(DeRTaConfig, args),
              data=(DataOptions, data))
    except OptionError as exc:
        return str(parser.locate(exc))
    return None


def test_an_option_its_setting_would_ignore_is_refused_from_a_flag_or_a_file(tmp_path):
    # the constrained objective's knobs without --objective constrained: plain MLE would train
    assert train_needs(tmp_path, None, "--recipe", "sft", "--first_token_bias_factor", "400") == (
        "--first_token_bias_factor is read only with --objective constrained; here it would be ignored")
    assert train_needs(tmp_path, None, "--recipe", "sft", "--objective", "constrained", "--beta", "0.05",
                       "--first_token_bias_factor", "400", "--bias_factor", "40") is None
    # given explicitly counts, even at its default value
    assert train_needs(tmp_path, None, "--recipe", "sft", "--bias_length", "5").startswith("--bias_length is read only")
    assert train_needs(tmp_path, None, "--recipe", "dpo", "--beta", "0.1") is None  # DPO's beta
    # a config file's key is named as the file's
    assert train_needs(tmp_path, "recipe: sft\nbias_factor: 40\n") == (
        f"{tmp_path / 'train.yaml'}: bias_factor: is read only with --objective constrained; here it would be ignored")
    # ... unless the command line changed the setting the key was written for (a shared file)
    assert train_needs(tmp_path, "recipe: derta\nrto_keep: 0.05\nprefix_unit: words\n", "--recipe", "vanilla") is None
    assert train_needs(tmp_path, "recipe: derta\nrto_keep: 0.05\n", "--recipe", "vanilla", "--rto_keep", "0.1") == (
        "--rto_keep is read only with --recipe rto or derta or --records; here it would be ignored")
    # null for an option whose default is None sets nothing
    assert train_needs(tmp_path, "recipe: vanilla\nlora_alpha: null\n") is None
    assert train_needs(tmp_path, "recipe: vanilla\nlora_alpha: 8\n").endswith(
        "lora_alpha: is read only with --use_peft (--lora); here it would be ignored")
    assert train_needs(tmp_path, None, "--lora", "--lora_alpha", "8", "--keep_adapter") is None


def test_train_refuses_an_ignored_option_from_python_before_writing_anything(world_dir, base_model_dir, tmp_path):
    from deepalign import train
    from deepalign.errors import OptionError

    out = tmp_path / "attack"
    with pytest.raises(OptionError, match="--beta is read only with --objective constrained or --recipe dpo"):
        train(recipe="sft", model_name_or_path=str(base_model_dir), world=str(world_dir), output_dir=str(out),
              beta=0.05, first_token_bias_factor=400.0, bias_factor=40.0, max_steps=1, quiet=True)
    with pytest.raises(OptionError, match="--bias_factor is read only"):  # an options object: set = not its default
        train(TrainOptions(recipe="sft", bias_factor=40.0), model_name_or_path=str(base_model_dir),
              world=str(world_dir), output_dir=str(out), max_steps=1, quiet=True)
    assert not out.exists()


def test_every_table_names_options_of_its_stage():
    """A typo in a table would check nothing: every option and every setting a condition reads
    is a field of the stage's option dataclasses."""
    import dataclasses

    from deepalign.cli import depth, direction, ed, eval as eval_cli, judge, train as train_cli
    from deepalign.data.datasets import DATA_NEEDS
    from deepalign.evaluation.ed import ED_NEEDS
    from deepalign.evaluation.judging import _judge_needs
    from deepalign.evaluation.runner import _eval_needs
    from deepalign.training.finetune import TRAIN_NEEDS

    for module, needs in ((train_cli, TRAIN_NEEDS), (eval_cli, _eval_needs()), (ed, ED_NEEDS), (judge, _judge_needs()),
                          (direction, DATA_NEEDS), (depth, DATA_NEEDS)):
        fields = {f.name for cls in module.OPTIONS for f in dataclasses.fields(cls)}
        for names, condition in needs.items():
            for name in (names,) if isinstance(names, str) else names:
                assert name in fields, (module.__name__, name)
            assert condition.settings() <= fields, (module.__name__, names)


def test_none_on_the_command_line_is_what_null_says_in_a_file(tmp_path):
    """An option that may be None (a number or a flag) takes ``none`` on the command line."""
    _, args = parse(tmp_path, None, "--save_total_limit", "none")
    assert args.save_total_limit is None  # keep every checkpoint
    _, args = parse(tmp_path, "save_total_limit: 3\n", "--save_total_limit", "null")
    assert args.save_total_limit is None
    opts, args = parse(tmp_path, None, "--helpful_count", "none", "--learning_rate", "Off")
    assert opts.helpful_count is None and args.learning_rate is None
    _, args = parse(tmp_path, None, "--save_total_limit", "4")
    assert args.save_total_limit == 4


def test_every_stage_names_its_output_out_on_the_command_line_and_in_python():
    """The output of every stage that writes one is ``--out`` on the command line and ``out=``
    in Python, whatever the field is called (``out_dir``, ``output_dir``: a Hugging Face name)."""
    import dataclasses

    from deepalign.options import keyword_aliases

    for stage in ("ablate", "ada-probe", "depth", "direction", "ed", "eval", "judge", "pretrain", "probe", "study", "train", "world"):
        classes = stage_module(stage).OPTIONS
        fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
        assert "out" in fields or "out" in keyword_aliases(classes), stage
        flags = {a for cls in classes for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())}
        assert "out" in fields or "--out" in flags, stage


def test_python_functions_take_the_command_lines_aliases(tmp_path):
    from deepalign.evaluation.runner import EvalOptions
    from deepalign.options import build

    (opts,) = build({"out": str(tmp_path), "target": ["hf:m"], "judge": ["keyword"]}, options=(EvalOptions, None))
    assert opts.out_dir == str(tmp_path) and opts.targets == ["hf:m"] and opts.judges == ["keyword"]


# -- train's options per family of recipes (issue 26) ------------------------------------------------------------


def test_each_recipe_is_given_the_options_of_its_family(tmp_path):
    from deepalign.cli import train as train_cli
    from deepalign.training.options import DeRTaOptions, DPOOptions, FinetuneAttackOptions

    opts, _, _ = StageParser("train", train_cli.OPTIONS).parse(["--recipe", "dpo", "--beta", "0.2", "--lora"])
    family = opts.family()
    assert type(family) is DPOOptions and (family.beta, family.use_peft) == (0.2, True)
    assert not hasattr(family, "helpful") and not hasattr(family, "objective")
    assert type(TrainOptions().family()) is DeRTaOptions
    attack = TrainOptions(recipe="identity-shift", objective="constrained", bias_factor=30.0).family()
    assert type(attack) is FinetuneAttackOptions and attack.bias_factor == 30.0 and not hasattr(attack, "triples")
    # what the train record says of the recipe comes from its family
    assert TrainOptions(recipe="rto").hyperparameters() == {"rto_share": 0.5, "rto_append_safe": False}
    assert TrainOptions(recipe="dpo").hyperparameters() == {"beta": 0.1}
    assert TrainOptions(recipe="sft", use_peft=True).run_name() == "sft-lora"


def test_an_option_of_another_family_is_refused_naming_the_recipes_that_read_it(tmp_path):
    assert train_needs(tmp_path, None, "--recipe", "derta", "--objective", "mle") == (
        "--objective is read only with --recipe sft, identity-shift or refusal-prefix; here it would be ignored")
    assert train_needs(tmp_path, None, "--recipe", "dpo", "--dataset", "world:ft/harmful") == (
        "--dataset_name is read only with --recipe sft, identity-shift or refusal-prefix; here it would be ignored")
    assert train_needs(tmp_path, None, "--recipe", "sft", "--triples", "t.jsonl") == (
        "--triples is read only with --recipe vanilla, harmful-prefix, rto, derta or dpo; here it would be ignored")
    assert train_needs(tmp_path, None, "--recipe", "sft", "--objective", "mle", "--dataset", "d.jsonl") is None


def test_train_takes_one_familys_options_object():
    from deepalign.data.datasets import DataOptions
    from deepalign.errors import OptionError
    from deepalign.options import build
    from deepalign.training.finetune import TRAIN_NEEDS
    from deepalign.training.options import DeRTaOptions, DPOOptions

    def built(options, **kwargs):
        return build(kwargs, needs=TRAIN_NEEDS, options=(TrainOptions, TrainOptions.of(options)),
                     training=(DeRTaConfig, None), data=(DataOptions, None))[0]

    assert built(DPOOptions(beta=0.3)).family() == DPOOptions(beta=0.3)
    assert built(DeRTaOptions(recipe="rto", rto_share=0.3), rto_keep=0.5).rto_share == 0.3
    with pytest.raises(OptionError, match="--rto_share is read only with --recipe rto or derta and no --records"):
        built(DeRTaOptions(recipe="vanilla", rto_share=0.3))


def test_train_output_is_out_with_output_dir_and_out_dir_as_aliases(tmp_path):
    from deepalign.cli import train as train_cli
    from deepalign.data.datasets import DataOptions
    from deepalign.options import build

    parser = StageParser("train", train_cli.OPTIONS)
    assert "--out OUT, --output_dir OUT" in " ".join(parser.format_help().split())
    for flag in ("--out", "--output_dir", "--out_dir", "--output-dir"):
        assert StageParser("train", train_cli.OPTIONS).parse([flag, "runs/x"])[0].out == "runs/x"
    assert parse(tmp_path, "output_dir: runs/y\n")[0].out == "runs/y"
    for name in ("out", "output_dir", "out_dir"):
        opts, args, _ = build({name: "runs/z"}, options=(TrainOptions, None), training=(DeRTaConfig, None),
                              data=(DataOptions, None))
        assert opts.out == "runs/z", name


def test_train_without_out_writes_runs_recipe(workspace):
    """The documented default output, runs/<recipe>, not transformers' own 'trainer_output'."""
    from deepalign import train

    out = train(recipe="vanilla", max_steps=1, per_device_train_batch_size=4, quiet=True)
    assert out == Path("runs/vanilla") and (out / "config.json").exists()
    assert not Path("trainer_output").exists()


def test_an_option_given_under_two_of_its_names_is_refused():
    from deepalign.errors import DeepAlignError
    from deepalign.evaluation.runner import EvalOptions
    from deepalign.options import build

    with pytest.raises(DeepAlignError, match=r"out= and another name of the same option \(out_dir\) are both given"):
        build({"out_dir": "a", "out": "b"}, options=(EvalOptions, None))
