"""Semantic segmentation with a CIM enhancer: ``cimpt segment`` (UperNet, after BEiT).

data.py (folders, checks), transforms.py (joint scale/crop/flip), backbone.py (feature
levels of a ViT or CNN), decoder.py (UperNet), model.py (network + loss), infer.py
(sliding window), metrics.py (confusion matrix, IoU), evaluate.py, figure.py, task.py.
"""
