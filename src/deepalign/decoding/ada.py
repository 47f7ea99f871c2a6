"""Any-Depth Alignment (ADA; Zhang et al., ICLR 2026, arXiv 2510.18081): a defence at inference
time that re-inserts the assistant header in the middle of a response and lets the model
reassess what it is writing. No weight changes.

Settings and their sources (the authors' code, javyduck/any-depth-alignment, which states it
holds the paper's values; the paper's text was not available to us):

- **the header**: the tokens the model's prompt format puts between the end of the user's query
  and the start of the response (:meth:`deepalign.tokens.Encoder.after_query`): for Llama-3
  ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``, the end-of-turn token and
  the assistant header, as the authors insert it; on the world ``<assistant>``. ADA-LP reads
  the header cut after its role token (``...<|start_header_id|>assistant``), as the authors'
  probe does; a header without a role word is read whole.
- **where**: every ``every`` tokens of the response (the authors' ``--depth 25``), forced tokens
  counted: a prefill of 32 tokens is checked at 25 when ``every`` is 25; an answer that ends at
  ``max_new_tokens`` on a checkpoint is checked there, one that ends by its end of sequence (or a
  stop string) is not checked again. Each check is a
  side branch: the header and anything decoded after it are dropped from the KV cache
  afterwards, so the response itself never contains them.
- **ADA-RK** (rethinking): after the header the model decodes greedily up to ``lookahead``
  tokens (the authors' 20); it refused when that text holds a refusal phrase, case-blind
  (the authors' fallback list ``i can't``, ``i can’t``, ``i cannot``; on the world its refusal
  phrases, ``sorry``, ``i cannot``, ``i will not``... :data:`deepalign.world.lexicon.REFUSAL_MARKERS`,
  which its oracle reads; ``refuse=`` overrides).
- **ADA-LP** (linear probe): the hidden state of the header's last token entering layer L (the
  output of that block's input norm), a logistic-regression probe
  (:mod:`deepalign.decoding.ada_probe`); harmful when its probability is at least
  ``threshold`` (0.5).
- **what the user receives**: when a check fires, generation stops and the response is the
  refusal ``refusal=`` (by default ``I'm sorry, but I can't help with that.``, the authors'
  demo server's; the world's own refusal on the world); the text written before the check is
  dropped, as that server drops it. The row keeps what happened in ``meta.defence``: the
  depth at which the check fired and the text it replaced.

The loop decodes every row of a batch in step on the response position (each row's forced
tokens first, then its own), so that every row reaches a checkpoint at the same step; forced
tokens that every row still has go in one forward, up to the next checkpoint.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.decoding.hf import Batched
from deepalign.decoding.output import continuation_text, find_stop, make_generation
from deepalign.errors import DeepAlignError
from deepalign.models import left_pad, logits_width

MODES = ("rk", "lp")
#: the authors' check interval (tokens of the response between two header insertions)
EVERY = 25
#: ADA-RK: tokens decoded after the header to see whether the model refuses (the authors' 20)
LOOKAHEAD = 20
#: ADA-LP: harmful when the probe's probability is at least this (the authors' 0.5)
THRESHOLD = 0.5
#: ADA-RK's refusal phrases when no other is known (the authors' fallback list)
REFUSAL_PHRASES = ("i can't", "i can\u2019t", "i cannot")
#: what the user receives when a check fires (the authors' demo server's refusal)
REFUSAL = "I'm sorry, but I can't help with that."
#: role words that end an assistant header's role token (ADA-LP reads the header up to it)
ROLE_WORDS = ("assistant", "model")


@dataclass(frozen=True)
class AdaSettings:
    """An ADA defence: ``mode`` ``rk`` or ``lp``, its check interval, ADA-RK's lookahead and
    refusal phrases, ADA-LP's probe and threshold, the refusal the user receives, and the
    world whose refusal words and refusal it takes by default."""

    mode: str
    every: int = EVERY
    lookahead: int = LOOKAHEAD
    refuse: tuple[str, ...] | None = None
    refusal: str | None = None
    probe: str | None = None
    threshold: float = THRESHOLD
    world: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise DeepAlignError(f"ADA mode must be rk or lp, got {self.mode!r}")
        if self.every < 1 or self.lookahead < 1:
            raise DeepAlignError(f"ADA every= and lookahead= must be >= 1, got {self.every} and {self.lookahead}")
        if not (0 < self.threshold < 1) or not math.isfinite(self.threshold):
            raise DeepAlignError(f"ADA threshold= must be in (0, 1), got {self.threshold}")
        if self.mode == "lp" and not self.probe:
            raise DeepAlignError("ada-lp needs its probe: ada-lp:<model>:<probe dir> or probe=<dir> "
                                 "(fit one with deepalign ada-probe)")
        if self.mode == "rk" and self.probe:
            raise DeepAlignError("ada-rk takes no probe (ADA-LP reads one: ada-lp:<model>:<probe dir>)")
        if self.refuse is not None and not [p for p in self.refuse if p.strip()]:
            raise DeepAlignError("ADA refuse= names no phrase")

    def phrases(self) -> list[str]:
        """ADA-RK's refusal phrases, lower-cased."""
        if self.refuse is not None:
            return [p.strip().lower() for p in self.refuse if p.strip()]
        if self.world is not None:
            from deepalign.world.lexicon import REFUSAL_MARKERS

            return [" ".join(m) for m in REFUSAL_MARKERS]  # the world's refusal phrases (its oracle's)
        return list(REFUSAL_PHRASES)

    def refusal_text(self) -> str:
        if self.refusal is not None:
            return self.refusal
        if self.world is not None:
            from deepalign.world.lexicon import REFUSAL_PREFIX

            return REFUSAL_PREFIX
        return REFUSAL

    def describe(self) -> dict:
        out = {"defence": f"ada-{self.mode}", "every": self.every}
        if self.mode == "rk":
            out.update(lookahead=self.lookahead, refuse=self.phrases())
        else:
            out.update(probe=self.probe, threshold=self.threshold)
        return out


