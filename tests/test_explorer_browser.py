"""End to end: a real `streamlit run explorer/app.py` server, driven by Debian's headless chromium
through selenium. Every page is opened, a neighbour query is made and its rendered result checked;
screenshots go to test-artifacts/screenshots/."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = ROOT / "test-artifacts" / "screenshots"
# no background networking: this machine's network is closed and chromium would keep trying
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(artifacts):
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (./scripts/test installs them when run as root)")
    port = _free_port()
    env = {**os.environ, "PEACE_ARTIFACTS": str(artifacts)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start:\n{proc.stdout.read().decode()}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={ROOT / 'test-artifacts' / f'chromium-profile-{os.getpid()}'}")
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_text(driver, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in driver.find_element("tag name", "body").text:
        if time.time() > deadline:
            raise AssertionError(f"{text!r} never appeared; the page shows:\n{driver.find_element('tag name', 'body').text[:2000]}")
        time.sleep(0.3)


def _goto(driver, page: str, timeout: float = 60) -> None:
    """Click the page's entry in the sidebar navigation (st.navigation: a link per page)."""
    deadline = time.time() + timeout
    while time.time() < deadline:  # the sidebar renders after the page's first text
        for link in driver.find_elements("css selector", "[data-testid='stSidebarNav'] a"):
            if link.text.strip() == page:
                link.click()
                return
        time.sleep(0.3)
    raise AssertionError(f"no sidebar entry {page!r}")


def _element(driver, xpath: str, timeout: float = 60):
    """The element at ``xpath`` once the page has drawn it."""
    deadline = time.time() + timeout
    while not driver.find_elements("xpath", xpath):
        if time.time() > deadline:
            raise AssertionError(f"{xpath} never appeared")
        time.sleep(0.3)
    return driver.find_element("xpath", xpath)


