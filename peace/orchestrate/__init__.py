"""Whole studies, each a sequence of the stages below: the papermill pipeline (``pipeline``), ablation
grids (``ablation``), the evaluation study behind ``peace evaluate`` (``evaluation``) and sampling new
models into a zoo with the generative study (``generation``).

Imports: every stage below. Only ``peace.cli``, the notebooks (and the explorer's Ablations page) import it.
"""
