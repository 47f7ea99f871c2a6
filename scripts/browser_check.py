"""Open a run in Inspect's log viewer in a real browser and check that a response and a verdict
are on the page (CI runs it before the tests).

    .venv/bin/python scripts/browser_check.py                       # a small run made here, then checked
    .venv/bin/python scripts/browser_check.py RUN_DIR --screenshots docs/img   # an existing run (or a study)
    .venv/bin/python scripts/browser_check.py runs/study --attack prefill:8 --target vanilla --screenshots docs/img

It bundles the run with ``deepalign view RUN_DIR --bundle`` (the command a user runs), serves the
bundle with Python's http.server on 127.0.0.1 (the viewer fetches its logs, which a file:// page
cannot do: it stays blank), and drives headless Chromium with selenium (Debian's ``chromium``
and ``chromium-driver`` packages; selenium from the ``dev`` extra). It waits for the viewer to
have really loaded (a one-shot ``chromium --dump-dom`` stops at "Syncing data..."): the log list
must show the cell's task, then the sample's page must show the response's text in the
conversation and each judge's verdict, read from the run directory. With ``--screenshots DIR``
it saves ``viewer_logs.png`` (the list of logs), ``viewer_samples.png`` (one log's samples) and
``viewer_sample.png`` (one response with its verdicts) there.

Exit status 0 when everything was found, 1 otherwise (what was missing is printed).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 90


def small_run(workdir: Path) -> Path:
    """A small real run: the embedded world, a tiny random-init model in its format, three
    attacks (one forcing a start) judged by the world oracle and the keyword judge."""
    from deepalign.world.tiny import random_model, small_world

    world = small_world(workdir / "world", 4, n_pretrain=200)
    model = random_model(world, workdir / "tiny", hidden=32, layers=1, heads=2, max_positions=256)
    run = workdir / "run"
    deepalign(["eval", "--target", f"hf:{model}", "--attacks", "direct,prefill:4,completion:3w", "--world", str(world),
               "--limit", "2", "--max-new-tokens", "10", "--log_prompts", "--out", str(run), "--quiet"])
    return run


def deepalign(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "deepalign", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"browser check: deepalign {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")


def pick_row(run: Path, attack: str | None = None, target: str | None = None, item: str | None = None):
    """The row to look for: the first with a response and a verdict (of ``attack``, of the
    target named or labelled ``target``, of ``item``, where given), preferring a forced start
    (then the forced start and the continuation both show); with its log file."""
    from inspect_ai.log import read_eval_log

    from deepalign.reports.inspect_log import LOGS, read_rows
    from deepalign.runs.rundir import RunDir

    runs = [run] if RunDir(run).is_run() else sorted(p.parent for p in run.rglob("run.json") if RunDir(p.parent).is_run())
    found = []
    for r in runs:
        for log in sorted((r / LOGS).glob("*.eval")):
            spec = read_eval_log(str(log), header_only=True).eval
            if target is not None and target not in (spec.model, spec.metadata["deepalign"]["cell"]["target"]):
                continue
            found += [(row, log) for row in read_rows([log]) if row.response.strip() and row.verdicts
                      and (attack is None or row.attack == attack) and (item is None or row.item == item)]
    if not found:
        raise SystemExit(f"browser check: no row with a response and a verdict in {run}"
                         + (f" (attack {attack}, target {target}, item {item})" if attack or target or item else ""))
    return next(((row, log) for row, log in found if row.prompt.get("prefill")), found[0])


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = next((b for b in CHROMIUM if os.path.exists(b)), None)
    if binary is None or not os.path.exists(CHROMEDRIVER):
        raise SystemExit("browser check: needs Debian's chromium and chromium-driver "
                         "(apt-get install -y chromium chromium-driver)")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,900"):
        opts.add_argument(arg)
    # the Debian driver by path: selenium's own driver manager would try to download one
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def squash(text: str) -> str:
    """Whitespace collapsed and lower case (the viewer upper-cases some labels with CSS)."""
    return " ".join(text.split()).lower()


def wait_for(driver, texts: list[str], what: str) -> None:
    """Wait until the page's visible text holds every one of ``texts`` (whitespace squashed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        body = squash(d.find_element("tag name", "body").text)
        return all(squash(t) in body for t in texts)

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(found)
    except TimeoutException:
        body = squash(driver.find_element("tag name", "body").text)
        missing = [t for t in texts if squash(t) not in body]
        raise SystemExit(f"browser check: {what}: not on the page after {WAIT_S} s: {missing}; the page shows: "
                         f"{body[:600]!r}") from None


