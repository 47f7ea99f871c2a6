"""The study: one command chains the public stages, writes the report with its claims, and
reuses finished stages on rerun."""

from __future__ import annotations

import json
import shutil

from deepalign.cli import main
from deepalign.study import run_study

CLAIMS = {
    "refusal position bias", "prefill attacks break vanilla, not DeRTa", "helpfulness kept", "ablation order",
    "ED raises harm above the base model", "alignment backfires under ED",
}


def test_study_end_to_end_and_reuse(world_dir, base_model_dir, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    shutil.copytree(world_dir, out / "world")
    shutil.copytree(base_model_dir, out / "base")
    kwargs = dict(out=str(out), quiet=True, limit=3, train_steps=2, depths=(0, 8), alphas=(0.5,), ed_samples=1,
                  max_new_tokens=8, batch_size=8)
    results = run_study(**kwargs)
    assert {"world", "pretrain"} <= set(results["timing"]["reused"])
    for recipe in ("vanilla", "harmful-prefix", "rto", "derta", "dpo"):
        assert (out / "models" / recipe / "config.json").exists()
    claims = {c["name"]: c for c in results["claims"]}
    assert set(claims) == CLAIMS
    assert all(c["status"] in ("PASS", "FAIL") for c in claims.values())
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "## Emulated Disalignment" in report
    for c in claims.values():
        assert f"**{c['status']}** {c['name']}" in report
    for png in ("depth_profile.png", "attack_asr.png"):
        assert (out / png).stat().st_size > 1000
    table = results["attack_table"]
    assert set(table["direct"]) == {"base", "vanilla", "harmful-prefix", "rto", "derta", "dpo"}
    rows = [json.loads(x) for x in (out / "eval" / "attacks" / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["key"] for r in rows})

    again = run_study(**kwargs)  # everything finished: nothing is trained or generated again
    assert {"world", "pretrain", "train vanilla", "train dpo"} <= set(again["timing"]["reused"])
    rows2 = (out / "eval" / "attacks" / "responses.jsonl").read_text().splitlines()
    assert len(rows2) == len(rows)
    assert again["attack_table"] == results["attack_table"]


def test_study_errors(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "s"), "--base", "some/model"]) == 2
    assert "--triples" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "s"), "--alphas", "-1"]) == 2
    assert "alphas" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
