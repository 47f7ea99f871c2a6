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
    tags = ["deepalign", "safety", "alignment", recipe]
    front = ["---", "library_name: transformers"]
    if base and info.get("base_model_on_hub"):  # a local path is no hub reference
        front.append(f"base_model: {_yaml_str(str(base))}")
    front += ["tags:"] + [f"- {_yaml_str(t)}" for t in tags] + ["---", ""]
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

    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", 'model = AutoModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")', "```", ""]
    command = info.get("command")
    if command:
        lines += ["Reproduce with:", "", "```bash", command, "```", ""]
    lines += ["Safety research artefact: trained to study how deep safety alignment goes; see "
              "https://arxiv.org/abs/2407.09121 (DeRTa) and https://arxiv.org/abs/2402.12343 (Emulated "
              "Disalignment).", ""]
    return "\n".join(lines)


def card_files(info: dict[str, Any]) -> dict[str, str]:
    """The card as a file mapping for :func:`deepalign.training.trainer.save_final_model`."""
    return {CARD: render_card(info)}


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