def header_ids(encoder) -> list[int]:
    """The tokens the prompt format puts between the query and the response (ADA's header)."""
    probe_query = "hello"
    prompt = encoder.prompt_ids(probe_query)
    n = encoder.after_query(probe_query)
    if n <= 0:
        raise DeepAlignError(f"{encoder.name}: its prompt format ({encoder.format.describe()}) puts no token between "
                             "the query and the response, so ADA has no assistant header to re-insert; use a chat "
                             "format or a text template with a header after the query")
    header = prompt[-n:]
    unk = getattr(encoder.tokenizer, "unk_token_id", None)
    if unk is not None and unk in header:
        text = encoder.tokenizer.decode(header, skip_special_tokens=False)
        raise DeepAlignError(f"{encoder.name}: the assistant header {text!r} of its prompt format holds a token its "
                             "tokenizer cannot encode (the unknown token), so ADA cannot re-insert it; give the target "
                             "a format whose header the tokenizer knows")
    return header


def role_cut(tokenizer, ids: Sequence[int]) -> int:
    """How many of the header ``ids`` ADA-LP inserts: up to the token that completes the last
    role word (``assistant``, ``model``) of the header's text, else all of them."""
    def text(k: int) -> str:
        return tokenizer.decode(list(ids[:k]), skip_special_tokens=False).lower()

    full = text(len(ids))
    ends = [full.rfind(w) + len(w) for w in ROLE_WORDS if w in full]
    if not ends:
        return len(ids)
    end = max(ends)
    return next(k for k in range(1, len(ids) + 1) if len(text(k)) >= end)


def matches(text: str, phrases: Sequence[str]) -> bool:
    """Whether ``text`` holds one of ``phrases`` (case-blind, as whole words)."""
    low = text.lower()
    return any(re.search(r"(?<!\w)" + re.escape(p) + r"(?!\w)", low) for p in phrases)


