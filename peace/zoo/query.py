"""Choosing a zoo's models from text: model ids, or a query over its manifest (what ``peace sample``'s
prompt and ``peace rank``'s selection accept)."""
from __future__ import annotations

import re

import pandas as pd

from peace.core.errors import PeaceError

__all__ = ["select_ids"]


def select_ids(manifest: pd.DataFrame, text: str, what: str = "selection") -> list[str]:
    """The ids ``text`` names (whitespace- or comma-separated ids of ``manifest``'s index), or else the rows
    of the pandas query ``text`` over the manifest's columns; a malformed query is refused by name."""
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if tokens and all(t in manifest.index for t in tokens):
        return tokens
    try:
        chosen = manifest.query(text, engine="python")
    except Exception as e:  # pandas raises many kinds for a malformed expression
        raise PeaceError(f"the {what} {text!r} is neither model ids of the zoo nor a manifest query ({type(e).__name__}: "
                         f"{str(e)[:200]}); write e.g. \"task == 'digits' and test_acc > 0.9\" (columns: "
                         f"{', '.join(c for c in manifest.columns if c != 'arch_spec')})") from None
    return list(chosen.index)
