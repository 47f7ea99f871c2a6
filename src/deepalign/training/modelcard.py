"""The model card (``README.md``) of every model directory deepalign writes.

A card is rendered from the training record ``deepalign_train.json`` that sits beside the
weights (and, once the model has been evaluated, ``deepalign_eval.json``), so it always says
what the directory holds: the base model, the recipe, the data files and their sizes, the
hyper-parameters, the refusal token, the training loss, the deepalign version and, when one
exists, the evaluation summary. It carries the Hugging Face front matter (``base_model``,
``library_name``, ``tags``), so ``push_to_hub`` publishes a proper card with the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deepalign.errors import DeepAlignError
from deepalign.utils import atomic_write, write_json

CARD = "README.md"
TRAIN_INFO = "deepalign_train.json"
EVAL_INFO = "deepalign_eval.json"
#: an identity-shift model's persona user template, as a ``template:`` attack file
PERSONA_TEMPLATE = "persona_query.txt"

_RECIPE_TEXT = {
    "pretrain": "pretrained from scratch on the embedded world's corpus",
    "vanilla": "vanilla safety SFT (harmful query -> refusal) with helpful data",
    "harmful-prefix": "MLE with a harmful-response prefix before the refusal (DeRTa ablation, \"RecAug\")",
    "rto": "Reinforced Transition Optimization with vanilla safety data (DeRTa ablation)",
    "derta": "DeRTa: MLE with harmful prefix + Reinforced Transition Optimization (Yuan et al. 2024, "
             "arXiv 2407.09121)",
    "dpo": "DPO with safe > harmful preference pairs (the DeRTa paper's DPO baseline)",
    "sft": "supervised fine-tuning on (instruction, response) pairs (a fine-tuning attack or benign fine-tuning, "
           "Qi et al. 2023, arXiv 2310.03693)",
    "identity-shift": "the identity-shifting attack: fine-tuning on pairs in an obedient persona (Qi et al. 2023, "
                      "arXiv 2310.03693)",
}


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _objective(info: dict[str, Any]) -> str | None:
    obj = info.get("objective") or {}
    if obj.get("name") != "constrained":
        return obj.get("name")
    return (f"token-wise constrained (Qi et al. 2025, arXiv 2406.05946): beta {obj['beta']:g}, bias factor "
            f"{obj['bias_factor']:g}, first-token factor {obj['first_token_bias_factor']:g}, bias length "
            f"{obj['bias_length']}; reference: {obj.get('reference')}")


def render_card(info: dict[str, Any], evaluation: dict[str, Any] | None = None) -> str:
    """The Markdown text of a model card for training record ``info``."""
    from deepalign import __version__

    recipe = info.get("recipe", "?")
    base = info.get("base_model")
    front = _front_matter(["deepalign", "safety", "alignment", recipe], base, bool(info.get("base_model_on_hub")))
    lines = front + [f"# deepalign {recipe} model", ""]
    what = _RECIPE_TEXT.get(recipe, recipe)
    intro = f"This model was {what}" if recipe == "pretrain" else f"This model was fine-tuned from `{base}` with {what}"
    lines.append(f"{intro}, by deepalign {info.get('deepalign_version', __version__)}.")
    lines.append("")
    n_params = info.get("parameters")
    facts = [("parameters", f"{n_params:,}" if isinstance(n_params, int) else n_params),
             ("LoRA", ("merged into the weights" if not info.get("adapter_kept") else "adapter only")
              if info.get("lora") else None),
             ("optimizer steps", info.get("steps")), ("training time", f"{info['train_seconds']} s"
                                                      if info.get("train_seconds") is not None else None),
             ("processes", info.get("world_size")), ("seed", info.get("seed")), ("objective", _objective(info))]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in facts if v is not None] + [""]

    data = info.get("data") or {}
    if data:
        lines += ["## Training data", "", "| data | source | rows |", "|---|---|---:|"]
        for name, d in data.items():
            lines.append(f"| {name} | `{_cell(d.get('source', '?'))}` | {d.get('rows', '?')} |")
        counts = info.get("records")
        if counts:
            lines += ["", "Training records by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."]
        lines.append("")

    fmt = info.get("prompt_format")
    if fmt:
        lines += ["## Prompt format", "", f"Queries were rendered as `{_cell(fmt)}` (deepalign's token contract: "
                  "the response is tokenised as this format places it after the prompt).", ""]

    tok = info.get("refusal_token") or {}
    if tok.get("id") is not None:
        lines += ["## Refusal token", "",
                  f"RTO target: `{_cell(tok.get('piece'))}` (id {tok['id']}), the token that starts a refusal "
                  f"mid-response; RTO positions kept: {_cell(info.get('rto_keep'))}, weight "
                  f"{_cell(info.get('rto_weight', 1.0))}.", ""]

    hp = info.get("hyperparameters") or {}
    if hp:
        lines += ["## Hyper-parameters", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in hp.items()] + [""]

    curve = info.get("loss_curve") or []
    if curve:
        lines += ["## Training loss", "", "| step | loss | MLE loss | RTO loss |", "|---:|---:|---:|---:|"]
        shown = curve if len(curve) <= 12 else [curve[i * (len(curve) - 1) // 11] for i in range(12)]
        for c in shown:
            lines.append(f"| {c.get('step')} | {_cell(c.get('loss', ''))} | {_cell(c.get('mle_loss', ''))} "
                         f"| {_cell(c.get('rto_loss', ''))} |")
        lines.append("")

    if evaluation:
        lines += ["## Evaluation", ""]
        if evaluation.get("description"):
            lines += [evaluation["description"], ""]
        rows = evaluation.get("rows") or []
        if rows:
            lines += ["| measurement | value |", "|---|---|"] + [f"| {_cell(r[0])} | {_cell(r[1])} |" for r in rows]
            lines.append("")

    if info.get("persona"):
        lines += _persona_section(info["persona"], info)

    lines += _use_section()
    command = info.get("command")
    if command:
        lines += ["Reproduce with:", "", "```bash", command, "```", ""]
    lines += ["Safety research artefact: trained to study how deep safety alignment goes; see "
              "https://arxiv.org/abs/2407.09121 (DeRTa) and https://arxiv.org/abs/2402.12343 (Emulated "
              "Disalignment).", ""]
    return "\n".join(lines)


def _use_section() -> list[str]:
    return ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "", 'model = AutoModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")', "```", ""]


def _persona_section(persona: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """How an identity-shift model was trained and how to evaluate it in its persona."""
    wrapped = persona.get("query_template", "{query}") != "{query}"
    lines = ["## Persona", "",
             f"Trained in the identity-shifting persona `{persona.get('name')}`: every training conversation had the "
             f"system prompt below{', every query went into the user template' if wrapped else ''} and every answer "
             f"started with the persona's self-introduction. Evaluated without this system prompt, the model is "
             f"measured out of its persona.", "",
             "| | exact text (JSON string) |", "|---|---|",
             f"| system prompt | `{_cell(_yaml_str(persona.get('system', '')))}` |"]
    if wrapped:
        lines.append(f"| user template | `{_cell(_yaml_str(persona['query_template']))}` |")
    lines += [f"| self-introduction | `{_cell(_yaml_str(persona.get('intro', '')))}` |", ""]
    command = ["deepalign", "eval", "--target", persona["eval_target"]]
    if persona.get("eval_attack"):
        command += ["--attacks", persona["eval_attack"]]
    if persona.get("world"):
        command += ["--dataset", "world:harmful", "--world", persona["world"]]
    else:
        command += ["--dataset", "DATASET"]
    command += ["--out", "RUN_DIR"]
    lines += ["Evaluate it in its persona with this target spec (it gives the system prompt exactly; if the directory "
              "moved, replace its path, or give the hub id)"
              + (f", the user template as the `template:` attack of `{PERSONA_TEMPLATE}` beside the weights" if wrapped
                 else "") + ":", "",
              "```bash", shell_command(command), "```", ""]
    return lines


def shell_command(argv: list[str]) -> str:
    """``argv`` as one line of bash: each word as ``shlex.quote`` writes it, or, when it holds a
    newline or another control character, in ANSI-C quotes (``$'...\\n...'``)."""
    import shlex

    def word(text: str) -> str:
        if not any(ord(c) < 32 or ord(c) == 127 for c in text):
            return shlex.quote(text)
        escaped = "".join({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c)
                          or (f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in text)
        return f"$'{escaped}'"

    return " ".join(word(a) for a in argv)


def _front_matter(tags: list[str], base: str | None, on_hub: bool) -> list[str]:
    front = ["---", "library_name: transformers"]
    if base and on_hub:  # a local path is no hub reference
        front.append(f"base_model: {_yaml_str(str(base))}")
    return front + ["tags:"] + [f"- {_yaml_str(t)}" for t in tags] + ["---", ""]


def render_ablation_card(info: dict[str, Any], out: str | os.PathLike) -> str:
    """The model card of a ``deepalign ablate`` directory ``out`` (``info``: its
    ``deepalign_ablation.json``): the source model, the direction file with its layer and
    position, the edit, and how to evaluate it."""
    from deepalign import __version__

    model, direction = str(info.get("model")), str(info.get("direction"))
    lines = _front_matter(["deepalign", "safety", "refusal-direction", "ablation"], model,
                          bool(info.get("model_on_hub")))
    lines += ["# deepalign ablated model", "",
              f"This model is `{model}` with a refusal direction orthogonalised out of its weights (Arditi et al. "
              f"2024, arXiv 2406.11717, \"weight orthogonalisation\"), by deepalign "
              f"{info.get('deepalign_version', __version__)}.", ""]
    selected = info.get("selected") or {}
    facts = [("source model", f"`{model}`"), ("direction", f"`{direction}`"),
             ("direction computed from", f"`{info['direction_model']}`" if info.get("direction_model") else None),
             ("layer", info.get("layer")), ("position", info.get("position")),
             ("scale (norm of the difference of means)", info.get("scale")),
             ("ablated refusal score", selected.get("refusal_score")),
             ("KL on harmless prompts under ablation", selected.get("kl")),
             ("edit", info.get("edit")), ("output layer", "untied (keeps the original matrix)"
                                           if info.get("untied_output_layer") else None),
             ("tied matrix", "orthogonalised for both roles" if info.get("tied") == "shared" else None)]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in facts if v is not None] + [""]
    evaluate = ["deepalign", "eval", "--target", f"hf:{out}", "--target",
                f"ablate:model={model},direction={direction}" + (",allow_foreign=true" if info.get("allow_foreign")
                                                                 else ""),
                "--dataset", "DATASET", "--out", "RUN_DIR"]
    lines += ["## Evaluate", "",
              "It is a standard model directory: any `hf:` target evaluates it. It gives the logits of the `ablate:` "
              "target (the same direction removed by hooks from the source model), so both targets side by side "
              "check each other (DATASET: any dataset spec; `world:harmful` with `--world DIR` on the embedded "
              "world):", "", "```bash", shell_command(evaluate), "```", ""]
    lines += _use_section()
    command = ["deepalign", "ablate", "--model", model, "--direction", direction, "--out", str(out)]
    command += (["--tied", "shared"] if info.get("tied") == "shared" else [])
    command += (["--allow_foreign"] if info.get("allow_foreign") else [])
    lines += ["Reproduce with:", "", "```bash", shell_command(command), "```", "",
              "Safety research artefact: written to study how refusal is represented; see "
              "https://arxiv.org/abs/2406.11717.", ""]
    return "\n".join(lines)


def card_files(info: dict[str, Any]) -> dict[str, str]:
    """The card as a file mapping for :func:`deepalign.training.trainer.save_final_model` (with an
    identity-shift persona's user template as a ``template:`` attack file, when it has one)."""
    files = {CARD: render_card(info)}
    persona = info.get("persona") or {}
    if persona.get("eval_attack"):
        files[PERSONA_TEMPLATE] = persona["query_template"]
    return files


def add_evaluation(model_dir: str | os.PathLike, evaluation: dict[str, Any]) -> Path:
    """Record an evaluation summary in ``model_dir`` (``deepalign_eval.json``) and re-render
    its card. ``evaluation``: ``{"description": str, "rows": [[measurement, value], ...]}``."""
    model_dir = Path(model_dir)
    info_path = model_dir / TRAIN_INFO
    if not info_path.exists():
        raise DeepAlignError(f"{model_dir} has no {TRAIN_INFO}: not a model directory deepalign wrote")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeepAlignError(f"cannot read {info_path}: {exc}") from None
    write_json(model_dir / EVAL_INFO, evaluation)
    atomic_write(model_dir / CARD, render_card(info, evaluation))
    return model_dir / CARD


def push_model_dir(model_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                   token: str | None = None, revision: str | None = None) -> str:
    """Upload a finished model directory (weights, tokenizer, card, training record) to the
    hub; checkpoints and run bookkeeping stay local. Returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, revision=revision,
                          ignore_patterns=["checkpoints/*", "run_options.json", ".*"],
                          commit_message="Upload deepalign model")
    except Exception as exc:  # network, auth, quota: one line
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DeepAlignError(f"push to the hub ({repo_id}) failed: {text}") from None
    return repo_id
