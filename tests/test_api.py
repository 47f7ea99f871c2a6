"""The public Python API: ``from deepalign import ...`` gives every stage, and the examples in
their docstrings run as written (in pipeline order, in a fresh directory)."""

from __future__ import annotations

import doctest
import os

import pytest

import deepalign

STAGES = ["build_world", "pretrain", "train", "run_eval", "judge_run", "build_report", "probe", "run_ed", "run_depth",
          "refusal_direction", "ablate_weights"]


def test_every_stage_is_exported_with_a_docstring_example():
    for name in STAGES + ["run_study"]:
        fn = getattr(deepalign, name)
        assert callable(fn) and ">>> " in (fn.__doc__ or ""), name
    with pytest.raises(AttributeError):
        deepalign.not_a_stage  # noqa: B018


def _run_examples(objects, directory) -> doctest.TestResults:
    os.chdir(directory)
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = {name: getattr(deepalign, name) for name in STAGES}
    for obj in objects:
        for test in finder.find(obj, name=getattr(obj, "__name__", "deepalign"), globs=globs):
            test.globs = globs
            runner.run(test, clear_globs=False)
    return runner.summarize(verbose=False)


def test_stage_docstring_examples_run_in_pipeline_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run_examples([getattr(deepalign, name) for name in STAGES], tmp_path)
    assert result.attempted >= 12 and result.failed == 0
    assert os.path.exists("runs/derta/README.md") and os.path.exists("runs/ed/run.json")
    assert os.path.exists("runs/depth/depth.json")
    assert os.path.exists("runs/direction/direction.json") and os.path.exists("runs/base2-ablated/config.json")


def test_package_docstring_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run_examples([deepalign], tmp_path)
    assert result.attempted >= 6 and result.failed == 0
