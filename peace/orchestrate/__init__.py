"""Whole studies, each a sequence of the stages below: the papermill pipeline (``pipeline``), ablation
grids (``ablation``) and the evaluation study behind ``peace evaluate`` (``evaluation``).

Imports: every stage below. Only ``peace.cli`` (and the explorer's Ablations page) import it.
"""
