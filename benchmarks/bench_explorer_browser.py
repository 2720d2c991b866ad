"""What a user waits for in a real browser (Debian's headless chromium via selenium): first Map and
its colour changes, first Neighbours (PEACE + function space + s(W) + raw) and a change of k, later
visits, the interpolation and symmetry pages, and queries on Query your model (the example, and
uploads parsed in the isolated reader). Each time runs from the interaction until the page shows
its result (a text, or the map's new title).

    python benchmarks/bench_explorer_browser.py [--artifacts artifacts]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from selenium.webdriver.common.keys import Keys
from torch import nn

from peace.architectures import ArchSpec, build_module

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_explorer_browser as browser_test  # noqa: E402  (its chromium flags and page helpers)


def start_server(artifacts: Path) -> tuple[subprocess.Popen, str]:
    port = browser_test._free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env={**os.environ, "PEACE_ARTIFACTS": str(artifacts.resolve())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    proc, url = start_server(args.artifacts)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(browser_test.CHROMIUM)
    for flag in browser_test.FLAGS:
        opts.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="peace-chromium-")  # a fresh profile: no lock held by another chromium
    opts.add_argument(f"--user-data-dir={profile.name}")
    driver = webdriver.Chrome(service=Service(str(browser_test.DRIVER)), options=opts)

    def timed(label: str, act, text: str) -> None:
        t = time.time()
        act()
        browser_test._wait_text(driver, text, 300)
        print(f"{label}: {time.time() - t:.1f} s", flush=True)

    goto = lambda page: lambda: browser_test._goto(driver, page)  # noqa: E731

    def title_says(text: str):  # the map redrew: its title names the new colouring
        return lambda: text in browser_test._plot(driver)["title"]

    def timed_until(label: str, act, done) -> None:
        t = time.time()
        act()
        while not done():
            if time.time() - t > 300:
                raise AssertionError(f"{label}: never finished")
            time.sleep(0.05)
        print(f"{label}: {time.time() - t:.1f} s", flush=True)

    def choose(label: str, option: str):  # a Streamlit selectbox: click it, type the option, Enter
        def act():
            box = driver.find_element("xpath", f"//div[@data-testid='stSelectbox'][.//label[normalize-space()="
                                               f"'{label}']]//input")
            box.click()
            box.send_keys(option, Keys.ENTER)
        return act

    try:
        timed("first Map", lambda: driver.get(url), "Colour by")
        browser_test._plot(driver)
        timed_until("Map: colour by test accuracy", choose("Colour by", "test_acc"), title_says("test accuracy"))
        three_d = lambda want: lambda: driver.execute_script(  # noqa: E731
            "const p = document.querySelector('.js-plotly-plot');"
            "return !!(p && p._fullData && p._fullData.length && (p._fullData[0].type === 'scatter3d') === arguments[0]);",
            want)
        radio = lambda text: lambda: driver.find_element(  # noqa: E731
            "xpath", f"//div[@data-testid='stRadio']//label[normalize-space()='{text}']").click()
        timed_until("Map: 3-D view", radio("3-D"), three_d(True))
        timed("first Neighbours", goto("Neighbours"), "Same task among the top")
        from peace.index import EmbeddingSet
        from peace.explore import find_embedding_sets

        other = EmbeddingSet(find_embedding_sets(args.artifacts)[0]).table["model_id"].iat[7]
        timed_until("Neighbours: another query model", choose("Query model (type to search)", other),
                    lambda: f"{other}:" in driver.find_element("tag name", "body").text
                    and "Same task among" in driver.find_element("tag name", "body").text)
        timed("back to Map", goto("Map"), "Colour by")
        timed("second Neighbours", goto("Neighbours"), "Same task among the top")
        timed("first Interpolation (align, interpolate, embed the path)", goto("Interpolation"), "Path points are placed")
        timed("first Symmetry lab", goto("Symmetry lab"), "PEACE cosine distance")
        with tempfile.TemporaryDirectory() as d:
            up, vit = Path(d) / "upload.pt", Path(d) / "vit.pt"
            torch.manual_seed(0)
            torch.save(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict(), up)
            spec = ArchSpec("vit", (1, 8, 8), 10, hidden=(16,), fc_hidden=(32,), blocks=(1,), heads=2, kernel_size=2,
                            pool="cls", norm="layer", activation="gelu")
            torch.save(build_module(spec).state_dict(), vit)
            goto("Query your model")()
            browser_test._wait_text(driver, "Upload a safetensors file")
            timed("example query (a shuffled zoo model, isolated reader + query)",
                  lambda: driver.find_element("xpath", "//button[contains(., 'Try an example')]").click(),
                  "hidden units shuffled):")
            file_input = lambda: driver.find_element("css selector", "input[type=file]")  # noqa: E731
            timed("upload .pt of a plain chain (isolated reader + query): asks for the activation",
                  lambda: file_input().send_keys(str(up)), "do not say which activation")
            heads = driver.find_element("css selector", "input[aria-label='Attention heads']")
            heads.send_keys(Keys.BACK_SPACE, "2", Keys.ENTER)
            time.sleep(1)
            timed("upload .pt of a ViT, heads given (isolated reader + query)",
                  lambda: file_input().send_keys(str(vit)), spec.describe())
    finally:
        driver.quit()
        proc.terminate()
        profile.cleanup()


if __name__ == "__main__":
    main()