def wait_gone(driver, text: str, what: str) -> None:
    """Wait until the page no longer shows ``text`` (the viewer's "Syncing data..." while it
    reads the logs' headers)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
            lambda d: squash(text) not in squash(d.find_element("tag name", "body").text))
    except TimeoutException:
        raise SystemExit(f"browser check: {what}: still {text!r} after {WAIT_S} s") from None


def check(run: Path, screenshots: Path | None, pick: dict) -> None:
    from inspect_ai.log import read_eval_log

    from deepalign.reports.inspect_log import view_dir

    with tempfile.TemporaryDirectory(prefix="deepalign-browser-") as tmp:
        site = Path(tmp) / "site"
        deepalign(["view", str(run), "--bundle", str(site), "--quiet"])
        row, log_path = pick_row(run, **pick)
        log = read_eval_log(str(log_path), header_only=True)
        rel = log_path.resolve().relative_to(view_dir(run, None).resolve()).as_posix()
        verdicts = {j: s.value for j, s in
                    next(s for s in read_eval_log(str(log_path)).samples if s.metadata["key"] == row.key).scores.items()}
        server, url = serve(site)
        driver = browser()
        try:
            driver.get(url)
            wait_for(driver, [log.eval.task], "the list of logs")
            wait_gone(driver, "Syncing data", "the list of logs")
            if screenshots:
                driver.save_screenshot(str(screenshots / "viewer_logs.png"))
            driver.get(f"{url}#/tasks/{quote(rel)}")
            wait_for(driver, [row.item, *verdicts.values()], f"the samples of {rel}")
            if screenshots:
                driver.save_screenshot(str(screenshots / "viewer_samples.png"))
            driver.get(f"{url}#/tasks/{quote(rel)}/samples/sample/{quote(row.item)}/{row.sample + 1}/")
            wanted = [row.prompt.get("query") or row.prompt.get("text") or "", row.raw or row.response,
                      *(row.prompt.get("prefill") and [row.prompt["prefill"]] or []), *verdicts, *verdicts.values()]
            wait_for(driver, [w for w in wanted if w.strip()], f"sample {row.item} of {rel}")
            if screenshots:
                driver.save_screenshot(str(screenshots / "viewer_sample.png"))
        finally:
            driver.quit()
            server.shutdown()
    print(f"browser check: the viewer shows {rel}: sample {row.item} with its response "
          f"({squash(row.raw or row.response)[:60]!r}) and the verdicts {verdicts}"
          + (f"; screenshots in {screenshots}" if screenshots else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="a run directory or a study's --out (default: a small run made here)")
    ap.add_argument("--screenshots", help="save the viewer's pages as PNG files in this directory")
    ap.add_argument("--attack", help="show a row of this attack (its label, e.g. prefill:8)")
    ap.add_argument("--target", help="show a row of this target (its name in the run, e.g. vanilla, or its label)")
    ap.add_argument("--item", help="show a row of this item id")
    a = ap.parse_args(argv)
    screenshots = Path(a.screenshots) if a.screenshots else None
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="deepalign-browser-run-"))
    try:
        run = Path(a.run_dir) if a.run_dir else small_run(workdir)
        check(run, screenshots, {"attack": a.attack, "target": a.target, "item": a.item})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
