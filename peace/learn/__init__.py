"""Learning the embedding: the PEACE encoder (``encoder``) and its non-equivariant control
(``flat_encoder``), contrastive views and losses (``contrastive``), the run config (``runconfig``),
the run directory that owns a run's files (``run.RunDir``), the training loop (``trainer``),
data-parallel training (``distributed``), and the way back from embeddings to weights: the decoder
(``decoder``), decoded models refined towards the embedding's function block (``refine``), and the
decoder's training, reconstructions and sampling (``generation``); ProbeGen trained with
PEACE's contrastive partners, a retrieval peer (``probegen``).

Imports: ``peace.core``, ``peace.nets``, ``peace.zoo``, ``peace.intake`` (the strict reader for old
checkpoints), ``peace.evaluate`` (validation metrics, the flat control's weight vector).
"""
