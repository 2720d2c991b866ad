"""What a user waits for in a real browser (Debian's headless chromium via selenium), on the demo set:
the first Map (a fresh browser profile, then a returning user's cached browser), its interactions
(colour, 3-D, find a model), Neighbours (first visit, another query, k), later visits, the
interpolation, generate, best-for-a-task and symmetry pages, Query your model (the example, and uploads parsed in the
isolated reader), and a link to Neighbours opened on a cold server (its first visitor, no Map before it).

Each time is measured inside the page, from the user's input event (key, click, file chosen; the
navigation's start for a first visit) until the page shows the result (the map's points drawn, its
title, a text), polled every 10 ms; selenium's own round trips do not count. Before each query on Query your model the script waits
3 s, as a user picking a file does (the page starts the file's isolated reader meanwhile).

    python benchmarks/bench_explorer_browser.py [--artifacts artifacts] [--repeats 3] [--json out.json]

Each repeat is a new server and a new browser; the table gives the median and the range.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.keys import Keys
from torch import nn

from peace.nets.architectures import ArchSpec, build_module

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_explorer_browser as browser_test  # noqa: E402  (its chromium flags and page helpers)

# records the last input event; installed in every document the browser opens
INPUT = """window.__input = null;
for (const e of ['pointerdown', 'keydown', 'change']) document.addEventListener(e, () => { window.__input = performance.now(); }, true);"""
WATCH = """clearInterval(window.__iv); window.__done = null; window.__input = arguments[1] ? 0 : null;
const done = new Function(arguments[0]);
window.__iv = setInterval(() => { if (window.__input !== null && done()) { window.__done = performance.now() - window.__input; clearInterval(window.__iv); } }, 10);"""
PLOT = "const p = document.querySelector('.js-plotly-plot'); const n = p && p._fullData ? p._fullData.reduce((n, t) => n + (t._length || 0), 0) : 0;"
DRAWN = PLOT + "return n > 10;"  # the map's points (the placeholder drawn while plotly.js loads has none)


THINK = 3.0  # seconds a user takes to pick a file; the page starts the next file's isolated reader meanwhile
LOOK = 2.0  # seconds a user looks at the first map before the first click; the server imports the other pages' modules


def text(s: str) -> str:
    return f"return document.body.innerText.includes({json.dumps(s)});"


def starred(name: str) -> str:
    """The query's result: its neighbours table and the map with the query starred (a trace named after it)."""
    return PLOT + f"return n > 10 && p._fullData.some(t => (t.name || '').includes({json.dumps(name)}));"


