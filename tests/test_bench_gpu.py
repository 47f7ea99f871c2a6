"""The GPU benchmark's command line works without a GPU: its plan, its argument errors, and
one clear line (exit status 2) where there is no CUDA device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_lists_the_chosen_sections(bench_gpu, capsys):
    assert bench_gpu.main(["--plan", "--sections", "loss", "ed", "--loss-tokens", "2x512", "--new-tokens", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("loss:") and "2x512" in out[0]
    assert out[1].startswith("ed:") and "16 tokens" in out[1]


@pytest.mark.parametrize("argv", [["--loss-tokens", "8"], ["--step-tokens", "0x128"], ["--repeats", "0"],
                                  ["--sections", "nope"]])
def test_bad_arguments_exit_2(bench_gpu, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_gpu.parse_args(argv)
    assert exc.value.code == 2
    assert "bench_gpu.py: error:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_one_line_and_exit_2(bench_gpu, capsys):
    assert bench_gpu.main(["--sections", "loss"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_gpu.py: error: no CUDA device")
    assert captured.out == ""


def test_smoke_plan_uses_toy_shapes(bench_gpu, capsys):
    """--smoke (what CI's benchmarks/smoke.py runs) shrinks every section to a toy model."""
    assert bench_gpu.main(["--plan", "--smoke"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["loss", "step", "ed", "eval", "dist"]
    assert "vocab 8000 x 2x128" in out[0] and out[1].startswith("step: toy LLaMA, batch 4x256")
    assert "4 queries x 4 tokens" in out[2]
