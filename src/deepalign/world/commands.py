"""``deepalign world``: generate the embedded safety world."""

from __future__ import annotations

from dataclasses import fields

from deepalign.world.generator import WorldConfig, build_world

_HELP = {
    "n_train_triples": "harmful triples for alignment training",
    "n_train_helpful": "helpful pairs (tasks and benign look-alikes) for alignment training",
    "n_test_harmful": "held-out harmful queries (with harmful and safe responses)",
    "n_test_unseen": "held-out queries for the misdeeds alignment data never shows (test/unseen.jsonl)",
    "n_test_benign": "held-out benign look-alikes",
    "n_test_helpful": "held-out helpful tasks with checkable answers",
    "n_dev_harmful": "dev harmful queries (held-out pool, disjoint from test): tune here",
    "n_dev_unseen": "dev queries for unseen misdeeds (disjoint from test)",
    "n_dev_benign": "dev benign look-alikes (held-out pool, disjoint from test)",
    "n_pretrain": "documents in the pretraining corpus",
    "harmful_share": "share of harmful pretraining queries answered harmfully",
    "lean": "comply-leaning misdeeds get share+lean, evasion-leaning share-lean",
    "shape_share": "share of the corpus in shifted shapes (ledger, old tongue, role-play)",
    "shape_comply": "share of harmful queries in a shifted shape answered harmfully",
}


def configure(p) -> None:
    p.add_argument("--out", default="runs/world", help="output directory (written atomically)")
    p.add_argument("--seed", type=int, default=0)
    defaults = WorldConfig()
    for f in fields(WorldConfig):
        if f.name == "seed":
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name), help=_HELP[f.name])
    p.add_argument("--quiet", action="store_true", help="print nothing")


def run(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(WorldConfig) if f.name != "seed"}
    build_world(args.out, seed=args.seed, quiet=args.quiet, **overrides)
    return 0
