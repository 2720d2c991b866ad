"""Model zoos: offline tasks (``tasks``), recipes (``recipe``), training many small models at once
(``population``), the store that builds and reads a zoo directory (``store.Zoo``), zoos written
from generated weights (``generated``), models made elsewhere added to a zoo (``imported``, what
``peace zoo add`` writes once ``peace.intake`` has read them), splits by lineage (``splits``) and
choosing models by ids or a manifest query (``query``).

Imports: ``peace.core``, ``peace.nets``. ``from peace.zoo import Zoo`` is the store's class.
"""
from peace.zoo.store import Zoo

__all__ = ["Zoo"]
