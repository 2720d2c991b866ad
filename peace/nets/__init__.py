"""Networks as PEACE sees them: architecture specs and the batched forward pass (``architectures``,
with ``layers``, ``resnet``, ``transformer``), exact weight-space symmetries and canonical forms
(``symmetry``), weight matching and interpolation (``alignment``), neural graphs (``graph``) and
responses to shared probe inputs (``probes``).

Imports: ``peace.core``.
"""
