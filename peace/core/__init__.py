"""The ground every stage stands on: the one error type (``errors``), atomic writes and locks
(``atomic``), counter-based random numbers (``rng``), rows grouped by a key (``grouping``), dataclass
configs from YAML (``config``), paths that stay inside their directory (``paths``), the torch device
(``device``) and where fanned-out work runs, here or on Ray (``cluster``).

Imports: nothing else of peace.
"""
