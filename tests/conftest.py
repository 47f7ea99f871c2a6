"""Shared fixtures: a micro world and a micro base model trained in the test session.

They are small and quick (about 20 s on 2 CPU cores), not good: tests that need a model
that *behaves* (refuses, complies) train their own on top of ``base_model_dir`` or use the
study's benchmarks.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# validations registered by the tests go to a directory of the test session, not the user's
os.environ["DEEPALIGN_HOME"] = tempfile.mkdtemp(prefix="deepalign-home-")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    from deepalign.world.generator import build_world

    out = tmp_path_factory.mktemp("world") / "world"
    build_world(out=str(out), seed=0, quiet=True, n_pretrain=3000, n_train_triples=120, n_train_helpful=240,
                n_test_harmful=24, n_test_unseen=24, n_test_benign=24, n_test_helpful=24, n_dev_harmful=24,
                n_dev_unseen=24, n_dev_benign=24)
    return out


@pytest.fixture(scope="session")
def base_model_dir(world_dir, tmp_path_factory):
    from deepalign.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("base") / "base"
    pretrain(world=str(world_dir), out=str(out), quiet=True, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
             max_steps=60, per_device_train_batch_size=8, save_steps=1000)
    return out
