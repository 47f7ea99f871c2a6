"""A model behind an OpenAI-compatible HTTP server (vLLM, TGI, ``transformers serve``, a
provider) as a :class:`~deepalign.decoding.base.Target`.

API keys are only ever read from an environment variable (``OPENAI_API_KEY`` unless
``key_env`` names another); they are sent in the ``Authorization`` header and never written
anywhere.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Sequence
from urllib.parse import urlparse

from deepalign.decoding.base import GenConfig, Generation, Request
from deepalign.errors import DeepAlignError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAITarget:
    """A model behind ``/v1/chat/completions`` (chat requests) and ``/v1/completions`` (raw text
    requests). Requests run concurrently (at most ``concurrency`` in flight); failures that may
    pass (connection errors, timeouts, HTTP 408/409/429/5xx) are retried with exponential
    backoff (``backoff * 2**attempt`` seconds, jittered, or the server's ``Retry-After``).

    Each (request, sample) is one HTTP call with ``seed = config.seed + sample``. A ``prefill``
    on a chat request is sent as a final assistant message with ``continue_final_message``
    (the vLLM extension); servers without it reject or ignore it.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        name: str | None = None,
    ):
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DeepAlignError(f"not an http(s) base URL: {base_url!r}")
        if not model:
            raise DeepAlignError("OpenAI target needs a model name (openai:<model>@<base_url>)")
        if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise DeepAlignError("OpenAI target: concurrency >= 1, retries >= 0, timeout > 0 and backoff >= 0 are required")
        self.model, self.base_url, self.key_env = model, base_url, key_env
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.name = name or f"openai:{model}@{base_url}"
        key = os.environ.get(key_env) if key_env else None
        if not key and (parsed.hostname or "") not in _LOCAL_HOSTS:
            raise DeepAlignError(
                f"environment variable {key_env} is not set: the API key for {base_url} is read from it "
                "(set it, or name another variable with key_env=)"
            )
        self._key = key or None
        self._local = threading.local()
        self._slots = threading.BoundedSemaphore(concurrency)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAITarget(model={self.model!r}, base_url={self.base_url!r}, key_env={self.key_env!r})"

    def render(self, request: Request) -> str:
        """What the server is sent: the raw prompt, or the chat messages as JSON."""
        import json

        path, body = self.payload(request, GenConfig(), 0)
        return body["prompt"] if path == "/completions" else json.dumps(body["messages"], ensure_ascii=False)

    # -- HTTP ---------------------------------------------------------------------------
    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Content-Type"] = "application/json"
            if self._key:
                s.headers["Authorization"] = f"Bearer {self._key}"
        return s

    def post(self, path: str, payload: dict) -> dict:
        """POST ``payload`` to ``base_url + path`` with retries; the decoded JSON answer."""
        import requests

        url = f"{self.base_url}{path}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            wait_s = None
            try:
                with self._slots:
                    r = self._session().post(url, json=payload, timeout=self.timeout)
            except requests.Timeout:
                last = f"no answer within {self.timeout:g} s"
            except requests.ConnectionError as exc:
                last = f"connection failed ({_one_line(type(exc).__name__)})"
            except requests.RequestException as exc:
                raise DeepAlignError(f"request to {url} failed: {_one_line(exc)}") from None
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise DeepAlignError(f"server {url} answered with invalid JSON: {_one_line(r.text)}") from None
                message = self._error_message(r)
                if r.status_code not in RETRY_STATUS:
                    raise DeepAlignError(f"server {url} answered HTTP {r.status_code}: {message}")
                last = f"HTTP {r.status_code}: {message}"
                retry_after = r.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait_s = min(float(retry_after), 60.0)
            if attempt < self.retries:
                if wait_s is None:
                    wait_s = min(self.backoff * 2**attempt, 30.0) * (0.5 + random.random() / 2)
                time.sleep(wait_s)
        raise DeepAlignError(f"cannot get an answer from {url} after {self.retries + 1} attempt(s): {last}")

    @staticmethod
    def _error_message(r) -> str:
        try:
            body = r.json()
            err = body.get("error", body) if isinstance(body, dict) else body
            msg = err.get("message", err) if isinstance(err, dict) else err
            return _one_line(msg)
        except ValueError:
            return _one_line(r.text or r.reason or "")

    # -- Target protocol -----------------------------------------------------------------
    def payload(self, request: Request, config: GenConfig, sample: int) -> tuple[str, dict]:
        body: dict = {"model": self.model, "max_tokens": config.max_new_tokens, "seed": config.seed + sample}
        if config.do_sample:
            body["temperature"] = config.temperature
            if config.top_p < 1:
                body["top_p"] = config.top_p
            if config.top_k > 0:
                body["top_k"] = config.top_k  # vLLM / TGI extension
        else:
            body["temperature"] = 0.0
        if config.stop_strings:
            body["stop"] = list(config.stop_strings)
        if config.min_new_tokens:
            body["min_tokens"] = config.min_new_tokens  # vLLM extension
        if config.suppress_eos:
            body["ignore_eos"] = True  # vLLM extension
        if request.text is not None:
            body["prompt"] = request.text + request.prefill
            if config.return_logprobs:
                body["logprobs"] = 1
            return "/completions", body
        messages = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.query})
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body["continue_final_message"] = True  # vLLM extension: continue the prefill
            body["add_generation_prompt"] = False
        body["messages"] = messages
        if config.return_logprobs:
            body["logprobs"] = True
        return "/chat/completions", body

    def _one(self, request: Request, config: GenConfig, sample: int) -> Generation:
        path, body = self.payload(request, config, sample)
        answer = self.post(path, body)
        try:
            choice = answer["choices"][0]
            if path == "/completions":
                text = choice["text"]
                lp = (choice.get("logprobs") or {}).get("token_logprobs")
            else:
                text = choice["message"]["content"] or ""
                content = (choice.get("logprobs") or {}).get("content")
                lp = [t["logprob"] for t in content] if content else None
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise DeepAlignError(f"server {self.base_url} answered without choices: {_one_line(str(answer))}") from None
        usage = answer.get("usage") or {}
        n_tokens = usage.get("completion_tokens")
        if not isinstance(n_tokens, int):
            n_tokens = len(text.split())  # the server did not say: a word count stands in
        reason = "length" if finish == "length" else ("stop" if config.stop_strings else "eos")
        return Generation(request.id, sample, text, n_tokens, reason, lp if config.return_logprobs else None)

    def _executor(self) -> ThreadPoolExecutor:
        # one pool per target, kept across calls, so that each worker thread keeps its
        # HTTP session (and its open connections) from one batch to the next
        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai")
        return self._pool

    def generate(self, requests: Sequence[Request], config: GenConfig) -> list[list[Generation]]:
        jobs = [(i, s) for i in range(len(requests)) for s in range(config.num_samples)]
        out: list[list[Generation | None]] = [[None] * config.num_samples for _ in requests]
        if not jobs:
            return []
        pool = self._executor()
        futures = {pool.submit(self._one, requests[i], config, s): (i, s) for i, s in jobs}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed.exception()
        for f, (i, s) in futures.items():
            out[i][s] = f.result()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
