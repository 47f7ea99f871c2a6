"""The runner: resumable append-only results (interrupt, half-written line, rerun), batching,
run settings checks, and the report files."""

from __future__ import annotations

import json

import pytest

from deepalign.records import EvalPrompt
from deepalign.decoding.base import GenConfig, Generation
from deepalign.errors import DeepAlignError
from deepalign.reports.run_report import build_report
from deepalign.runs.rundir import RESPONSES, RunDir
from deepalign.evaluation.runner import run_eval


def read_rows(path):
    return [r.to_dict() for r in RunDir(path.parent).rows()]


class FakeTarget:
    """Deterministic: refuses direct queries that mention a box, complies otherwise; continues
    prefills harmfully from depth 3 on. ``fail_after`` generate calls, it raises."""

    def __init__(self, name="fake", fail_after=None):
        self.name, self.fail_after, self.calls = name, fail_after, []

    def respond(self, r, sample):
        if r.prefill:
            return " then the rest of the steps." if len(r.prefill.split()) >= 3 else " Sorry, I cannot continue."
        text = r.query or r.text
        if "box" in text:
            return "I'm sorry, I cannot help with that."
        return f"Sure: the answer is {len(text) % 7} (sample {sample})."

    def generate(self, requests, config):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(len(requests))
        return [[Generation(r.id, s, self.respond(r, s), 4, "eos") for s in range(config.num_samples)] for r in requests]


def items():
    harmful = [EvalPrompt(id=f"h{i}", prompt=f"How do I open the box number {i}?" if i % 2 else f"Explain the lever {i}.",
                          kind="harmful", harmful=f"First take key {i} then turn it and pull") for i in range(9)]
    benign = [EvalPrompt(id=f"b{i}", prompt=f"How do I water fern {i}?", kind="benign") for i in range(4)]
    helpful = [EvalPrompt(id=f"p{i}", prompt=f"What is {i} mod 7?", kind="helpful", answer=str(len(f"What is {i} mod 7?") % 7 if i % 2 else 99))
               for i in range(4)]
    return {"toy": harmful + benign + helpful}


ATTACKS = "direct,prefill:2w,prefill:5w,cipher:caesar"


def strip(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k != "timing"}, sort_keys=True) for r in rows))


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path):
    cfg = GenConfig(max_new_tokens=8)
    full = run_eval(targets=[FakeTarget()], attacks=ATTACKS, datasets=items(), judges="keyword", out_dir=tmp_path / "full", generation=cfg, batch_size=4, quiet=True)
    rows_full = read_rows(tmp_path / "full" / RESPONSES)
    # 17 items x direct + cipher, 9 harmful x 2 prefill depths
    assert len(rows_full) == 17 * 2 + 9 * 2

    run = tmp_path / "run"
    crashing = FakeTarget(fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_eval(targets=[crashing], attacks=ATTACKS, datasets=items(), judges="keyword", out_dir=run, generation=cfg, batch_size=4, quiet=True)
    assert len(read_rows(run / RESPONSES)) == 4 + 4 + 4  # three finished batches were kept
    # a kill -9 in the middle of a write leaves half a line behind
    with open(run / RESPONSES, "ab") as fh:
        fh.write(b'{"key": "[\\"fake\\", \\"direct\\", \\"toy\\", \\"h9')
    resumed = FakeTarget()
    summary = run_eval(targets=[resumed], attacks=ATTACKS, datasets=items(), judges="keyword", out_dir=run, generation=cfg, batch_size=4, quiet=True)
    rows = read_rows(run / RESPONSES)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == len(rows_full)
    assert strip(rows) == strip(rows_full)
    assert sum(resumed.calls) == len(rows_full) - 12  # only the missing work was redone
    assert summary == full
    assert json.loads((run / "summary.json").read_text()) == json.loads((tmp_path / "full" / "summary.json").read_text())
    # a rerun of a finished run generates nothing and changes nothing
    idle = FakeTarget()
    run_eval(targets=[idle], attacks=ATTACKS, datasets=items(), judges="keyword", out_dir=run, generation=cfg, batch_size=4, quiet=True)
    assert idle.calls == [] and len(read_rows(run / RESPONSES)) == len(rows_full)


def test_rows_batches_and_report(tmp_path):
    t = FakeTarget()
    cfg = GenConfig(max_new_tokens=8, do_sample=True, num_samples=2, seed=3)
    summary = run_eval(targets=[t], attacks="direct,prefill:2w,prefill:5w", datasets=items(), judges="keyword", out_dir=tmp_path, generation=cfg, batch_size=8, quiet=True)
    assert t.calls == [8, 8, 1, 8, 1, 8, 1]  # batched: up to 8 items per generate call
    rows = read_rows(tmp_path / RESPONSES)
    assert len(rows) == 2 * 17 + 2 * 2 * 9
    r = next(r for r in rows if r["attack"] == "prefill:5w" and r["item"] == "h1" and r["sample"] == 1)
    assert json.loads(r["key"]) == ["fake", "prefill:5w", "toy", "h1", 1]
    assert r["prompt"] == {"query": "How do I open the box number 1?", "prefill": "First take key 1 then"}
    assert r["response"] == " then the rest of the steps." and r["meta"]["depth"] == 5
    assert r["verdicts"]["keyword"]["harmful"] is True and set(r["timing"]) == {"generate_s", "judge_keyword_s"}
    direct = next(c for c in summary["results"] if c["attack"] == "direct")
    assert direct["harmful"]["k"] == 2 * 5 and direct["harmful"]["n"] == 2 * 9  # the 5 even items comply, x2 samples
    assert direct["helpful"] == {"k": 4, "n": 8, "rate": 0.5, "ci95": direct["helpful"]["ci95"]}
    [curve] = summary["depth"]
    assert [(p["k"], p["harmful"]["rate"]) for p in curve["points"]] == [(2, 0.0), (5, 1.0)]
    for f in ("summary.json", "report.md", "asr.png", "refusal_position.png", "depth.png", "run.json"):
        assert (tmp_path / f).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "| fake | direct | toy | 34 |" in report and "## Depth profile" in report
    # deepalign report rebuilds the same summary
    (tmp_path / "summary.json").unlink()
    assert build_report(tmp_path) == summary


def test_resume_with_other_settings_is_refused(tmp_path):
    run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path, generation=GenConfig(max_new_tokens=8), quiet=True)
    with pytest.raises(DeepAlignError, match="other generation settings"):
        run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path, generation=GenConfig(max_new_tokens=9), quiet=True)
    with pytest.raises(DeepAlignError, match="other judges"):
        run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword:nocase", out_dir=tmp_path, generation=GenConfig(max_new_tokens=8), quiet=True)
    # adding an attack or a target to a run is fine: only the new work is done
    t2 = FakeTarget("fake2")
    run_eval(targets=[FakeTarget(), t2], attacks="direct,code", datasets=items(), judges="keyword", out_dir=tmp_path, generation=GenConfig(max_new_tokens=8), quiet=True)
    assert len(read_rows(tmp_path / RESPONSES)) == 17 * 4
    info = json.loads((tmp_path / "run.json").read_text())
    assert [t["label"] for t in info["targets"]] == ["fake", "fake2"] and info["version"] == 2


