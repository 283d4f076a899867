"""Top-k accuracy on a held-out set, sharded over DDP ranks without padding (exact counts)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cimpt.data import ImageCollate
from cimpt.engine import distributed as D
from cimpt.models.modes import eval_mode


def shard_loader(dataset: Dataset[Any], batch_size: int, num_workers: int) -> DataLoader:
    """This rank's every ``world``-th sample, in order (no padding, so counts are exact)."""
    rank, world = D.distributed_rank_world()
    n = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        Subset(dataset, range(rank, n, world)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=ImageCollate(),
    )


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """Number of rows whose label is among the ``k`` largest logits, for each ``k``."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [B, kmax]
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    prefix: str = "val",
) -> dict[str, float]:
    """``{prefix}_top1``, ``{prefix}_top5`` (percent) and ``{prefix}_loss`` (cross-entropy)."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    with eval_mode(model):
        for batch in shard_loader(dataset, batch_size, num_workers):
            if batch["label"].numel() == 0:
                continue
            x, y = batch["x"].to(device), batch["label"].to(device)
            logits = model(x).float()
            c1, c5 = topk_correct(logits, y, (1, 5))
            sums += torch.tensor(
                [float(F.cross_entropy(logits, y, reduction="sum")), c1, c5, len(y)],
                dtype=torch.float64,
                device=device,
            )
    D.all_reduce_sum(sums)
    n = max(float(sums[3]), 1.0)
    return {
        f"{prefix}_top1": 100.0 * float(sums[1]) / n,
        f"{prefix}_top5": 100.0 * float(sums[2]) / n,
        f"{prefix}_loss": float(sums[0]) / n,
    }
