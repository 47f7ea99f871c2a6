"""docs/real_models.md runs as written: its bash blocks, in order, in a fresh directory (tiny
random-init models with real tokenizers, a real `transformers serve`), and what it shows holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "real_models.md"


def test_real_model_walkthrough_runs_as_written(tmp_path):
    pytest.importorskip("mistral_common")
    pytest.importorskip("google.protobuf")
    pytest.importorskip("fastapi")
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 5
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = "set -euo pipefail\ntrap 'jobs -p | xargs -r kill 2>/dev/null' EXIT\n" + "\n".join(blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    runs = tmp_path / "runs"
    info = json.loads((runs / "tiny-derta" / "deepalign_train.json").read_text())
    assert info["lora"] and info["refusal_token"]["piece"] == " sorry" and info["steps"] == 4
    assert "What the models read" in (runs / "tiny-eval" / "report.md").read_text()
    rows = [json.loads(x) for x in (runs / "tiny-eval" / "responses.jsonl").read_text().splitlines()]
    assert all(r["prompt"]["rendered"].startswith("<s>[INST]") for r in rows)  # Mistral's own format, BOS once
    assert len((runs / "tiny-ed.jsonl").read_text().splitlines()) == 2 * 2
    served = [json.loads(x) for x in (runs / "tiny-served" / "responses.jsonl").read_text().splitlines()]
    by = {}
    for r in served:
        by.setdefault((r["attack"], r["item"]), {})[r["target"].split(":", 1)[0]] = r["response"]
    assert len(by) == 6 and all(v["openai"] == v["hf"].lstrip() for v in by.values()), by
    notes = json.loads((runs / "tiny-served" / "run.json").read_text())["target_notes"]
    assert any("rendered locally" in n for ns in notes.values() for n in ns)
    # without tokenizer=: one line, nothing written
    assert not (runs / "tiny-refused").exists()
    assert re.search(r"deepalign: error: server .* HTTP 422: .* tokenizer=", proc.stderr)
    # the LLM judge over the server: unreadable verdicts are counted as errors, never as safe
    cells = [c for c in json.loads((runs / "tiny-served" / "summary.json").read_text())["results"] if c["judge"] == "llm"]
    assert cells and all(c["errors"] == c["n"] and c["harmful"]["n"] == 0 for c in cells)


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
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(blocks)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
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
