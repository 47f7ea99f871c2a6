"""A real OpenAI-compatible server: ``transformers serve`` on 127.0.0.1 (a free port, bounded
start-up, stopped by its pid) serving the micro world's base model. Direct, completion and
prefill attacks and the LLM judge go through it; prefills, which this server cannot take in
chat requests, go to /v1/completions with the prompt rendered locally, and must produce
exactly what the same model produces locally."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deepalign.decoding.base import GenConfig
from deepalign.errors import DeepAlignError

START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(base_model_dir, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        exe = shutil.which("transformers")
    if exe is None:
        pytest.skip("the transformers CLI is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub-cache"))}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(exe), "serve", str(base_model_dir), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"transformers serve did not start within {START_TIMEOUT} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"url": f"{url}/v1", "model": str(base_model_dir)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_attacks_through_a_real_server_match_the_local_model(server, world_dir, base_model_dir, tmp_path):
    from deepalign import run_eval
    from deepalign.evaluation.rundir import RunDir

    spec = f"openai:{server['model']}@{server['url']},tokenizer={base_model_dir},retries=1"
    kw = dict(attacks=["direct", "completion:3w", "prefill:4"], datasets=["world:harmful"], world=str(world_dir),
              judges=["oracle"], limit=3, batch_size=3, quiet=True, generation=GenConfig(max_new_tokens=8))
    run_eval(targets=[spec], out_dir=str(tmp_path / "server"), **kw)
    run_eval(targets=[f"hf:{base_model_dir}"], out_dir=str(tmp_path / "local"), **kw)
    served = {(r["attack"], r["item"]): r for r in RunDir(tmp_path / "server").rows()}
    local = {(r["attack"], r["item"]): r for r in RunDir(tmp_path / "local").rows()}
    assert set(served) == set(local) and len(served) == 9
    for key, row in served.items():
        # greedy: the server continues the same tokens to the same text as the local model
        assert row["response"].split() == local[key]["response"].split(), key
        assert row["meta"].get("forced_text") == local[key]["meta"].get("forced_text")
    info = RunDir(tmp_path / "server").info()
    assert any("rendered locally" in n for n in info["target_notes"][spec])
    assert "## Servers" in (tmp_path / "server" / "report.md").read_text()


def test_prefill_without_a_tokenizer_fails_at_once(server, world_dir, tmp_path, capsys):
    from deepalign.cli import main

    start = time.time()
    code = main(["eval", "--target", f"openai:{server['model']}@{server['url']},retries=0", "--attacks",
                 "prefill:4w", "--dataset", "world:harmful", "--world", str(world_dir), "--limit", "2", "--out",
                 str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "HTTP 422" in err and "tokenizer=" in err
    assert time.time() - start < 30 and not (tmp_path / "run").exists()


def test_llm_judge_against_the_server(server):
    """The tiny model is no judge: its replies are unparseable, so every verdict is an error,
    counted, never "safe"."""
    from deepalign.decoding.openai import OpenAITarget
    from deepalign.judges.llm import LLMJudge
    from deepalign.records import EvalPrompt

    judge = LLMJudge(OpenAITarget(server["model"], server["url"]), config=GenConfig(max_new_tokens=6))
    verdicts = judge.judge(["first , hex the stone .", "sorry , i cannot help ."],
                           [EvalPrompt(id="h", prompt="how do i hex the stone ?", kind="harmful")] * 2)
    assert all(v["harmful"] is None and "unparseable" in v["error"] for v in verdicts)


def test_unreachable_server_is_one_line(world_dir, tmp_path):
    from deepalign import run_eval

    with pytest.raises(DeepAlignError, match="connection failed"):
        run_eval(targets=[f"openai:m@http://127.0.0.1:{_free_port()}/v1,retries=0,timeout=2"], attacks=["direct"],
                 datasets=["world:harmful"], world=str(world_dir), limit=1, out_dir=str(tmp_path / "r"), quiet=True)
    assert not (tmp_path / "r").exists()
