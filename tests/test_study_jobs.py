"""The study's trainings side by side (deepalign.study.jobs): order, failures, resume."""

from __future__ import annotations

import json
import os
import time

import pytest

from deepalign.errors import DeepAlignError
from deepalign.study.jobs import Job, check_jobs, log_name, run_jobs


def _writer(path, *, sleep=0.0, needs=None):
    def fn():
        import torch

        if needs is not None and not needs.exists():
            raise DeepAlignError(f"{needs.name} is not there yet")
        start = time.time()
        time.sleep(sleep)
        print(f"making {path.name}")  # goes to the job's log
        path.write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads(), "start": start,
                                    "end": time.time()}))
    return fn


def test_jobs_run_side_by_side_after_what_they_read(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    done = []
    jobs = [Job("train a", a.exists, _writer(a, sleep=0.6)),
            Job("train b", b.exists, _writer(b, sleep=0.6)),
            Job("train c", c.exists, _writer(c, needs=a), after=("train a",))]
    run_jobs(jobs, 2, tmp_path / "logs", say=lambda _: None, on_done=lambda name, s: done.append(name))
    info = {p.name: json.loads(p.read_text()) for p in (a, b, c)}
    assert len({i["pid"] for i in info.values()} | {os.getpid()}) == 4  # a process each, none in this one
    assert all(i["threads"] == 1 for i in info.values())
    assert info["a"]["start"] < info["b"]["end"] and info["b"]["start"] < info["a"]["end"]  # a and b overlap
    assert info["c"]["start"] >= info["a"]["end"]  # c only once a is there
    assert set(done) == {"train a", "train b", "train c"} and done[-1] == "train c"
    assert (tmp_path / "logs" / log_name("train a")).read_text() == "making a\n"

    # finished outputs are not made again; one at a time runs them in order
    a.unlink()
    before = json.loads(b.read_text())
    run_jobs(jobs, 1, tmp_path / "logs", say=lambda _: None)
    assert json.loads(b.read_text()) == before and a.exists()


def test_a_failing_job_fails_the_run_with_its_name_and_log_and_stops_the_rest(tmp_path):
    def broken():
        raise ValueError("the recipe broke")

    slow = tmp_path / "slow"
    jobs = [Job("train broken", lambda: False, broken), Job("train slow", slow.exists, _writer(slow, sleep=30)),
            Job("train later", lambda: False, _writer(tmp_path / "later"), after=("train broken",))]
    start = time.time()
    with pytest.raises(DeepAlignError) as err:
        run_jobs(jobs, 2, tmp_path / "logs", say=lambda _: None)
    assert time.time() - start < 20  # the slow job was stopped, not waited for
    message = str(err.value)
    assert message.startswith("train broken: ValueError: the recipe broke") and "rerun the same command" in message
    assert log_name("train broken") in message
    assert "Traceback" in (tmp_path / "logs" / log_name("train broken")).read_text()
    assert not slow.exists() and not (tmp_path / "later").exists()

    # a deepalign error keeps its own one line
    jobs = [Job("train b", lambda: False, _writer(tmp_path / "b", needs=tmp_path / "missing"))]
    with pytest.raises(DeepAlignError, match=r"^train b: missing is not there yet \(its log"):
        run_jobs(jobs, 2, tmp_path / "logs", say=lambda _: None)


def test_a_killed_job_and_a_long_error_are_reported_without_a_hang(tmp_path):
    import signal

    def killed():
        os.kill(os.getpid(), signal.SIGKILL)

    def long_error():
        raise DeepAlignError("é" * 20000)  # 40 KB of UTF-8: more than some pipes hold

    with pytest.raises(DeepAlignError, match="^train killed: was killed by signal 9 before its report"):
        run_jobs([Job("train killed", lambda: False, killed)], 2, tmp_path / "logs", say=lambda _: None)
    with pytest.raises(DeepAlignError) as err:
        run_jobs([Job("train long", lambda: False, long_error)], 2, tmp_path / "logs", say=lambda _: None)
    assert str(err.value).startswith("train long: " + "é" * 1500 + " (its log")


def test_a_job_runs_only_after_earlier_jobs():
    with pytest.raises(ValueError, match="'train c' runs after 'train d'"):
        check_jobs([Job("train c", lambda: False, lambda: None, after=("train d",)),
                    Job("train d", lambda: False, lambda: None)])


def test_a_study_that_would_fork_on_a_gpu_is_refused_before_any_stage(tmp_path, monkeypatch):
    import torch

    from deepalign.errors import OptionError
    from deepalign.study import StudyOptions, _Study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    study = _Study(StudyOptions(out=str(tmp_path / "s"), workers=2, quiet=True))
    with pytest.raises(OptionError, match="workers.*on a GPU run the study with --workers 1"):
        study.check_workers()
    assert not (tmp_path / "s" / "world").exists()
    _Study(StudyOptions(out=str(tmp_path / "s"), workers=1, quiet=True)).check_workers()  # one process: fine
