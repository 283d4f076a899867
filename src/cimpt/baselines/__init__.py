"""Masked-image-modeling baselines run by the same engine as CIM: MAE, SimMIM and BEiT.

Each is one ``nn.Module`` with CIM's contract (``forward(batch) -> dict`` of scalar tensors
with a ``"loss"``, ``visualize(batch) -> panels``, the timm backbone under ``enhancer``), so
``cimpt pretrain objective=mae|simmim|beit`` gets the loop, checkpoints, exact resume, export,
figures and every evaluation command unchanged. ``cimpt.build`` picks the module.
See docs/METHOD.md and docs/METHOD_CHOICES.md for what each paper states and what we chose.
"""
