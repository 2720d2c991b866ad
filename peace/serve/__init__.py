"""What users look at: embedding sets with their Annoy index (``index.EmbeddingSet``), writing one
from a zoo and a run (``export``), the baselines' vectors stored beside it (``baseline_vectors``), the
explorer's model (``explore.Explorer``), teaching demos (``teaching``) and plotly figures (``plots``).

Imports: every stage below (core, nets, zoo, intake, evaluate, learn).
"""
