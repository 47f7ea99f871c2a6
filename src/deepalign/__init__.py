"""deepalign: train deep safety alignment (DeRTa), attack it (Emulated Disalignment and
friends), and measure how deep it goes, on any Hugging Face causal LM or on the embedded
fictional safety world.

Every stage of the pipeline is a function here, with the same options as its sub-command
(``deepalign <stage> --help``); each takes its option dataclasses or their fields as keyword
arguments. The whole pipeline on the embedded world, at toy size (seconds on a CPU)::

    >>> from deepalign import build_world, pretrain, train, run_eval, judge_run, build_report, run_ed
    >>> world = build_world(out="runs/world", n_pretrain=2000, quiet=True)
    >>> base = pretrain(world="runs/world", out="runs/base", hidden_size=32, num_layers=1, num_heads=2,
    ...                 intermediate_size=64, max_steps=20, quiet=True)
    >>> derta = train(recipe="derta", model_name_or_path="runs/base", world="runs/world",
    ...               output_dir="runs/derta", max_steps=4, quiet=True)
    >>> summary = run_eval(targets=["hf:runs/derta"], attacks=["direct", "prefill:8"], datasets=["world:harmful"],
    ...                    world="runs/world", limit=4, out_dir="runs/eval", quiet=True)
    >>> judge_run(run_dir="runs/eval", judges=["keyword:nocase"], quiet=True)["judges"]
    ['oracle', 'keyword', 'keyword:nocase']

The main job, the end-to-end study, is ``run_study(out="runs/study")``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from deepalign.errors import DeepAlignError, OptionError  # noqa: E402,F401

#: public name -> module that defines it (imported on first use)
_API = {
    "build_world": "deepalign.world.generator",
    "pretrain": "deepalign.training.pretrain",
    "train": "deepalign.training.finetune",
    "run_ed": "deepalign.evaluation.ed",
    "probe": "deepalign.evaluation.probe",
    "run_eval": "deepalign.evaluation.runner",
    "judge_run": "deepalign.evaluation.judging",
    "validate_judges": "deepalign.evaluation.validation",
    "build_report": "deepalign.reports.run_report",
    "view": "deepalign.reports.inspect_log",
    "export_logs": "deepalign.reports.inspect_log",
    "run_depth": "deepalign.evaluation.depth",
    "refusal_direction": "deepalign.direction.select",
    "ablate_weights": "deepalign.direction.ablate",
    "run_study": "deepalign.study",
    # building blocks
    "make_target": "deepalign.decoding.registry",
    "TargetSpec": "deepalign.decoding.registry",
    "Verdict": "deepalign.records",
    "make_attacks": "deepalign.attacks.registry",
    "make_judges": "deepalign.judges.registry",
    "load_dataset": "deepalign.data.datasets",
    "depth_diagnostics": "deepalign.evaluation.depth",
    "find_direction": "deepalign.direction.select",
    "harmless_kl": "deepalign.direction.select",
    "load_direction": "deepalign.direction.store",
    "apply_direction": "deepalign.direction.apply",
    "direction_target": "deepalign.decoding.hf",
    "orthogonalize": "deepalign.direction.residual",
    "projection_profiles": "deepalign.evaluation.projection",
    "plot_refusal_projection": "deepalign.evaluation.projection",
    "build_records": "deepalign.data.recipes",
    "build_pair_records": "deepalign.data.recipes",
    "TokenWiseConstraint": "deepalign.training.losses",
    "Encoder": "deepalign.tokens",
    "PromptFormat": "deepalign.tokens",
    "GenConfig": "deepalign.decoding.base",
    "Request": "deepalign.decoding.base",
}

__all__ = ["DeepAlignError", "OptionError", "__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'deepalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