@dataclass
class _Rows:
    """The running batch: per row its forced ids, generated ids, state, and the KV cache."""

    forced: list[list[int]]
    new: list[list[int]] = field(default_factory=list)
    running: list[bool] = field(default_factory=list)
    fired: dict[int, int] = field(default_factory=dict)  # row -> response depth at which a check fired
    closing: list[int] = field(default_factory=list)  # rows at their length on a checkpoint: checked, then done
    scores: dict[int, list] = field(default_factory=dict)  # row -> what each check read


class AdaTarget(Batched):
    """A local model (:class:`~deepalign.decoding.hf.HFTarget`) defended by ADA. Everything but
    ``generate`` (batches of the inner target's size, its generation settings) is the model's own
    (an attack reads its ranking, its gradients, its prompt)."""

    def __init__(self, inner, settings: AdaSettings):
        self.inner = inner
        self.settings = settings
        self.name = inner.name
        self.generation = inner.generation
        self.batch_size = inner.batch_size
        self.header = header_ids(inner.encoder)
        self.phrases = settings.phrases() if settings.mode == "rk" else []
        self.refusal = settings.refusal_text()
        self.probe = None
        if settings.mode == "lp":
            from deepalign.decoding.ada_probe import load_probe

            self.probe = load_probe(settings.probe, inner.model, inner.tokenizer, self.header)
            self.header = self.header[: self.probe.cut]
        import inspect

        # ids past the tokenizer (padding rows of the output layer) are never tokens to emit
        self._past_vocab = list(range(len(inner.tokenizer), logits_width(inner.model)))
        self._keep = "logits_to_keep" in inspect.signature(inner.model.forward).parameters

    def __getattr__(self, name):  # the model's own attributes (model, tokenizer, encoder, ids, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def render(self, request: Request) -> str:
        return self.inner.render(request)

    def next_logprobs(self, requests: Sequence[Request]):
        return self.inner.next_logprobs(requests)

    # -- the loop --------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate_batch(self, requests: list[Request], config: GenConfig) -> list[list[Generation]]:
        from deepalign.decoding.cache import reserved_cache

        inner, every = self.inner, self.settings.every
        extra = len(self.header) + (self.settings.lookahead if self.probe is None else 0)
        encoded = [inner.ids(r, config.max_new_tokens + extra) for r in requests]
        copies = config.num_samples if config.do_sample else 1
        encoded = [e for e in encoded for _ in range(copies)]
        reqs = [r for r in requests for _ in range(copies)]
        prompts = [ids[: len(ids) - len(f)] for ids, f in encoded]
        rows = _Rows(forced=[list(f) for _, f in encoded])
        n = len(encoded)
        rows.new, rows.running = [[] for _ in range(n)], [True] * n
        first = min(every, min(len(f) for f in rows.forced))
        ids, mask = left_pad([p + f[:first] for p, f in zip(prompts, rows.forced)], inner.pad, inner.device)
        # the KV cache that grows in place (decoding/cache.py): a check's side branch is cut back
        # with crop(), which leaves the kept positions a view of the same buffer
        self.cache = reserved_cache(inner.model, config.max_new_tokens + extra + max(len(f) for f in rows.forced))
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        logits = self._forward(ids, mask, pos)
        self.mask, self.last = mask, pos[:, -1:]
        t = first
        suppress = self._suppressed(config)
        gen = [torch.Generator().manual_seed(zlib.crc32(f"{config.seed}:{r.id}:{i % copies}".encode()))
               for i, r in enumerate(reqs)] if config.do_sample else None
        stops = tuple(s for s in config.stop_strings if s)
        while True:
            if t > 0 and t % every == 0:
                self._check(rows, t)
            for i in rows.closing:  # rows that reached their length on a checkpoint: checked, now done
                rows.running[i] = False
            rows.closing.clear()
            if not any(rows.running):
                break
            tokens = self._next(rows, t, logits, config, suppress, gen, prompts, stops)
            if not any(rows.running):
                break  # (a closing row is still running: it is fed, then checked)
            logits = self._feed(tokens)
            t += tokens.shape[1]
        return self._generations(requests, config, prompts, rows, copies)

    def _forward(self, ids, mask, pos):
        from deepalign.decoding.cache import cache_kwarg

        model = self.inner.model
        extra = {"logits_to_keep": 1} if self._keep else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    **{cache_kwarg(model): self.cache}, **extra)
        return out.logits[:, -1, :].float()

    def _feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (rows x c) to the running sequences; the last position's logits."""
        c = tokens.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], c))], dim=-1)
        pos = self.last + torch.arange(1, c + 1, device=self.last.device)
        self.last = pos[:, -1:]
        return self._forward(tokens, self.mask, pos)

    def _suppressed(self, config: GenConfig) -> torch.Tensor | None:
        ids = set(self._past_vocab) | (self.inner.eos if config.suppress_eos else set())
        return torch.tensor(sorted(ids), dtype=torch.long) if ids else None

    def _pick(self, logits: torch.Tensor, config: GenConfig, suppress, gen, rows: "_Rows", which: list[int]) -> dict:
        """The chosen token of each row in ``which``: greedy (the first index of the maximum) or
        sampled with the run's temperature, top-k and top-p, from the row's own generator."""
        scores = logits.clone()
        if suppress is not None:
            scores[:, suppress[suppress < scores.shape[1]]] = float("-inf")
        early = [i for i in which if len(rows.new[i]) < config.min_new_tokens]
        ends = [e for e in self.inner.eos if e < scores.shape[1]]
        if early and ends:
            scores[torch.tensor(early)[:, None], torch.tensor(ends)[None, :]] = float("-inf")
        if not config.do_sample:
            best = scores.argmax(-1).tolist()
            return {i: best[i] for i in which}
        out = {}
        for i in which:
            row = scores[i] / config.temperature
            if config.top_k:
                kth = torch.topk(row, min(config.top_k, row.shape[0])).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = row.softmax(-1)
            if config.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > config.top_p
                probs[order[drop]] = 0
                probs = probs / probs.sum()
            out[i] = int(torch.multinomial(probs, 1, generator=gen[i]))
        return out

    def _next(self, rows: _Rows, t: int, logits, config, suppress, gen, prompts, stops) -> torch.Tensor:
        """The next tokens of every row: a run of forced tokens that every running row still has
        (up to the next checkpoint), else one token a row, forced or chosen."""
        pad, every = self.inner.pad, self.settings.every
        live = [i for i, r in enumerate(rows.running) if r]
        room = min(len(rows.forced[i]) - t for i in live)
        if room > 0:
            c = min(room, every - t % every)
            out = [rows.forced[i][t:t + c] if rows.running[i] else [pad] * c for i in range(len(rows.forced))]
            return torch.tensor(out, dtype=torch.long, device=self.inner.device)
        chosen = self._pick(logits, config, suppress, gen, rows, [i for i in live if t >= len(rows.forced[i])])
        step = []
        for i, f in enumerate(rows.forced):
            if not rows.running[i]:
                step.append(pad)
            elif t < len(f):
                step.append(f[t])
            else:
                tok = chosen[i]
                rows.new[i].append(tok)
                step.append(tok)
                done = tok in self.inner.eos
                if not done and stops:
                    text = continuation_text(self.inner.tokenizer, prompts[i] + f, rows.new[i])
                    done = find_stop(text, stops) >= 0
                if done:
                    rows.running[i] = False
                elif len(rows.new[i]) >= config.max_new_tokens:
                    # an answer cut by its length on a checkpoint is still checked there
                    if (t + 1) % every == 0:
                        rows.closing.append(i)
                    else:
                        rows.running[i] = False
        return torch.tensor([step], dtype=torch.long, device=self.inner.device).T

    # -- the checks ------------------------------------------------------------------------
    def _check(self, rows: _Rows, depth: int) -> None:
        """Insert the header after ``depth`` tokens of every running row, let the model (RK) or
        the probe (LP) say whether it refuses, then drop the side branch from the cache."""
        keep_mask, keep_last, length = self.mask, self.last, self.cache.get_seq_length()
        n = len(rows.forced)
        header = torch.tensor([self.header] * n, dtype=torch.long, device=self.inner.device)
        try:
            if self.probe is not None:
                refused = self._probe(header, rows, depth)
            else:
                refused = self._rethink(header, rows, depth)
        finally:
            extra = self.cache.get_seq_length() - length
            if extra > 0:  # transformers 5 crops by a negative count of tokens to remove
                self.cache.crop(-extra)
            self.mask, self.last = keep_mask, keep_last
        for i in refused:
            if rows.running[i]:
                rows.running[i] = False
                rows.fired[i] = depth

    def _probe(self, header, rows: _Rows, depth: int) -> list[int]:
        states = self.probe.read(self.inner.model, lambda: self._feed(header))
        probs = self.probe.probability(states[:, -1, :]).tolist()
        for i, p in enumerate(probs):
            if rows.running[i]:
                rows.scores.setdefault(i, []).append([depth, round(p, 4)])
        return [i for i, p in enumerate(probs) if p >= self.settings.threshold]

    def _rethink(self, header, rows: _Rows, depth: int) -> list[int]:
        inner = self.inner
        logits = self._feed(header)
        n = header.shape[0]
        said: list[list[int]] = [[] for _ in range(n)]
        open_ = [rows.running[i] for i in range(n)]
        banned = self._past_vocab
        hit = [False] * n
        for step in range(self.settings.lookahead):
            scores = logits.clone()
            if banned:
                scores[:, banned] = float("-inf")
            nxt = scores.argmax(-1).tolist()
            for i in range(n):
                if open_[i]:
                    if nxt[i] in inner.eos:
                        open_[i] = False
                    else:
                        said[i].append(nxt[i])
                        # a row that has said a refusal phrase is decided: it decodes no further
                        if matches(inner.tokenizer.decode(said[i], skip_special_tokens=True), self.phrases):
                            hit[i], open_[i] = True, False
            if not any(open_) or step + 1 == self.settings.lookahead:
                break
            feed = [nxt[i] if open_[i] else inner.pad for i in range(n)]
            logits = self._feed(torch.tensor([feed], dtype=torch.long, device=inner.device).T)
        refused = []
        for i in range(n):
            if not rows.running[i]:
                continue
            rows.scores.setdefault(i, []).append([depth, inner.tokenizer.decode(said[i], skip_special_tokens=True)])
            if hit[i]:
                refused.append(i)
        return refused

    def _generations(self, requests, config, prompts, rows: _Rows, copies: int) -> list[list[Generation]]:
        from deepalign.decoding.hf import mark_forced

        inner = self.inner
        out: list[list[Generation]] = []
        for r_i, req in enumerate(requests):
            gens = []
            for s in range(config.num_samples):
                i = r_i * copies + (s if copies > 1 else 0)
                context = prompts[i] + rows.forced[i]
                g = make_generation(inner.tokenizer, req.id, s, context, rows.new[i], inner.eos, config.stop_strings)
                record = {"defence": f"ada-{self.settings.mode}", "checks": rows.scores.get(i, [])}
                if i in rows.fired:
                    record.update(fired_at=rows.fired[i], replaced=g.text)
                    ids = inner.tokenizer.encode(self.refusal, add_special_tokens=False)
                    g = Generation(req.id, s, self.refusal, len(ids), finish_reason="stop", token_ids=list(ids))
                g.defence = record
                gens.append(g)
            out.append(gens)
        forced = [rows.forced[r_i * copies] for r_i in range(len(requests))]
        return mark_forced(out, forced, inner.tokenizer)