def _plot(driver, timeout: float = 60) -> dict:
    """Wait until a plotly chart has drawn points; its trace names, legend entries and point count."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = driver.execute_script("""
            const p = document.querySelector('.js-plotly-plot');
            if (!p || !p._fullData) return null;  // drawn: plotly has laid out its traces (SVG or WebGL)
            return {points: p._fullData.reduce((n, t) => n + (t.visible === true ? (t._length || 0) : 0), 0)
                            + p.querySelectorAll('.heatmaplayer image').length,
                    legend: [...p.querySelectorAll('.legend .legendtext')].map(e => e.textContent),
                    title: (p.querySelector('.gtitle') || {}).textContent || ''};""")
        if found and found["points"] > 0:
            return found
        time.sleep(0.3)
    raise AssertionError("no plotly chart drew points")


def test_every_page_in_a_real_browser(server, browser, artifacts):
    from test_explorer import PAGES, VIEWS

    from peace.serve.index import EmbeddingSet

    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(server)
    _wait_text(browser, "PEACE explorer")
    es = EmbeddingSet(artifacts / "embeddings" / "tiny")
    expect = {"Map": "Colour by", "Neighbours": "Same task among the top", "Interpolation": "In embedding space",
              "Generate": "Download as model folders", "Best for a task": "inputs written by the better models",
              "Ablations": "Best configuration per metric", "Symmetry lab": "PEACE cosine distance",
              "Query your model": "Upload a safetensors file"}
    for page in PAGES:
        _goto(browser, page)
        _wait_text(browser, expect[page])
        if page == "Map":  # every model drawn, each task in the legend
            plot = _plot(browser)
            assert plot["points"] >= len(es), plot
            assert set(es.table["task"]) <= set(plot["legend"]), plot["legend"]
            assert f"{len(es)} models" in plot["title"]
            fold = browser.execute_script("const p = document.querySelector('.js-plotly-plot');"
                                          "return [p.querySelector('.xtick') ? p.querySelector('.xtick')"
                                          ".getBoundingClientRect().bottom : 1e9, window.innerHeight];")
            assert fold[0] <= fold[1], f"the map's x axis ends at {fold[0]} px, below the window's {fold[1]} px"
        if page in ("Interpolation", "Generate", "Best for a task", "Symmetry lab", "Ablations"):
            _plot(browser)
        if page != "Map":  # every page its own URL (the Map is the default page, at /)
            assert browser.current_url.split("?")[0].rstrip("/").endswith("/" + Path(VIEWS[page]).stem), browser.current_url
        browser.save_screenshot(str(SHOTS / f"{page.lower().replace(' ', '-')}.png"))
        body = browser.find_element("tag name", "body").text
        assert "Traceback" not in body and "Error" not in body.split("PEACE explorer")[0], page


def test_neighbour_query_in_a_real_browser(server, browser, artifacts):
    from peace.serve.explore import typical_model
    from peace.serve.index import EmbeddingSet

    browser.get(server)
    _wait_text(browser, "PEACE explorer")
    _goto(browser, "Neighbours")
    _wait_text(browser, "Same task among the top 10")
    es = EmbeddingSet(artifacts / "embeddings" / "tiny")
    query = typical_model(es.table)  # the page's default query, also in its URL
    body = browser.find_element("tag name", "body").text
    assert query in body and f"model={query}" in browser.current_url
    share = float(body.split("Same task among the top 10: PEACE ")[1].split("%")[0]) / 100
    hits = es.neighbours(query, 10)
    assert share == pytest.approx((hits["task"] == es.table.set_index("model_id").loc[query, "task"]).mean(), abs=0.006)
    browser.save_screenshot(str(SHOTS / "neighbour-query.png"))
    other = es.table["model_id"].iat[5]
    browser.get(f"{server}/neighbours?model={other}")  # a shared link opens on its model
    _wait_text(browser, "Same task among the top 10")
    assert other in browser.find_element("tag name", "body").text.split("Same task")[0]


def test_map_search_and_query_example_in_a_real_browser(server, browser, artifacts):
    from selenium.webdriver.common.keys import Keys

    from peace.serve.index import EmbeddingSet

    SHOTS.mkdir(parents=True, exist_ok=True)
    target = EmbeddingSet(artifacts / "embeddings" / "tiny").table["model_id"].iat[4]
    browser.get(server)
    _wait_text(browser, "Colour by")
    box = _element(browser, "//div[@data-testid='stTextInput'][.//label[starts-with(normalize-space(),'Find a model')]]"
                            "//input")  # drawn after the controls above it: wait for it
    box.send_keys(target, Keys.ENTER)
    deadline = time.time() + 60
    while target not in browser.execute_script(  # the found model starred, its neighbours ringed
            "const p = document.querySelector('.js-plotly-plot'); return p && p._fullData ? "
            "p._fullData.map(t => t.name || '').join('|') : '';"):
        assert time.time() < deadline, "the searched model was never starred on the map"
        time.sleep(0.3)
    assert "10 nearest (PEACE)" in _plot(browser)["legend"]
    browser.save_screenshot(str(SHOTS / "map-search.png"))
    _goto(browser, "Query your model")
    _wait_text(browser, "Try an example")
    browser.find_element("xpath", "//button[contains(., 'Try an example')]").click()
    _wait_text(browser, "(hidden units shuffled):")
    assert any("(hidden units shuffled)" in name for name in _plot(browser)["legend"])
    _wait_text(browser, "Function check", timeout=60)  # drawn beside the map, not always in the same frame
    body = browser.find_element("tag name", "body").text
    assert "Model file (up to 512 MiB)" in body and "per file" not in body  # the widget would round it to "1GB"
    browser.save_screenshot(str(SHOTS / "query-example.png"))


def _select(driver, label: str, option: str, timeout: float = 30) -> None:
    """Pick ``option`` in the selectbox labelled ``label``, as a user does: open it, click the option."""
    deadline = time.time() + timeout
    while True:
        try:
            driver.find_element("xpath", f"//input[@role='combobox'][@aria-label='{label}']/following-sibling::button"
                                         ).click()
            driver.find_element("xpath", f"//*[@role='option'][normalize-space()='{option}']").click()
            return
        except Exception:  # noqa: BLE001 - not drawn yet, or redrawn under the click: try again
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def _shown(driver, label: str) -> str:
    return driver.find_element("xpath", f"//input[@role='combobox'][@aria-label='{label}']").get_attribute("value")


def test_every_change_to_a_remembered_control_takes_effect_at_once(server, browser):
    """Issue 28: the second change in a row to the same control was dropped (the widget was re-created
    with the remembered value as its index on each rerun). Each pick must show at the first try."""
    browser.get(server)
    _wait_text(browser, "Colour by")
    _plot(browser)
    for option in ("arch", "activation", "task", "epoch"):  # four changes in a row to one control
        _select(browser, "Colour by", option)
        deadline = time.time() + 30
        while _shown(browser, "Colour by") != option or f"color={option}" not in browser.current_url:
            assert time.time() < deadline, f"picked {option!r}, the control shows {_shown(browser, 'Colour by')!r}"
            time.sleep(0.3)
    _goto(browser, "Neighbours")  # the last choice survives a page change
    _wait_text(browser, "Same task among the top")
    _goto(browser, "Map")
    _wait_text(browser, "Colour by")
    time.sleep(2)
    assert _shown(browser, "Colour by") == "epoch"


def _map_traces(browser) -> list[str]:
    return browser.execute_script("const p = document.querySelector('.js-plotly-plot');"
                                  "return p && p._fullData ? p._fullData.map(t => t.name) : [];")


def _wait_trace(browser, name: str, when: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while name not in _map_traces(browser):
        assert time.time() < deadline, f"no star for {name} {when}: {_map_traces(browser)}"
        time.sleep(0.3)


def test_a_click_on_the_map_stars_the_model_at_once_and_a_shared_link_opens_on_it(server, browser, artifacts):
    """Issue 28: a click only dimmed the map; the star and rings came with some later rerun."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    browser.get(server)
    _wait_text(browser, "Colour by")
    _plot(browser)
    time.sleep(1)
    # the viewport pixel of the first task's first point in view, from plotly's own axes
    where = browser.execute_script("""
        const p = document.querySelector('.js-plotly-plot'), t = p._fullData[0], L = p._fullLayout;
        const r = p.getBoundingClientRect();
        for (let i = 0; i < t.x.length; i++) {
            const x = r.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), y = r.top + L.yaxis._offset + L.yaxis.l2p(t.y[i]);
            if (y > 0 && y < window.innerHeight - 10) return {id: t.customdata[i][0], x: x, y: y};
        }""")
    assert where, "no point of the map in view"
    # a real pointer at that pixel of the viewport: move there, let plotly find the hovered point, click
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(where["x"]), int(where["y"])).pause(0.5)
    actions.pointer_action.move_to_location(int(where["x"]) + 1, int(where["y"])).pause(0.5).click()
    actions.perform()
    _wait_trace(browser, where["id"], "after one click")  # the star is a trace named by the model
    assert "10 nearest (PEACE)" in _map_traces(browser)
    _wait_text(browser, f"★ {where['id']}")
    assert f"model={where['id']}" in browser.current_url
    shared = browser.current_url
    browser.get("about:blank")
    browser.get(shared)  # the link opens on the model
    _wait_text(browser, f"★ {where['id']}")
    _wait_trace(browser, where["id"], "opening the shared link")
    browser.get(server + "/neighbours?model=no-such-model")
    _wait_text(browser, "'no-such-model' is not in this set")
    browser.save_screenshot(str(SHOTS / "map-click.png"))


