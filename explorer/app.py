"""PEACE explorer: `streamlit run explorer/app.py` (artifacts from `./scripts/demo`).

The shell: page navigation (``st.navigation``: every page has its own URL, e.g. /neighbours) and the
sidebar's embedding-set picker. Each page is one script in ``explorer/views/`` holding its layout;
what the pages share (remembered choices, URL parameters, the opened set, common widgets) is
``explorer/shared.py``; everything they show is computed by ``peace.serve.explore.Explorer``. The
artifacts directory is ``artifacts/`` beside this repository, or ``$PEACE_ARTIFACTS``.
"""
from __future__ import annotations

import streamlit as st
from shared import sidebar_set

from peace.core.errors import PeaceError
from peace.serve.warm import WarmUp

PAGES = {"Map": "views/map.py", "Neighbours": "views/neighbours.py", "Interpolation": "views/interpolation.py",
         "Generate": "views/generate.py", "Best for a task": "views/rank.py",
         "Ablations": "views/ablations.py", "Symmetry lab": "views/symmetry_lab.py",
         "Query your model": "views/query.py"}

st.set_page_config(page_title="PEACE explorer", layout="wide")
warm = st.cache_resource(show_spinner=False)(WarmUp)()  # one per server: the other pages' imports, when idle
warm.hold()
try:  # whatever ends the run (a rerun, st.stop, an error), arm below releases the hold
    page = st.navigation([st.Page(path, title=title, default=title == "Map") for title, path in PAGES.items()])
    st.sidebar.title("PEACE explorer")
    sidebar_set()
    try:
        page.run()
    except PeaceError as e:  # what a page cannot do with this set (a model of no known task, say): its message
        st.warning(str(e))
finally:  # idle from here until the user's next input: the work the other pages' first visits need, done ahead
    opened = st.session_state.get("opened")
    work = {f"prefetch {opened.path} {id(opened)}": opened.prefetch} if opened is not None else {}  # a rebuilt set too
    warm.arm(**work, **st.session_state.pop("ahead", {}))  # and what the page asked for (the map's other view)
