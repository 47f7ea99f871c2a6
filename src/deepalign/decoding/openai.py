"""A model behind an OpenAI-compatible server (vLLM, TGI, ``transformers serve``, a provider)
as a :class:`~deepalign.decoding.base.Target`, on the official ``openai`` SDK (its retries,
backoff and ``Retry-After`` handling are the ones users debug against).

Servers differ, so a target first **probes** the server with a few one-token requests, before
any work: whether it answers at all, whether it accepts the extension fields the run needs
(``top_k``, ``min_tokens``, ``ignore_eos``), how a forced start of the answer (a prefill) can
be sent, whether it returns log-probs, and whether it honours sampling. Prefills go as a final
assistant message with ``continue_final_message`` where the server accepts it (vLLM);
otherwise, when the target knows the model's tokenizer (``tokenizer=``), the prompt is
rendered locally with deepalign's token contract and sent to ``/v1/completions``; otherwise
the run stops at once with a one-line error naming both ways out. What the probe learnt
(e.g. "ignores sampling parameters") is kept in :attr:`OpenAITarget.notes` and shown in the
report.

API keys are only read from an environment variable (``OPENAI_API_KEY`` unless ``key_env``
names another), checked for stray whitespace, never printed (errors are scrubbed), and never
sent over plain ``http://`` to a host other than this machine unless ``allow_http`` says so.
Credentials written into a base URL are used but never shown: the target's name and every
message carry the URL without them.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.errors import DeepAlignError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429}  # and every 5xx: what the SDK retries
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def _one_line(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def public_url(url: str) -> str:
    """``url`` without the user name and password it may carry."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class OpenAITarget:
    """See the module doc. ``tokenizer``: a model directory or hub id (or a loaded tokenizer)
    whose format renders prompts locally when the server cannot take a prefill;
    ``prompt_format`` / ``system`` / ``chat_template`` as for :class:`HFTarget`.
    ``generation``: decoding settings that override the run's for this target."""

    def __init__(self, model: str, base_url: str | None = None, *, key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4, tokenizer=None,
                 prompt_format=None, system: str | None = None, chat_template: str | None = None,
                 allow_http: bool = False, generation: dict | None = None, name: str | None = None):
        import openai

        url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(url)
        self.url = public_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeepAlignError(f"not an http(s) base URL: {self.url!r}")
        if not model:
            raise DeepAlignError("an OpenAI-compatible target needs a model name (openai:<model>@<base_url>)")
        if concurrency < 1 or retries < 0 or not timeout > 0:
            raise DeepAlignError("OpenAI target: concurrency >= 1, retries >= 0 and timeout > 0 are required")
        local = (parts.hostname or "") in _LOCAL_HOSTS
        key = os.environ.get(key_env) if key_env else None
        if key is not None and (key != key.strip() or any(ord(c) < 32 or c.isspace() for c in key)):
            raise DeepAlignError(f"environment variable {key_env} holds whitespace or control characters (a trailing "
                                 "newline?); store the key without them")
        if not key and not local:
            raise DeepAlignError(f"environment variable {key_env} is not set: the API key for {self.url} is read from "
                                 "it (set it, or name another variable with key_env=)")
        if key and parts.scheme == "http" and not local and not allow_http:
            raise DeepAlignError(f"refusing to send the API key over plain http to {self.url}; use https, or pass "
                                 "allow_http=true if this network is trusted")
        self.model, self.key_env = model, key_env
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        self.name = name or f"openai:{model}@{self.url}"
        self.generation = dict(generation or {})
        self._secrets = [s for s in (key, parts.password) if s]
        self.client = openai.OpenAI(base_url=url, api_key=key or "not-needed", max_retries=retries, timeout=timeout)
        self.encoder = None
        if tokenizer is not None:
            from dataclasses import replace

            from deepalign.models import load_tokenizer
            from deepalign.tokens import Encoder, PromptFormat

            tok = load_tokenizer(tokenizer, chat_template=chat_template) if isinstance(tokenizer, (str, os.PathLike)) \
                else tokenizer
            fmt = PromptFormat.for_tokenizer(tok, prompt_format)
            if system is not None:
                fmt = replace(fmt, system=system)
            self.encoder = Encoder(tok, fmt, name=str(tokenizer))
        self.system = system
        self.caps: dict[str, Any] | None = None
        self.notes: list[str] = []
        self._flags: set[str] = set()
        self._pool = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAITarget(model={self.model!r}, base_url={self.url!r}, key_env={self.key_env!r})"

    # -- HTTP -------------------------------------------------------------------------------
    def api(self, endpoint: str, **kwargs):
        """One SDK call to ``endpoint`` (``chat``, ``completions`` or ``moderations``) with this
        target's key, retries and timeout: what judges that read another endpoint use (a batch
        of raw prompts for a classifier, the moderation API). Failures are one line naming
        the server (:class:`ServerRejected` for a refused request)."""
        return self._call(endpoint, **kwargs)

    def _call(self, endpoint: str, **kwargs):
        """One SDK call (the SDK retries); every failure is one line naming the server."""
        import openai

        api = {"completions": self.client.completions, "moderations": self.client.moderations}.get(
            endpoint, self.client.chat.completions)
        attempts = f"after {self.retries + 1} attempt(s)"
        try:
            return api.create(**kwargs)
        except openai.APITimeoutError:
            raise DeepAlignError(f"cannot get an answer from {self.url} {attempts}: no answer within "
                                 f"{self.timeout:g} s") from None
        except openai.APIConnectionError:
            raise DeepAlignError(f"cannot get an answer from {self.url} {attempts}: connection failed") from None
        except openai.APIStatusError as exc:
            message = self._error_text(exc)
            if exc.status_code in RETRY_STATUS or exc.status_code >= 500:
                raise DeepAlignError(f"cannot get an answer from {self.url} {attempts}: HTTP {exc.status_code}: "
                                     f"{message}") from None
            raise ServerRejected(f"server {self.url} answered HTTP {exc.status_code}: {message}",
                                 exc.status_code) from None
        except openai.OpenAIError as exc:
            raise DeepAlignError(f"request to {self.url} failed: {self._scrub(_one_line(exc))}") from None

    def _error_text(self, exc) -> str:
        body = getattr(exc, "body", None)
        msg: Any = body
        if isinstance(body, dict):
            err = body.get("error", body.get("detail", body))
            msg = err.get("message", err) if isinstance(err, dict) else err
        if msg is None:
            msg = getattr(exc, "message", "") or ""
        return self._scrub(_one_line(msg))

    def _scrub(self, text: str) -> str:
        return scrub(text, *self._secrets)

    # -- requests ---------------------------------------------------------------------------
    def _sampling(self, config: GenConfig, sample: int) -> tuple[dict, dict]:
        body: dict = {"model": self.model, "max_tokens": config.max_new_tokens, "seed": config.seed + sample}
        extra: dict = {}
        if config.do_sample:
            body["temperature"] = config.temperature
            if config.top_p < 1:
                body["top_p"] = config.top_p
            if config.top_k > 0:
                extra["top_k"] = config.top_k  # vLLM / TGI extension
        else:
            body["temperature"] = 0.0
        if config.stop_strings:
            body["stop"] = list(config.stop_strings)
        if config.min_new_tokens:
            extra["min_tokens"] = config.min_new_tokens  # vLLM extension
        if config.suppress_eos:
            extra["ignore_eos"] = True  # vLLM extension
        return body, extra

    def _messages(self, request: Request) -> list[dict]:
        system = request.system if request.system is not None else self.system
        out = [{"role": "system", "content": system}] if system else []
        return out + [{"role": "user", "content": request.query}]

    def _forced(self, request: Request) -> tuple[str, list[int] | None]:
        """The forced start as text, and as the model's tokens when the tokenizer is known."""
        if request.prefill_ids is not None:
            if self.encoder is None:
                raise DeepAlignError(f"request {request.id!r} forces token ids: give target {self.name} "
                                     "tokenizer=<model dir or hub id> so they can be sent")
            ids = list(request.prefill_ids)
            return self.encoder.tokenizer.decode(ids, skip_special_tokens=True), ids
        if not request.prefill:
            return "", None
        if self.encoder is None:
            if request.prefill_tokens is not None:
                raise DeepAlignError(f"a prefill of {request.prefill_tokens} tokens needs the model's tokenizer: give "
                                     f"target {self.name} tokenizer=<model dir or hub id>, or count words (prefill:Kw)")
            return request.prefill, None
        ids = self.encoder.response_ids(request.query, request.prefill, system=request.system, end=False)
        if request.prefill_tokens is None:
            return request.prefill, ids
        ids = ids[: request.prefill_tokens]
        ends = self.encoder.response_offsets(request.query, request.prefill, system=request.system)
        if ends and ids:
            return request.prefill[: ends[len(ids) - 1]], ids
        return self.encoder.tokenizer.decode(ids, skip_special_tokens=True), ids

    def _local_prompt(self, request: Request, forced_ids: list[int] | None) -> str:
        """The prompt rendered locally, as the text to send to /v1/completions. A server
        tokenises a text prompt with the tokenizer's special tokens, so a BOS it adds itself is
        left out of the text; and where the text would not tokenise back to the same ids, the
        report says so."""
        enc = self.encoder
        ids = enc.prompt_ids(request.query, request.system) + list(forced_ids or [])
        added = enc.bos_ids()
        if added and ids[:1] == added:
            ids = ids[1:]
        text = enc.decode(ids)
        if added + enc.encode_text(text) != added + ids and "retokenised" not in self._flags:
            self._flags.add("retokenised")
            self.notes.append("some locally rendered prompts tokenise back to other ids than intended (the server "
                              "receives text, not ids)")
        return text

    def payload(self, request: Request, config: GenConfig, sample: int) -> tuple[str, dict, list[int] | None]:
        """``(endpoint, keyword arguments of the SDK call, forced ids)`` of one request."""
        body, extra = self._sampling(config, sample)
        forced_text, forced_ids = ("", None) if request.text is not None else self._forced(request)
        if request.text is not None:
            body["prompt"] = request.text + request.prefill
            endpoint = "completions"
        elif forced_text and (self.caps or {}).get("prefill") == "completions":
            body["prompt"] = self._local_prompt(request, forced_ids)
            endpoint = "completions"
        else:
            messages = self._messages(request)
            if forced_text:
                messages.append({"role": "assistant", "content": forced_text})
                extra.update(continue_final_message=True, add_generation_prompt=False)  # vLLM extension
            body["messages"] = messages
            endpoint = "chat"
        if config.return_logprobs:
            body["logprobs"] = 1 if endpoint == "completions" else True
        if extra:
            body["extra_body"] = extra
        return endpoint, body, forced_ids

    def render(self, request: Request) -> str:
        """The prompt this target sends: the locally rendered text when the tokenizer is known,
        else the raw prompt or the chat messages as JSON."""
        if request.text is not None:
            return request.text + request.prefill
        forced_text, forced_ids = self._forced(request)
        if self.encoder is not None:
            return self._local_prompt(request, forced_ids)
        messages = self._messages(request) + ([{"role": "assistant", "content": forced_text}] if forced_text else [])
        return json.dumps(messages, ensure_ascii=False)

    # -- the probe --------------------------------------------------------------------------
    def probe(self, config: GenConfig, *, prefill: bool = False, prefill_tokens: bool = False,
              raw: bool = False) -> list[str]:
        """Find out, with a few one-token requests, how this server takes the run's requests;
        fail at once (one line) where it cannot. Returns the notes for the report."""
        from dataclasses import replace

        from deepalign.decoding.hf import apply_overrides

        config = apply_overrides(config, self.generation)
        notes: list[str] = []
        caps: dict[str, Any] = {"prefill": None}
        one = replace(config, max_new_tokens=1, num_samples=1)
        endpoint, body, _ = self.payload(Request(id="probe", query="Reply with one word."), one, 0)
        try:
            answer = self._call(endpoint, **body)
        except ServerRejected as exc:
            used = sorted((body.get("extra_body") or {}))
            hint = f" (the run asks for {', '.join(used)}: extension fields this server may not accept)" if used else ""
            raise DeepAlignError(f"{exc}{hint}") from None
        if config.return_logprobs and not getattr(answer.choices[0], "logprobs", None):
            notes.append("returns no log-probs: token_logprobs are empty")
        if prefill_tokens and self.encoder is None:
            raise DeepAlignError(f"token-depth prefills (prefill:K) need the model's tokenizer to count tokens: give "
                                 f"target {self.name} tokenizer=<model dir or hub id>, or count words (prefill:Kw)")
        if prefill:
            req = Request(id="probe", query="Reply with one word.", prefill="The")
            endpoint, body, _ = self.payload(req, one, 0)
            try:
                self._call(endpoint, **body)
                caps["prefill"] = "continue"
            except ServerRejected as exc:
                if self.encoder is None:
                    raise DeepAlignError(
                        f"{exc}: the server does not take a forced answer start (continue_final_message, a vLLM "
                        f"extension), which prefill and completion attacks need; give target {self.name} "
                        "tokenizer=<model dir or hub id> to render prompts locally for /v1/completions, or serve the "
                        "model with vLLM") from None
                caps["prefill"] = "completions"
                self._check_completions(one)
                notes.append("takes no forced answer start in chat requests: prompts with one are rendered locally "
                             "(the model's own template) and sent to /v1/completions as text")
        if raw:
            self._check_completions(one)
        if config.do_sample:
            texts = []
            for seed in (1, 2):
                endpoint, body, _ = self.payload(Request(id="probe", query="Write one sentence about the sea."),
                                                 replace(config, max_new_tokens=12, num_samples=1, seed=seed), 0)
                texts.append(self._text(self._call(endpoint, **body), endpoint))
            if texts[0] and texts[0] == texts[1]:
                notes.append("seems to ignore sampling parameters: two samples with different seeds were identical")
        self.caps, self.notes = caps, notes + self.notes
        return self.notes

    def _check_completions(self, config: GenConfig) -> None:
        body, extra = self._sampling(config, 0)
        body["prompt"] = "Hello"
        if extra:
            body["extra_body"] = extra
        try:
            self._call("completions", **body)
        except ServerRejected as exc:
            raise DeepAlignError(f"{exc} (on /v1/completions, which raw-text requests need)") from None

    # -- Target protocol --------------------------------------------------------------------
    @staticmethod
    def _text(answer, endpoint: str) -> str:
        choice = answer.choices[0]
        return (choice.text if endpoint == "completions" else choice.message.content) or ""

    def _one(self, request: Request, config: GenConfig, sample: int) -> Generation:
        endpoint, body, forced_ids = self.payload(request, config, sample)
        answer = self._call(endpoint, **body)
        try:
            choice = answer.choices[0]
            text = self._text(answer, endpoint)
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError):
            raise DeepAlignError(f"server {self.url} answered without choices: "
                                 f"{self._scrub(_one_line(answer))}") from None
        lp = None
        if config.return_logprobs and getattr(choice, "logprobs", None):
            if endpoint == "completions":
                lp = list(getattr(choice.logprobs, "token_logprobs", None) or [])
            else:
                lp = [t.logprob for t in (getattr(choice.logprobs, "content", None) or [])]
        n_tokens = getattr(getattr(answer, "usage", None), "completion_tokens", None)
        if not isinstance(n_tokens, int):  # the server did not say: count with the tokenizer, else words
            n_tokens = len(self.encoder.encode_text(text)) if self.encoder else len(text.split())
        reason = "length" if finish == "length" else ("stop" if config.stop_strings and finish == "stop" else "eos")
        forced_text = request.prefill if request.text is None else ""
        if forced_ids is not None and (request.prefill_tokens is not None or request.prefill_ids is not None):
            forced_text = self._forced(request)[0]
        return Generation(request.id, sample, text, n_tokens, reason, lp,
                          forced_tokens=len(forced_ids) if forced_ids is not None else 0, forced_text=forced_text)

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        from deepalign.decoding.hf import apply_overrides

        if not requests:
            return []
        config = apply_overrides(config, self.generation)
        if self.caps is None:
            self.probe(config, prefill=any(r.prefill and r.text is None for r in requests),
                       prefill_tokens=any(r.prefill_tokens is not None for r in requests),
                       raw=any(r.text is not None for r in requests))
        if self._pool is None:  # kept across calls: worker threads reuse the SDK's connections
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai")
        jobs = {self._pool.submit(self._one, r, config, s): (i, s)
                for i, r in enumerate(requests) for s in range(config.num_samples)}
        done, pending = wait(jobs, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed.exception()
        out: list[list[Generation | None]] = [[None] * config.num_samples for _ in requests]
        for f, (i, s) in jobs.items():
            out[i][s] = f.result()
        return out  # type: ignore[return-value]

    def top_logprobs(self, requests: Sequence[Request], k: int) -> list[list[tuple[int, float]]]:
        """Per request, the server's ``k`` most likely next tokens after the prompt and its forced
        ids, as ``(token id, log-prob)`` best first: one ``/v1/completions`` call each, the prompt
        sent as token ids (rendered locally: needs ``tokenizer=``), one greedy token, ``logprobs=k``
        and vLLM's ``return_tokens_as_token_ids``. A server that names its tokens by their text
        only is refused: text does not name a token id."""
        if self.encoder is None:
            raise DeepAlignError(f"target {self.name}: the next-token ranking of a server needs the model's tokenizer: "
                                 f"give tokenizer=<model dir or hub id>")

        def one(r: Request) -> list[tuple[int, float]]:
            ids = self.encoder.prompt_ids(r.query, r.system) + list(r.prefill_ids or ())
            answer = self._call("completions", model=self.model, prompt=ids, max_tokens=1, temperature=0.0,
                                logprobs=k, extra_body={"return_tokens_as_token_ids": True})
            logprobs = getattr(answer.choices[0], "logprobs", None) if getattr(answer, "choices", None) else None
            tops = getattr(logprobs, "top_logprobs", None) if logprobs is not None else None
            if not tops or not tops[0]:
                raise DeepAlignError(f"server {self.url} gave no top log-probs for request {r.id!r}")
            out = []
            for token, lp in tops[0].items():
                if not str(token).startswith("token_id:"):
                    raise DeepAlignError(f"server {self.url} names its top tokens by text ({str(token)!r}), not by id; "
                                         "the ranking needs a server that returns token ids (vLLM does)")
                out.append((int(str(token).split(":", 1)[1]), float(lp)))
            return sorted(out, key=lambda x: -x[1])[:k]

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai")
        return list(self._pool.map(one, requests))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ServerRejected(DeepAlignError):
    """The server refused a request (HTTP 4xx other than 408/409/429): not retried."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
