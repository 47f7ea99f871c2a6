"""GCG, greedy coordinate gradient (Zou et al. 2023, "Universal and Transferable Adversarial
Attacks on Aligned Language Models"): an optimised suffix after the query that makes the model
begin its answer with a target string. HarmBench's central attack.

deepalign carries its own GCG, with nanoGCG's settings and defaults (GraySwanAI/nanoGCG 0.3.0,
``GCGConfig``): 250 steps, a search width of 512 candidates, the top 256 tokens per position,
one position replaced per candidate, no buffer (``buffer=N`` keeps the N best suffixes and
starts from nanoGCG's random initial buffer), cross-entropy on the target tokens or mellowmax
(``mellowmax``, ``mellowmax_alpha=1``), early stopping on an exact match (``early_stop``),
non-ASCII tokens excluded (``allow_non_ascii``), candidates that do not tokenise back to
themselves dropped (``filter_ids``). ``tests/test_gcg_reference.py`` checks its token gradients,
sampled candidates and candidate losses against nanoGCG itself, run in its own environment
(``scripts/setup_nanogcg.sh``: nanoGCG pins ``transformers<=4.47.1``). Its differences, each
for exactness or speed:

- the prompt is the target's own: the suffix goes into the user turn (after the query and
  ``join``, one space by default so that word-level tokenizers read it as words; ``join=none``
  appends it as nanoGCG does) and the template is split around it; the target string is
  tokenised as the target's format places a response after the prompt;
- a candidate is kept only when the *whole* prompt, rendered and tokenised again with the
  candidate's text, gives the ids that were optimised, so the request the target finally
  answers is the one GCG optimised;
- special tokens are never candidates (nanoGCG excludes only BOS, EOS, PAD and UNK);
- the items of a batch are optimised together: their gradients come from one forward and
  backward pass, their candidates' losses from forward passes of up to ``batch`` rows
  (left-padded, each row at its own positions); each item samples from its own random
  generator seeded by (seed, item id), so an item's suffix does not depend on its batch.

Probe sampling (nanoGCG's ``ProbeSamplingConfig``, a draft model ranking the candidates) is not
implemented. The run log records per row the suffix (ids and text), its loss and the step it
was found at.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch

from deepalign.attacks.base import Attack, AttackOutput, Attacked, check_generations, forced_meta
from deepalign.attacks.registry import register
from deepalign.decoding.base import GenConfig, Request
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt

#: nanoGCG 0.3.0's ``GCGConfig.optim_str_init``
NANOGCG_INIT = "x x x x x x x x x x x x x x x x x x x x"
#: Zou et al. 2023's initial suffix (llm-attacks, demo.ipynb: ``adv_string_init``), for
#: vocabularies without "x" (the embedded world)
GCG_PAPER_INIT = "! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! !"
MARK = "{optim_str}"  # where the suffix goes in the rendered prompt (nanoGCG's placeholder)


@dataclass(frozen=True)
class GCGSettings:
    """nanoGCG's ``GCGConfig`` fields and defaults, under short names, plus deepalign's own."""

    steps: int = 250
    width: int = 512
    topk: int = 256
    n_replace: int = 1
    buffer: int = 0
    mellowmax: bool = False
    mellowmax_alpha: float = 1.0
    early_stop: bool = False
    allow_non_ascii: bool = False
    filter_ids: bool = True
    init: str | None = None  # None: nanoGCG's, or the GCG paper's where the vocabulary has no "x"
    seed: int = 0
    join: str = " "
    batch: int = 512  # candidate rows per forward pass

    def check(self) -> None:
        for name, low in (("steps", 1), ("width", 1), ("topk", 1), ("n_replace", 1), ("buffer", 0), ("batch", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise DeepAlignError(f"gcg {name} must be an integer >= {low}, got {value!r}")
        if not (math.isfinite(self.mellowmax_alpha) and self.mellowmax_alpha > 0):
            raise DeepAlignError(f"gcg mellowmax_alpha must be a finite number > 0, got {self.mellowmax_alpha!r}")
        if self.mellowmax_alpha != 1.0 and not self.mellowmax:
            raise DeepAlignError("gcg mellowmax_alpha is read only with mellowmax")
        if self.init is not None and not self.init.strip():
            raise DeepAlignError("gcg init must hold at least one token")


@dataclass
class Problem:
    """One item's optimisation: the ids before the suffix, after it, and the target's."""

    item: EvalPrompt
    query: str  # the query the suffix is joined to
    before: list[int]
    after: list[int]
    target: list[int]
    target_text: str
    text: tuple[list[int], str, str] = ([], "", "")  # the prompt around the suffix: leading ids, text before, after
    init: list[int] = field(default_factory=list)  # the initial suffix's ids as they read after the query


def split_prompt(enc, query: str, system: str | None) -> tuple[list[int], str, str]:
    """The prompt around what follows ``query`` by the target's own format: its leading ids (a
    text format's BOS), and its text before (ending with the query) and after."""
    if getattr(enc, "by_ids", False):
        raise DeepAlignError(f"gcg needs a prompt format with text around the query; {enc.name}'s tokenizer renders "
                             "chats as ids only")
    head, text = enc._head_and_text(query + MARK, system)
    if text.count(MARK) != 1:
        raise DeepAlignError(f"gcg cannot place its suffix in {enc.name}'s prompt format (the query is not kept as is)")
    pre, post = text.split(MARK)
    return head, pre, post


