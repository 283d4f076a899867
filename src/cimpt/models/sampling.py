"""Restricting the generator's distribution before CIM samples from it (top-k, nucleus).

The paper samples replacements from the generator's full distribution (docs/METHOD.md step
5). At our scale the generator stays near chance and a full-vocabulary sample is close to a
random code; top-k (Fan et al. 2018) and nucleus sampling (Holtzman et al. 2020) cut the
implausible tail. Both are options, off by default (docs/METHOD_CHOICES.md).
"""

from __future__ import annotations

import torch


def truncate_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0
) -> torch.Tensor:
    """Set every id outside the top-k and outside the nucleus to ``-inf``.

    Args:
        logits: ``[..., V]`` scores (float).
        top_k: keep the ``top_k`` largest scores per position (ties at the k-th score are
            kept too); 0 keeps all.
        top_p: keep the smallest set of ids, most likely first, whose probability under
            ``softmax(logits / temperature)`` reaches ``top_p``; the most likely id is always
            kept; 1 keeps all. Ignored at temperature 0 (argmax needs no cut).
        temperature: the sampling temperature the nucleus is measured at.

    Returns:
        ``[..., V]``: ``logits`` with the cut ids at ``-inf`` (the input itself when nothing
        is cut). The order of the kept scores is unchanged, so argmax is unchanged.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0 and temperature > 0:
        sorted_scores, order = logits.sort(dim=-1, descending=True)
        probs = (sorted_scores / temperature).softmax(dim=-1)
        # An id is cut when the ids before it already hold top_p: the first id never is.
        cut_sorted = probs.cumsum(dim=-1) - probs >= top_p
        cut = torch.zeros_like(cut_sorted).scatter_(-1, order, cut_sorted)
        logits = logits.masked_fill(cut, float("-inf"))
    return logits
