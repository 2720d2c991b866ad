"""The measuring stick: retrieval and clustering metrics (``metrics``), the baselines PEACE is measured
against behind one fit / transform interface (``baselines``), accuracy prediction with the published
peers NFN and ProbeGen (``prediction``, ``probegen``), model selection on unlabelled tasks
(``selection``) and transfer learning from retrieved models (``transfer``).

Imports: ``peace.core``, ``peace.nets``, ``peace.zoo``. It sits below ``peace.learn`` on purpose:
what measures the encoder never depends on it, and the trainer validates with the same metrics. The
study that runs all of them on a trained encoder is ``peace.orchestrate.evaluation``.
"""