def not_allowed(tokenizer, allow_non_ascii: bool, size: int) -> torch.Tensor:
    """Ids a suffix never takes: special tokens, and (nanoGCG's rule) tokens whose text is not
    printable ASCII unless allowed."""
    bad = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            bad.add(int(value))
    if not allow_non_ascii:
        for i in range(size):
            text = tokenizer.decode([i])
            if not (text.isascii() and text.isprintable()):
                bad.add(i)
    return torch.tensor(sorted(i for i in bad if i < size), dtype=torch.long)


def mellowmax(t: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Mellowmax (Asadi & Littman 2017), as nanoGCG applies it to negative target logits."""
    n = torch.tensor(float(t.shape[dim]), dtype=t.dtype, device=t.device)
    return (torch.logsumexp(alpha * t, dim=dim) - torch.log(n)) / alpha


def sample_candidates(ids: torch.Tensor, grad: torch.Tensor, width: int, topk: int, n_replace: int,
                      banned: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``width`` copies of ``ids``, each with ``n_replace`` random positions set to one of the
    ``topk`` tokens of most negative gradient there (nanoGCG's ``sample_ids_from_grad``: the
    same random draws in the same order, from ``generator``)."""
    grad = grad.clone()
    if len(banned):
        grad[:, banned] = float("inf")
    top = (-grad).topk(topk, dim=1).indices
    n = ids.shape[0]
    pos = torch.argsort(torch.rand((width, n), generator=generator), dim=-1)[..., :n_replace]
    val = torch.gather(top[pos], 2, torch.randint(0, topk, (width, n_replace, 1), generator=generator)).squeeze(2)
    return ids.repeat(width, 1).scatter_(1, pos, val)


class Optimiser:
    """Token gradients and candidate losses of many problems on one model, batched."""

    def __init__(self, model, pad: int, settings: GCGSettings):
        self.model, self.pad, self.s = model, pad, settings
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        import inspect

        self.keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._prefixes: dict[tuple, object] = {}  # problems (by identity) -> their cached prefix

    def _rows(self, rows: list[list[int]]):
        """Left-padded ids, their mask, and each row's positions from its first token."""
        from deepalign.models import left_pad

        ids, mask = left_pad(rows, self.pad, self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)

    @staticmethod
    def _exact(logits: torch.Tensor, targets: list[list[int]]) -> list[bool]:
        """Per row: whether the model's top token at every target position is the target's."""
        out = []
        for i, tgt in enumerate(targets):
            n = len(tgt)
            out.append(logits[i, logits.shape[1] - n - 1: logits.shape[1] - 1].argmax(-1).tolist() == tgt)
        return out

    def _loss(self, logits: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Per row: the mean cross-entropy of its target tokens (or mellowmax of the negative
        target logits), ``logits`` holding the last positions of right-aligned rows."""
        out = []
        for i, tgt in enumerate(targets):
            n = len(tgt)
            lg = logits[i, logits.shape[1] - n - 1: logits.shape[1] - 1]
            labels = torch.tensor(tgt, dtype=torch.long, device=lg.device)
            if self.s.mellowmax:
                picked = lg.gather(-1, labels[:, None]).squeeze(-1)
                out.append(mellowmax(-picked, self.s.mellowmax_alpha))
            else:
                out.append(torch.nn.functional.cross_entropy(lg, labels))
        return torch.stack(out)

    def _forward(self, embeds, mask, pos, keep: int):
        extra = {"logits_to_keep": keep} if self.keep_arg else {}
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False,
                            **extra).logits
        return logits if self.keep_arg else logits[:, -keep:]

    def gradients(self, problems: Sequence[Problem], suffixes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per problem, the gradient of its loss with respect to the one-hot matrix of its suffix."""
        rows = [p.before + s.tolist() + p.after + p.target for p, s in zip(problems, suffixes)]
        ids, mask, pos = self._rows(rows)
        weight = self.embed.weight
        onehots = [torch.nn.functional.one_hot(s.to(self.device), weight.shape[0]).to(weight.dtype).requires_grad_()
                   for s in suffixes]
        base = self.embed(ids)
        parts = []
        width = ids.shape[1]
        for i, (p, oh) in enumerate(zip(problems, onehots)):
            start = width - len(rows[i]) + len(p.before)
            row = torch.cat([base[i, :start], oh @ weight, base[i, start + oh.shape[0]:]], dim=0)
            parts.append(row)
        embeds = torch.stack(parts)
        keep = max(len(p.target) for p in problems) + 1
        loss = self._loss(self._forward(embeds, mask, pos, keep), [p.target for p in problems])
        grads = torch.autograd.grad(loss.sum(), onehots)
        return [g.detach() for g in grads]

    def _prefix(self, problems: Sequence[Problem]):
        """The keys and values of every problem's ids before the suffix (one left-padded forward
        pass), with their attention mask and lengths; None for a model whose cache layers are
        not plain full-attention ones (its candidates then run whole)."""
        from transformers.cache_utils import DynamicLayer

        ids, mask, pos = self._rows([p.before for p in problems])
        extra = {"logits_to_keep": 1} if self.keep_arg else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        cache = out["cache"] if "cache" in out else out.get("past_key_values")  # the name before transformers 5.24
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers], mask, [len(p.before) for p in problems]

    def _with_prefix(self, prefix, owner: list[int], rest: list[list[int]], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of each row ``rest[i]`` after problem
        ``owner[i]``'s cached prefix."""
        from transformers import DynamicCache

        from deepalign.decoding.cache import cache_kwarg

        kv, pmask, plen = prefix
        idx = torch.tensor(owner, device=self.device)
        cache = DynamicCache()
        for layer, (k, v) in enumerate(kv):
            cache.update(k[idx], v[idx], layer)
        ids, rmask, _ = self._rows(rest)
        lens = torch.tensor(plen, device=self.device)[idx]
        pos = (lens[:, None] + rmask.cumsum(-1) - 1).clamp_min(0)
        mask = torch.cat([pmask[idx], rmask], dim=1)
        extra = {"logits_to_keep": keep} if self.keep_arg else {}
        extra[cache_kwarg(self.model)] = cache
        logits = self.model(inputs_embeds=self.embed(ids), attention_mask=mask, position_ids=pos, use_cache=True,
                            **extra).logits
        return logits if self.keep_arg else logits[:, -keep:]

    @torch.no_grad()
    def losses(self, problems: Sequence[Problem], candidates: Sequence[torch.Tensor]
               ) -> tuple[list[torch.Tensor], list[bool]]:
        """Per problem, the loss of each of its candidate suffixes, and whether any candidate
        makes greedy decoding give the target (nanoGCG's early-stop test). The ids before the
        suffix go through the model once per problem (their keys and values are reused, as
        nanoGCG's prefix cache does); the rest of the rows of all problems go through it
        together, ``batch`` rows at a time."""
        key = tuple(id(p) for p in problems)  # the ids before the suffix do not change between steps
        if key not in self._prefixes:
            self._prefixes = {key: self._prefix(problems)}  # the active problems change only on early stop
        prefix = self._prefixes[key]
        rows, targets, owner = [], [], []
        for k, (p, cands) in enumerate(zip(problems, candidates)):
            for c in cands.tolist():
                rows.append((p.before if prefix is None else []) + c + p.after + p.target)
                targets.append(p.target)
                owner.append(k)
        out = torch.empty(len(rows))
        exact = [False] * len(rows)
        for start in range(0, len(rows), self.s.batch):
            chunk = rows[start:start + self.s.batch]
            tchunk = targets[start:start + len(chunk)]
            keep = max(len(t) for t in tchunk) + 1
            if prefix is not None:
                logits = self._with_prefix(prefix, owner[start:start + len(chunk)], chunk, keep)
            else:
                ids, mask, pos = self._rows(chunk)
                logits = self._forward(self.embed(ids), mask, pos, keep)
            out[start:start + len(chunk)] = self._loss(logits, tchunk).float().cpu()
            if self.s.early_stop:
                exact[start:start + len(chunk)] = self._exact(logits, tchunk)
        per, hit, at = [], [], 0
        for cands in candidates:
            per.append(out[at: at + cands.shape[0]])
            hit.append(any(exact[at: at + cands.shape[0]]))
            at += cands.shape[0]
        return per, hit


@dataclass
class _State:
    problem: Problem
    gen: torch.Generator
    buffer: list  # (loss, ids) sorted by loss
    current: torch.Tensor
    best: tuple[float, list[int], int] | None = None  # (loss, ids, step) of the lowest loss
    done: bool = False
    filtered_out: int = 0


class GCGAttack(Attack):
    family = "gcg"
    judge_sees = "response"
    needs_local = "differentiates through the target's weights"
    needs_single_model = True

    def __init__(self, settings: GCGSettings | None = None, *, target_text: str | None = None,
                 world: str | None = None, label: str = "gcg"):
        self.settings = settings or GCGSettings()
        self.settings.check()
        self.target_text, self.world, self.label = target_text, world, label
        self._banned: dict[tuple, torch.Tensor] = {}

    def params(self) -> dict:
        out = {k: v for k, v in asdict(self.settings).items() if v != getattr(GCGSettings, k)}
        if self.target_text is not None:
            out["target"] = self.target_text
        return out

    def target_of(self, item: EvalPrompt) -> str:
        """The string the suffix makes the model begin with: ``target=``; on the world its
        answer opener; else the item's reference (AdvBench / JailbreakBench ``target``)."""
        if self.target_text is not None:
            return self.target_text
        if self.world is not None:
            from deepalign.attacks.basic import answer_start

            return answer_start(self.world)
        if not item.harmful:
            raise DeepAlignError(f"attack {self.label} needs a target string: item {item.id!r} has no target/harmful "
                                 "field; give gcg:target=TEXT")
        return item.harmful

    def applies(self, item: EvalPrompt) -> bool:
        """Harmful requests (and items of unknown kind) with a target string to aim at."""
        if item.kind in ("benign", "helpful"):
            return False
        return self.target_text is not None or self.world is not None or bool(item.harmful)

    def init_text(self) -> str:
        if self.settings.init is not None:
            return self.settings.init
        return GCG_PAPER_INIT if self.world is not None else NANOGCG_INIT

    def prepare(self, item: EvalPrompt) -> Attacked:
        """The query with the initial suffix, the target string as the forced start: the words
        the vocabulary check reads (the request :meth:`run` sends carries the optimised suffix)."""
        query = item.prompt + self.settings.join + self.init_text()
        return Attacked(Request(id=item.id, query=query, prefill=self.target_of(item)))

    # -- the optimisation -------------------------------------------------------------------
    def problems(self, target, items: Sequence[EvalPrompt]) -> list[Problem]:
        from deepalign.attacks.rap import target_encoder

        enc = target_encoder(target)
        out = []
        for it in items:
            head, pre, post = split_prompt(enc, it.prompt, it.system)
            before, after = head + enc.encode_text(pre), enc.encode_text(post)
            # the initial suffix as it reads after the query (a join space goes into its first token
            # with SentencePiece and byte-level BPE): the ids between the prompt's own
            full = head + enc.encode_text(pre + self.settings.join + self.init_text() + post)
            if full[:len(before)] != before or len(full) <= len(before) + len(after) or \
                    (after and full[len(full) - len(after):] != after):
                raise DeepAlignError(f"attack {self.label}: the prompt of item {it.id!r} tokenises differently around "
                                     f"the suffix than without it; give gcg:join=space or another gcg:init")
            text = self.target_of(it)
            tgt = enc.response_ids(it.prompt, text, system=it.system, end=False)
            if not tgt:
                raise DeepAlignError(f"attack {self.label}: the target string of item {it.id!r} tokenises to nothing")
            out.append(Problem(it, it.prompt, before, after, tgt, text, (head, pre, post),
                               full[len(before): len(full) - len(after)]))
        return out

    def optimise(self, target, items: Sequence[EvalPrompt], progress=None) -> list[_State]:
        from deepalign.attacks.rap import target_encoder

        model = getattr(target, "model", None)
        enc = target_encoder(target)
        if model is None or enc is None or getattr(target, "components", None) is not None:
            raise DeepAlignError(f"attack {self.label} needs one local Hugging Face model to differentiate "
                                 f"(target {getattr(target, 'name', 'target')} is not one)")
        s = self.settings
        tok = enc.tokenizer
        size = min(len(tok), model.get_input_embeddings().weight.shape[0])
        banned = self._banned.get((id(tok), size))
        if banned is None:  # decodes the whole vocabulary: once per tokenizer, not once per batch
            banned = self._banned[(id(tok), size)] = not_allowed(tok, s.allow_non_ascii, size)
        if size < model.get_input_embeddings().weight.shape[0]:  # padding rows of the embedding: never tokens
            banned = torch.cat([banned, torch.arange(size, model.get_input_embeddings().weight.shape[0])])
        unk = getattr(tok, "unk_token_id", None)
        opt = Optimiser(model, target.pad, s)
        states = []
        for p in self.problems(target, items):
            if unk is not None and unk in p.init:
                raise DeepAlignError(f"attack {self.label}: the initial suffix {self.init_text()!r} is not in "
                                     f"{enc.name}'s vocabulary; give gcg:init=TEXT with words it knows")
            if unk is not None and unk in p.target:
                raise DeepAlignError(f"attack {self.label}: the target string {p.target_text!r} has words "
                                     f"{enc.name}'s tokenizer cannot encode")
            gen = torch.Generator().manual_seed(zlib.crc32(f"{s.seed}:{p.item.id}".encode("utf-8")))
            states.append(_State(p, gen, [], torch.tensor(p.init, dtype=torch.long)))
        self._init_buffers(opt, states, enc, size)
        was_training = model.training
        model.eval()
        try:
            for step in range(s.steps):
                active = [st for st in states if not st.done]
                if not active:
                    break
                grads = opt.gradients([st.problem for st in active], [st.current for st in active])
                cands = []
                for st, g in zip(active, grads):
                    c = sample_candidates(st.current, g.float().cpu(), s.width, s.topk, s.n_replace, banned, st.gen)
                    cands.append(self._filter(enc, st, c))
                losses, hits = opt.losses([st.problem for st in active], cands)
                for st, c, lo, hit in zip(active, cands, losses, hits):
                    j = self._exact_best(enc, st.problem, c, lo)
                    loss, ids = float(lo[j]), c[j]
                    if s.buffer == 0 or len(st.buffer) < s.buffer or loss < st.buffer[-1][0]:
                        self._add(st, loss, ids)
                    st.current = st.buffer[0][1]
                    if st.best is None or loss < st.best[0]:
                        st.best = (loss, st.current.tolist(), step)
                    if hit:  # nanoGCG stops once any candidate decodes to the target
                        st.done = True
                if progress is not None:
                    progress(step + 1, s.steps)
        finally:
            model.train(was_training)
        return states

    def _add(self, st: _State, loss: float, ids: torch.Tensor) -> None:
        """nanoGCG's ``AttackBuffer.add``: size 0 keeps the last; a full buffer replaces its worst."""
        size = self.settings.buffer
        if size == 0:
            st.buffer = [(loss, ids)]
            return
        if len(st.buffer) < size:
            st.buffer.append((loss, ids))
        else:
            st.buffer[-1] = (loss, ids)
        st.buffer.sort(key=lambda x: x[0])

    def _init_buffers(self, opt: Optimiser, states: list[_State], enc, size: int) -> None:
        """nanoGCG's ``init_buffer``: the initial suffix, plus (buffer > 1) suffixes of random
        characters of its ``INIT_CHARS`` drawn from each item's generator."""
        s = self.settings
        cands = []
        for st in states:
            rows = [st.current]
            if s.buffer > 1:
                chars = [".", ",", "!", "?", ";", ":", "(", ")", "[", "]", "{", "}", "@", "#", "$", "%", "&", "*",
                         "w", "x", "y", "z"]  # nanoGCG 0.3.0 utils.INIT_CHARS
                pool = [ids[0] for ids in map(enc.encode_text, chars) if len(ids) == 1 and ids[0] < size]
                pool_t = torch.tensor(pool, dtype=torch.long)
                idx = torch.randint(0, len(pool), (s.buffer - 1, st.current.shape[0]), generator=st.gen)
                rows += list(pool_t[idx])
            cands.append(torch.stack(rows))
        losses, _ = opt.losses([st.problem for st in states], cands)
        for st, c, lo in zip(states, cands, losses):
            for i in range(c.shape[0]):
                self._add(st, float(lo[i]), c[i])
            st.current = st.buffer[0][1]

    def _renders_as_optimised(self, enc, p: Problem, row: list[int]) -> bool:
        """Whether the prompt of the query with this suffix, rendered by the target's format and
        tokenised, is the sequence of ids that was optimised."""
        return enc.prompt_ids(p.query + suffix_text(enc, p, row), p.item.system) == p.before + row + p.after

    def _exact_best(self, enc, p: Problem, cands: torch.Tensor, losses: torch.Tensor) -> int:
        """The candidate of lowest loss whose prompt renders as optimised. The filter compared
        the prompt's text around the suffix; a template that changes its content (trims it,
        say) is caught here, on the candidate taken, and the next one is taken instead."""
        for j in torch.argsort(losses, stable=True).tolist():
            if self._renders_as_optimised(enc, p, cands[j].tolist()):
                return j
        raise DeepAlignError(f"attack {self.label}: no candidate suffix of item {p.item.id!r} renders in the "
                             "target's prompt as the ids optimised")

    def _filter(self, enc, st: _State, cands: torch.Tensor) -> torch.Tensor:
        """Candidates whose text tokenises back to them (nanoGCG's ``filter_ids``) and whose whole
        prompt text (the format's text before the suffix, its text, the text after) tokenises
        to the optimised ids; tokenised in batches."""
        p = st.problem
        rows = cands.tolist()
        texts = enc.tokenizer.batch_decode(rows)
        ok = [True] * len(rows)
        if self.settings.filter_ids:
            ok = [a == b for a, b in zip(enc.encode_texts(texts), rows)]
        head, pre, post = p.text
        want_len = len(p.before) + cands.shape[1] + len(p.after)
        full = enc.encode_texts([pre + suffix_text(enc, p, row) + post for row, good in zip(rows, ok) if good])
        it = iter(full)
        keep = []
        for row, good in zip(rows, ok):
            if good:
                ids = head + next(it)
                if len(ids) == want_len and ids == p.before + row + p.after:
                    keep.append(row)
        st.filtered_out += cands.shape[0] - len(keep)
        if not keep:
            raise DeepAlignError(f"attack {self.label}: no candidate suffix of item {p.item.id!r} tokenises back to "
                                 "itself; try another gcg:init or gcg:filter_ids=false")
        return torch.tensor(keep, dtype=torch.long)

    def run(self, target, items: Sequence[EvalPrompt], config: GenConfig) -> list[list[AttackOutput]]:
        from deepalign.attacks.rap import target_encoder

        states = self.optimise(target, items)
        enc = target_encoder(target)
        requests = []
        texts = []
        for it, st in zip(items, states):
            loss, ids, step = st.best
            texts.append(suffix_text(enc, st.problem, ids))
            base = self.attacked(it).request
            requests.append(replace(base, query=st.problem.query + texts[-1], prefill=""))
        gens = target.generate(requests, config)
        check_generations(target, requests, gens, config.num_samples)
        out = []
        for st, req, per, text in zip(states, requests, gens, texts):
            loss, ids, step = st.best
            meta = {"gcg": {"suffix_ids": ids, "suffix": text, "loss": round(loss, 6),
                            "step": step, "target": st.problem.target_text, "filtered_out": st.filtered_out}}
            out.append([AttackOutput(req, g.text, g.text, g.num_tokens, g.finish_reason, forced_meta(meta, g)) for g in per])
        return out


def suffix_text(enc, p: Problem, ids: list[int]) -> str:
    """The text ``ids`` add after the query's ids: what the request appends to the query (its
    first token's space included)."""
    from deepalign.decoding.output import continuation_text

    return continuation_text(enc.tokenizer, p.before, list(ids))


@register("gcg", "GCG (Zou et al. 2023) with nanoGCG's settings: gcg[:steps=250][:width=512][:topk=256][:n_replace=1]"
                 "[:buffer=0][:mellowmax][:early_stop][:seed=0][:init=TEXT][:target=TEXT][:join=space|none]")
def _gcg(args, context):
    d = GCGSettings()
    join = args.option("join", "space")
    if join not in ("space", "none"):
        raise DeepAlignError(f"attack {args.spec!r}: join must be space or none, got {join!r}")
    s = GCGSettings(
        steps=args.option("steps", d.steps, int), width=args.option("width", d.width, int),
        topk=args.option("topk", d.topk, int), n_replace=args.option("n_replace", d.n_replace, int),
        buffer=args.option("buffer", d.buffer, int), mellowmax=args.flag("mellowmax"),
        mellowmax_alpha=args.option("mellowmax_alpha", d.mellowmax_alpha, float),
        early_stop=args.flag("early_stop"), allow_non_ascii=args.flag("allow_non_ascii"),
        filter_ids=args.flag("filter_ids", True), init=args.option("init"), seed=args.option("seed", d.seed, int),
        join=" " if join == "space" else "", batch=args.option("batch", d.batch, int))
    target_text = args.option("target")
    args.done()
    return [GCGAttack(s, target_text=target_text, world=context.get("world"), label=args.spec)]