def start_server(artifacts: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env={**os.environ, "PEACE_ARTIFACTS": str(artifacts.resolve())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.3)


def restart(proc: subprocess.Popen, artifacts: Path, port: int) -> subprocess.Popen:
    """A new server on the same port (the browser keeps its cache: same origin)."""
    proc.terminate()
    proc.wait()
    return start_server(artifacts, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write every repeat's times (seconds) to this file")
    ap.add_argument("--look", type=float, default=LOOK, help="seconds a user looks at the first map before the "
                    "first click (default %(default)s; 0: a robot that clicks as soon as the points are drawn)")
    args = ap.parse_args()
    runs = [run_once(args.artifacts, args.look) for _ in range(args.repeats)]
    print(f"\n{'':60s} median  (range over {len(runs)} runs, seconds)")
    for label in runs[0]:
        t = sorted(r[label] for r in runs)
        print(f"{label:62s} {statistics.median(t):5.2f}  ({t[0]:.2f}-{t[-1]:.2f})")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


def run_once(artifacts: Path, look: float = LOOK) -> dict[str, float]:
    """One pass over every page and interaction: a new server, a new browser profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from peace.serve.explore import find_embedding_sets
    from peace.serve.index import EmbeddingSet

    port = browser_test._free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(artifacts, port)
    print(f"--- a new server and browser ({url})", flush=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(browser_test.CHROMIUM)
    for flag in browser_test.FLAGS:
        opts.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="peace-chromium-")  # a fresh profile: nothing cached
    opts.add_argument(f"--user-data-dir={profile.name}")
    driver = webdriver.Chrome(service=Service(str(browser_test.DRIVER)), options=opts)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": INPUT})
    times: dict[str, float] = {}

    def timed(label: str, act, done_js: str, first_visit: bool = False) -> None:
        try:
            if first_visit:  # a new document: from the navigation's start (performance.now() == 0)
                act()
                driver.execute_script(WATCH, done_js, True)
            else:
                driver.execute_script(WATCH, done_js, False)
                act()
        except NoSuchElementException:  # an older app without this control (a before / after comparison)
            times[label] = float("nan")
            print(f"{label}: - (no such control)", flush=True)
            return
        deadline = time.time() + 300
        while (took := driver.execute_script("return window.__done")) is None:
            if time.time() > deadline:
                raise AssertionError(f"{label}: never finished")
            time.sleep(0.1)
        times[label] = took / 1000
        print(f"{label}: {took / 1000:.2f} s", flush=True)

    def choose(label: str, option: str):  # a Streamlit selectbox: click it, type the option, Enter
        def act():
            box = driver.find_element("xpath", f"//div[@data-testid='stSelectbox'][.//label[normalize-space()="
                                               f"'{label}']]//input")
            box.click()
            box.send_keys(option)
            time.sleep(0.3)  # the typed filter settles; the time runs from the Enter
            box.send_keys(Keys.ENTER)
        return act

    def search(model_id: str):  # the map's search box: type an id, Enter
        def act():
            box = driver.find_element("xpath", "//div[@data-testid='stTextInput'][.//label[starts-with(normalize-space(),"
                                               "'Find a model')]]//input")
            box.click()
            box.send_keys(model_id)
            time.sleep(0.3)
            box.send_keys(Keys.ENTER)
        return act

    goto = lambda page: lambda: browser_test._goto(driver, page)  # noqa: E731
    radio = lambda label: lambda: driver.find_element(  # noqa: E731
        "xpath", f"//div[@data-testid='stRadio']//label[normalize-space()=\"{label}\"]").click()
    table = EmbeddingSet(find_embedding_sets(artifacts)[0]).table
    other, found = table["model_id"].iat[7], table["model_id"].iat[11]
    try:
        timed("first Map, fresh browser (its points drawn)", lambda: driver.get(url), DRAWN, first_visit=True)
        time.sleep(look)
        timed("Map: colour by test accuracy", choose("Colour by", "test_acc"),
              PLOT + "return n > 10 && (p.querySelector('.gtitle') || {}).textContent.includes('test accuracy');")
        timed("Map: find a model (starred, its neighbours ringed)", search(found),
              PLOT + f"return p._fullData.some(t => t.name === {json.dumps(found)});")
        timed("Map: 3-D view", radio("3-D"), PLOT + "return n > 10 && p._fullData[0].type === 'scatter3d';")
        timed("first Neighbours", goto("Neighbours"), text("Same task among the top"))
        timed("Neighbours: another query model", choose("Query model (type to search)", other),
              text(f"{other}:"))
        timed("back to Map (its points drawn)", goto("Map"), DRAWN)
        timed("second Neighbours", goto("Neighbours"), text("Same task among the top"))
        timed("first Interpolation (align, interpolate, embed the path)", goto("Interpolation"),
              text("Path points are placed"))
        timed("first Generate (sample, decode, measure, place on the map)", goto("Generate"),
              "return ['Download as model folders', 'has no decoder'].some(s => document.body.innerText.includes(s));")
        if "has no decoder" in driver.find_element("tag name", "body").text:  # a run without `peace decoder`
            times["first Generate (sample, decode, measure, place on the map)"] = float("nan")
        timed("first Best for a task (inputs the models write)", goto("Best for a task"),
              text("inputs written by the better models"))
        timed("Best for a task: consensus on Gaussian probes", radio("Gaussian probes (weights only, quicker)"),
              text("models ranked by consensus on Gaussian"))
        timed("Best for a task: on the task's unlabelled inputs", radio("the task's unlabelled inputs"),
              text("unlabelled test inputs of task"))
        timed("first Symmetry lab", goto("Symmetry lab"), text("PEACE cosine distance"))
        with tempfile.TemporaryDirectory() as d:
            up, vit = Path(d) / "upload.pt", Path(d) / "vit.pt"
            torch.manual_seed(0)
            torch.save(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict(), up)
            spec = ArchSpec("vit", (1, 8, 8), 10, hidden=(16,), fc_hidden=(32,), blocks=(1,), heads=2, kernel_size=2,
                            pool="cls", norm="layer", activation="gelu")
            torch.save(build_module(spec).state_dict(), vit)
            timed("first Query your model", goto("Query your model"), text("Try an example"))
            time.sleep(THINK)
            timed("example query (a shuffled zoo model, isolated reader + query)",
                  lambda: driver.find_element("xpath", "//button[contains(., 'Try an example')]").click(),
                  starred("(hidden units shuffled)"))
            file_input = lambda: driver.find_element("css selector", "input[type=file]")  # noqa: E731
            time.sleep(THINK)
            timed("upload .pt of a plain chain (isolated reader + query): asks for the activation",
                  lambda: file_input().send_keys(str(up)), text("do not say which activation"))
            heads = driver.find_element("css selector", "input[aria-label='Attention heads']")
            heads.send_keys(Keys.BACK_SPACE, "2", Keys.ENTER)
            time.sleep(THINK)
            timed("upload .pt of a ViT, heads given (isolated reader + query)",
                  lambda: file_input().send_keys(str(vit)), starred("vit.pt"))
        proc = restart(proc, artifacts, port)  # a returning user: a new server, the browser's cache kept
        timed("first Map, returning browser (its points drawn)", lambda: driver.get(url), DRAWN, first_visit=True)
        # a cold server whose first visitor follows a link to Neighbours (nothing done ahead)
        proc = restart(proc, artifacts, port)
        timed("first Neighbours on a cold server (a link to /neighbours)", lambda: driver.get(f"{url}/neighbours"),
              text("Same task among the top"), first_visit=True)
    finally:
        driver.quit()
        proc.terminate()
        profile.cleanup()
    return times


if __name__ == "__main__":
    main()
