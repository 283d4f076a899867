"""cimpt: Corrupted Image Modeling pre-training (Fang et al., ICLR 2023, arXiv 2202.03382).

Data flow: images -> two views + block mask (``cimpt.data``) -> ``tokenizer.encode`` ->
generator (loss, logits) -> sample -> ``tokenizer.decode`` -> corrupted image -> enhancer ->
head -> RESPIX or REVDET loss (``cimpt.cim``; the objectives in ``cimpt.cim_objectives``).
"""

__version__ = "0.1.0"
