"""PEACE: permutation-equivariant contrastive embeddings of neural-network weights.

Data flow: tasks -> population training -> zoo -> neural graph -> encoder -> embeddings -> explorer.
"""
import os as _os

_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
