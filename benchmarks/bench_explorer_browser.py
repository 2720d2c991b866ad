"""What a user waits for in a real browser (Debian's headless chromium via selenium): first Map,
first Neighbours (PEACE + function space + s(W) + raw), later visits, and an upload on Query your
model (parsed in the isolated reader). Each time runs from the interaction until the page shows its
result text.

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
    try:
        timed("first Map", lambda: driver.get(url), "Colour by")
        timed("first Neighbours", goto("Neighbours"), "Same task among the top")
        timed("back to Map", goto("Map"), "Colour by")
        timed("second Neighbours", goto("Neighbours"), "Same task among the top")
        with tempfile.TemporaryDirectory() as d:
            up, vit = Path(d) / "upload.pt", Path(d) / "vit.pt"
            torch.manual_seed(0)
            torch.save(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict(), up)
            spec = ArchSpec("vit", (1, 8, 8), 10, hidden=(16,), fc_hidden=(32,), blocks=(1,), heads=2, kernel_size=2,
                            pool="cls", norm="layer", activation="gelu")
            torch.save(build_module(spec).state_dict(), vit)
            goto("Query your model")()
            browser_test._wait_text(driver, "Upload a safetensors file")
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
