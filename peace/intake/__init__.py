"""Models made elsewhere, read safely: the strict reader of ``torch.save`` files (``torchfile``),
importers of state dicts, safetensors files, modules and scikit-learn estimators (``importers``,
``layouts`` for torchvision ResNets and timm ViTs, ``modules``) and the resource-limited child process
a server reads uploads in (``sandbox``).

Imports: ``peace.core``, ``peace.nets`` (never ``peace.zoo``: a file is read before it joins one).
"""
