"""``accelerate launch ... -m deepalign ...`` for the multi-process tests: two CPU processes
(gloo), a rendezvous port this helper reserved, and on a time-out the whole process tree ended
and the launcher's output so far put in the failure message."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "src" / "deepalign" / "configs"


def accelerate_cli() -> str:
    exe = Path(sys.executable).parent / "accelerate"
    found = str(exe) if exe.exists() else shutil.which("accelerate")
    if found is None:
        pytest.skip("accelerate CLI not installed")
    return found


def free_port() -> int:
    """A port no socket on this machine holds, outside the kernel's ephemeral range, so that no
    outgoing connection of another process can take it before the launcher binds it."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else (32768, 60999)
    candidates = [p for p in range(20000, 32000) if not low <= p <= high] or list(range(20000, 32000))
    start = (os.getpid() * 7919) % len(candidates)  # processes running side by side start apart
    for port in candidates[start:] + candidates[:start]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def launch(args: list[str], cwd: Path, *, launcher: list[str] = ("--multi_gpu",), processes: int = 2,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """``accelerate launch LAUNCHER --num_processes N ... -m deepalign ARGS``; fails the test with
    the launcher's stderr (the tail of it) when it runs past ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    cmd = [accelerate_cli(), "launch", *launcher, "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", "deepalign", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"accelerate launch ran past {timeout:.0f} s: {' '.join(cmd)}\n--- stderr ---\n{err[-4000:]}",
                    pytrace=False)
    finally:
        _kill_tree(proc.pid)  # workers that outlived a failed launcher
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_tree(pid: int) -> None:
    """SIGKILL to the launcher and every process below it: torchrun starts each worker in a
    session of its own, so killing the launcher's process group does not reach them."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def explain(proc: subprocess.CompletedProcess) -> str:
    """What a failed launch said: the command, its exit status and the end of its stderr."""
    return f"{' '.join(map(str, proc.args))}\nexit status {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}"