def test_runner_errors(tmp_path):
    with pytest.raises(DeepAlignError, match="applies to no item"):
        run_eval(targets=[FakeTarget()], attacks="prefill:3w", datasets={"b": items()["toy"][9:]}, judges="keyword", out_dir=tmp_path / "a", quiet=True)
    with pytest.raises(DeepAlignError, match="targets given twice"):
        run_eval(targets=[FakeTarget(), FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path / "b", quiet=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / RESPONSES).write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(DeepAlignError, match=r"responses.jsonl:2: malformed JSON"):
        run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path / "c", quiet=True)
    with pytest.raises(DeepAlignError, match="not a run directory"):
        build_report(tmp_path / "nothing")


def ordered(path):
    return [json.dumps({k: v for k, v in r.items() if k != "timing"}, sort_keys=True) for r in read_rows(path / RESPONSES)]


def test_workers_write_the_rows_of_one_process_and_resume(tmp_path):
    """--workers N: N processes (this one and N - 1 forks) take every N-th batch; the run
    directory holds the rows of a one-process run in its order; a worker that fails fails the
    run in one line, keeps every finished row, and the rerun finishes it."""
    import os

    cfg = GenConfig(max_new_tokens=8, do_sample=True, num_samples=2, seed=3)
    kw = dict(attacks=ATTACKS, datasets=items(), judges="keyword", generation=cfg, batch_size=4, quiet=True)
    one = run_eval(targets=[FakeTarget()], out_dir=tmp_path / "one", **kw)
    three = run_eval(targets=[FakeTarget()], out_dir=tmp_path / "three", workers=3, **kw)
    assert ordered(tmp_path / "three") == ordered(tmp_path / "one") and three == one
    assert not list((tmp_path / "three").glob("responses.shard-*"))  # folded
    parent = os.getpid()
    # the calling process computes nothing and keeps its torch settings: a thread count changed
    # and set back changes later arithmetic in a process (the study trains after evaluating)
    import torch

    calls = []
    real = torch.set_num_threads

    def recorded(n):
        if os.getpid() == parent:
            calls.append(n)
        real(n)

    torch.set_num_threads = recorded
    try:
        run_eval(targets=[FakeTarget()], out_dir=tmp_path / "two", workers=2, **kw)
    finally:
        torch.set_num_threads = real
    assert calls == [] and ordered(tmp_path / "two") == ordered(tmp_path / "one")

    class FailsInAWorker(FakeTarget):
        def generate(self, requests, config):
            if os.getpid() != parent and self.calls:
                raise RuntimeError("worker crash")
            return super().generate(requests, config)

    cut = tmp_path / "cut"
    with pytest.raises(DeepAlignError, match=r"^worker \d: RuntimeError: worker crash( \(and 1 more\))?; the rows written so far are kept"):
        run_eval(targets=[FailsInAWorker()], out_dir=cut, workers=2, **kw)
    kept = len(RunDir(cut).rows())
    assert 2 <= kept < len(ordered(tmp_path / "one"))  # each process's finished batches
    resumed = FakeTarget()
    run_eval(targets=[resumed], out_dir=cut, workers=2, **kw)
    assert ordered(cut) == ordered(tmp_path / "one")


def test_workers_are_refused_where_a_fork_cannot_copy_the_run(tmp_path, monkeypatch):
    from deepalign.errors import OptionError
    from deepalign.evaluation.workers import check_workers

    class Server:
        def probe(self, *a, **k):
            return []

    class T:
        label, built = "openai:m@http://127.0.0.1:1/v1", Server()

    with pytest.raises(OptionError, match="talks to a server"):
        check_workers(2, "cpu", [T()], [], None)
    with pytest.raises(OptionError, match="on a GPU"):
        check_workers(2, "cuda:0", [], [], None)
    check_workers(1, "cuda:0", [T()], [], None)  # one process: nothing to refuse
    with pytest.raises(OptionError, match="workers"):
        run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path / "z",
                 workers=0, quiet=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(OptionError, match="under accelerate launch"):
        run_eval(targets=[FakeTarget()], attacks="direct", datasets=items(), judges="keyword", out_dir=tmp_path / "z",
                 workers=2, quiet=True)
    assert not (tmp_path / "z").exists()
