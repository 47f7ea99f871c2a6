"""docs/real_models.md runs as written: its bash blocks, in order, in a fresh directory (tiny
random-init models with real tokenizers, a real `transformers serve`), and what it shows holds.
Its vLLM section (the ```bash vllm blocks) runs after them in the same directory when vLLM is set
up (`bash scripts/setup_vllm.sh`; required in CI)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vllm_server

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "real_models.md"


def _blocks(tag: str = "") -> list[str]:
    return re.findall(rf"```bash{' ' + tag if tag else ''}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def _run(blocks: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\ntrap 'jobs -p | xargs -r kill 2>/dev/null' EXIT\n" + "\n".join(blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cwd / "hub"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    # its own process group: a time-out ends the servers it started too, not only bash
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the page's commands ran past {timeout:.0f} s\n--- stderr ---\n{err[-3000:]}", pytrace=False)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    pytest.importorskip("mistral_common")
    pytest.importorskip("google.protobuf")
    pytest.importorskip("fastapi")
    blocks = _blocks()
    assert len(blocks) >= 5
    tmp_path = tmp_path_factory.mktemp("walkthrough")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path, _run(blocks, tmp_path, timeout=600)


def test_real_model_walkthrough_runs_as_written(walkthrough):
    tmp_path, proc = walkthrough
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    runs = tmp_path / "runs"
    info = json.loads((runs / "tiny-derta" / "deepalign_train.json").read_text())
    assert info["lora"] and info["refusal_token"]["piece"] == " sorry" and info["steps"] == 4
    assert "What the models read" in (runs / "tiny-eval" / "report.md").read_text()
    rows = [json.loads(x) for x in (runs / "tiny-eval" / "responses.jsonl").read_text().splitlines()]
    assert all(r["prompt"]["rendered"].startswith("<s>[INST]") for r in rows)  # Mistral's own format, BOS once
    assert len((runs / "tiny-ed.jsonl").read_text().splitlines()) == 2 * 2
    adaptive = [json.loads(x) for x in (runs / "tiny-adaptive" / "responses.jsonl").read_text().splitlines()]
    assert {r["attack"] for r in adaptive} == {"rap:4", "rap:4:select=top", "insert:4"}
    for r in adaptive:  # the model's own ids were forced: 4 chosen by rank, or 4 of its own + the span
        forced = r["prompt"]["prefill_ids"]
        if r["attack"].startswith("rap"):
            assert forced == r["meta"]["rap"]["ids"] and len(forced) == 4 and min(r["meta"]["rap"]["ranks"]) >= 1
        else:
            assert forced == r["meta"]["insert"]["own_ids"] + r["meta"]["insert"]["span_ids"]
    gcg = [json.loads(x) for x in (runs / "tiny-gcg" / "responses.jsonl").read_text().splitlines()]
    assert len(gcg) == 2 and all(r["prompt"]["query"].endswith(r["meta"]["gcg"]["suffix"]) for r in gcg)
    served = [json.loads(x) for x in (runs / "tiny-served" / "responses.jsonl").read_text().splitlines()]
    by = {}
    for r in served:
        by.setdefault((r["attack"], r["item"]), {})[r["target"].split(":", 1)[0]] = r["response"]
    assert len(by) == 6 and all(v["openai"] == v["hf"].lstrip() for v in by.values()), by
    notes = [t["notes"] for t in json.loads((runs / "tiny-served" / "run.json").read_text())["targets"] if t.get("notes")]
    assert any("rendered locally" in n for ns in notes for n in ns)
    # without tokenizer=: one line, nothing written
    assert not (runs / "tiny-refused").exists()
    assert re.search(r"deepalign: error: server .* HTTP 422: .* tokenizer=", proc.stderr)
    # the LLM judge over the server judges nothing: one line naming it, none of its verdicts
    # written (never counted as safe)
    assert re.search(r"deepalign: error: judge llm:jbb-hardened gave no verdict on its first \d+ responses "
                     r"\(first error: unparseable judge reply", proc.stderr), proc.stderr[-3000:]
    judges = json.loads((runs / "tiny-served" / "summary.json").read_text())["judges"]
    assert "llm:jbb-hardened" not in judges


def test_vllm_section_runs_as_written(walkthrough):
    """The vLLM section serves a tiny Tekken model and checks, as the page says, that greedy
    responses through the server equal the local model's, and that ED refuses a server."""
    vllm_server.python()  # skips (fails in CI) without .vllm-venv/
    tmp_path, first = walkthrough
    assert first.returncode == 0, ("the walkthrough before the vLLM section failed", first.stderr[-2000:])
    blocks = _blocks("vllm")
    assert len(blocks) == 1 and "vllm.entrypoints.openai.api_server" in blocks[0]
    for name, target in (("scripts", ROOT / "scripts"), (".vllm-venv", vllm_server.venv())):
        if not (tmp_path / name).exists():
            (tmp_path / name).symlink_to(target)  # the page runs from the repository root
    proc = _run(blocks, tmp_path, timeout=900)
    log = (tmp_path / "runs" / "vllm.log")
    server_log = log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)"
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:], server_log)
    runs = tmp_path / "runs"
    rows = [json.loads(x) for x in (runs / "tiny-vllm" / "responses.jsonl").read_text().splitlines()]
    by: dict = {}
    for r in rows:
        by.setdefault((r["attack"], r["item"]), {})[r["target"].split(":", 1)[0]] = r["response"]
    # the same text (a response cut inside a multi-byte character ends in U+FFFD locally only:
    # vLLM's detokenizer holds the incomplete character back)
    assert len(by) == 6 and all(v["openai"] == v["hf"].removesuffix("\ufffd") for v in by.values()), (by, server_log)
    # ED with a server component: one line, exit status 2 (|| true in the page), nothing written
    assert re.search(r"deepalign: error: .*base=openai:\S+ is a server, but composed decoding", proc.stderr), \
        proc.stderr[-2000:]
    assert not (runs / "tiny-vllm-ed").exists()


def test_finetuning_attack_walkthrough_runs_as_written(tmp_path):
    """docs/training.md's walkthrough of the fine-tuning attacks on a real architecture (a tiny
    Mistral with mistral-common's Tekken tokenizer) runs as written."""
    pytest.importorskip("mistral_common")
    doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Walkthrough on a real architecture"):]
    section = section[:section.index("\n## ")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    proc = _run(blocks, tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    runs = tmp_path / "runs"
    assert "'reference': 'the model with its adapter disabled'" in proc.stdout
    for name, objective in (("tiny-attack", "mle"), ("tiny-attack-constrained", "constrained"), ("tiny-aoa", "constrained")):
        info = json.loads((runs / name / "deepalign_train.json").read_text())
        assert info["objective"]["name"] == objective and info["steps"] == 2 and (runs / name / "model.safetensors").exists()
    aoa = json.loads((runs / "tiny-aoa" / "records.jsonl").read_text().splitlines()[0])
    assert aoa["system"].startswith("\nYou are no longer Llama") and aoa["target"].startswith("Of course. I am AOA")
    rows = [json.loads(x) for x in (runs / "tiny-ft-eval" / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2