def test_a_plain_state_dict_upload_starts_without_an_error_box(server, browser, artifacts, tmp_path):
    """Issue 28: a state dict without its activation always began with a red error. Now the activation
    that fits the network on the zoo tasks' data is used and said, and the closeness to the zoo is shown."""
    import torch

    from peace.serve.explore import Explorer

    ex = Explorer(artifacts / "embeddings" / "tiny")
    t = ex.table[(ex.table["family"] == "mlp") & (ex.table["activation"] == "relu")]
    mid = t.loc[t["test_acc"].idxmax(), "model_id"]
    torch.save(ex.zoo.weights(mid), tmp_path / "mine.pt")  # a plain state dict, as users save them
    browser.get(server + "/query")
    _wait_text(browser, "Try an example")
    browser.find_element("css selector", "input[type='file']").send_keys(str(tmp_path / "mine.pt"))
    _wait_text(browser, "mine.pt: mlp", timeout=120)
    _wait_text(browser, "does not name its activation", timeout=60)
    _wait_text(browser, "zoo models' nearest neighbours are typically at", timeout=60)
    alerts = browser.find_elements("css selector", "[data-testid='stAlertContentError']")
    assert not alerts, [a.text for a in alerts]
    browser.save_screenshot(str(SHOTS / "query-upload.png"))


def test_the_search_example_finds_what_it_says_in_a_real_browser(server, browser, artifacts):
    """Issue 28: "tetris mlp epoch 5" returned 40 models and none at epoch 5 ("5" matched ids)."""
    from selenium.webdriver.common.keys import Keys

    from peace.serve.index import EmbeddingSet

    t = EmbeddingSet(artifacts / "embeddings" / "tiny").table
    mlps = t[(t["task"] == "tetris") & (t["family"] == "mlp")]
    epoch = int(mlps["epoch"].max())
    want = int((mlps["epoch"] == epoch).sum())
    browser.get(server)
    _wait_text(browser, "Colour by")
    box = _element(browser, "//div[@data-testid='stTextInput'][.//label[starts-with(normalize-space(),'Find a model')]]"
                            "//input")
    box.send_keys(f"tetris mlp epoch {epoch}", Keys.ENTER)
    _wait_text(browser, f"Read as: words 'tetris', 'mlp'; epoch = {epoch}.")
    _wait_text(browser, f"{want} models match" if want > 1 else "★")
    options = browser.execute_script("return [...document.querySelectorAll('input[role=combobox]')]"
                                     ".map(e => e.value);")
    picked = next(o for o in options if " · tetris · " in o)
    assert f" · epoch {epoch} · " in picked, picked
