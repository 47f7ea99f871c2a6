"""Random insertion (arXiv 2606.04168, "When Autoregressive Consistency Hurts Safety
Alignment"): a short harmful span inserted into the model's own refusal redirects the rest of
the answer, even after a long refusal.

``insert:K[:span=N]``: the target first answers the query greedily for ``K`` tokens (its own
refusal, on a refusing model); then the first ``N`` tokens of the item's reference harmful
answer are written after them, as they read mid-text in the target's own tokenisation; then
the target decodes freely from there. The judges see that continuation (``--judge_scope
full`` adds the refusal and the span). Where the model's own answer ends before ``K`` tokens,
the span follows all of it. The run log records per row where the span went, the model's
own tokens before it, and the span's ids and text.

Only the paper's abstract was available when this was written: the insertion point ``K`` is
an argument here (the paper draws it at random; a fixed ``K`` makes rows comparable across
models), and ``span=8`` by default is deepalign's choice (the shortest prefill depth of the
study), not a setting taken from the paper.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from deepalign.attacks.base import Attack, AttackOutput, Attacked, check_generations, forced_meta
from deepalign.attacks.basic import words_of
from deepalign.attacks.rap import target_encoder
from deepalign.attacks.registry import register
from deepalign.decoding.base import GenConfig, Request
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt

DEFAULT_SPAN = 8


class Insertion(Attack):
    family = "insert"
    judge_sees = "continuation"
    forced = "tokens"
    unit = "tokens"
    needs_local = "writes token ids into the target's own answer"

    def __init__(self, k: int, span: int = DEFAULT_SPAN, label: str | None = None):
        if k < 0:
            raise DeepAlignError(f"insert: the insertion point must be >= 0 tokens, got {k}")
        if span < 1:
            raise DeepAlignError(f"insert: span must be >= 1 token, got {span}")
        self.k, self.span = k, span
        self.depth = span
        self.label = label or f"insert:{k}" + (f":span={span}" if span != DEFAULT_SPAN else "")

    def params(self) -> dict:
        return {"after": self.k, "span": self.span}

    def applies(self, item: EvalPrompt) -> bool:
        return bool(item.harmful)

    def prepare(self, item: EvalPrompt) -> Attacked:
        """The span's text as the forced start (what the vocabulary check reads); the request
        :meth:`run` sends forces the model's own tokens and the span as ids."""
        if not item.harmful:
            raise DeepAlignError(f"attack {self.label} needs a reference harmful response; item {item.id!r} has none")
        text, _ = words_of(item.harmful, None)
        return Attacked(Request(id=item.id, query=item.prompt, prefill=text, prefill_tokens=self.span),
                        meta={"depth": self.span, "depth_unit": "tokens"})

    def run(self, target, items: Sequence[EvalPrompt], config: GenConfig) -> list[list[AttackOutput]]:
        from deepalign.training.refusal import word_pieces

        enc = target_encoder(target)
        if enc is None:
            raise DeepAlignError(f"attack {self.label} writes token ids into the target's answer, which needs a local "
                                 f"target (target {getattr(target, 'name', 'target')} is not one)")
        plain = [replace(self.attacked(it).request, prefill="", prefill_tokens=None) for it in items]
        own: list[list[int]] = [[] for _ in items]
        if self.k:
            first = target.generate(plain, GenConfig(max_new_tokens=self.k))
            check_generations(target, plain, first, 1)
            for i, per in enumerate(first):
                if per[0].token_ids is None:
                    raise DeepAlignError(f"attack {self.label}: target {getattr(target, 'name', 'target')} does not "
                                         "return the token ids of its answers")
                own[i] = list(per[0].token_ids)
        requests, metas = [], []
        for it, req, mine in zip(items, plain, own):
            text, _ = words_of(it.harmful, None)
            span = (word_pieces(enc.tokenizer, text) if mine else
                    enc.response_ids(req.query, text, system=req.system, end=False))[: self.span]
            if not span:
                raise DeepAlignError(f"attack {self.label}: item {it.id!r}'s harmful response tokenises to nothing")
            ids = mine + span
            requests.append(replace(req, prefill_ids=tuple(ids),
                                    prefill=enc.tokenizer.decode(ids, skip_special_tokens=True)))
            metas.append({"depth": len(span), "depth_unit": "tokens",
                          "insert": {"after": len(mine), "own_ids": mine,
                                     "own_text": enc.tokenizer.decode(mine, skip_special_tokens=True),
                                     "span_ids": span, "span_text": enc.tokenizer.decode(span, skip_special_tokens=True)}})
        gens = target.generate(requests, config)
        check_generations(target, requests, gens, config.num_samples)
        out = []
        for req, meta, per in zip(requests, metas, gens):
            rows = []
            for g in per:
                m = forced_meta(meta, g)
                m["prefill_len"] = meta["depth"]  # the harmful tokens forced, not the model's own before them
                rows.append(AttackOutput(req, g.text, g.text, g.num_tokens, g.finish_reason, m))
            out.append(rows)
        return out


@register("insert", "random insertion (arXiv 2606.04168): insert:K[:span=N]: the target's own first K tokens, then "
                    "N tokens of the harmful reference, then free decoding")
def _insert(args, context):
    from deepalign.attacks.basic import token_count

    k = token_count(args, "the insertion point", "insert:16")
    span = args.option("span", DEFAULT_SPAN, int)
    args.done(1)
    return [Insertion(k, span)]
