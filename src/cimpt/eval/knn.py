"""``cimpt knn``: weighted cosine k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. (2018) as used by DINO: L2-normalized pooled features of the
training images (center view, no augmentation) form the memory bank; each held-out image
takes its k most cosine-similar training images, which vote for their class with weight
``exp(cos / T)`` (``eval.knn_temperature``, 0.07). Reported for every ``k`` in
``eval.knn_k`` (20 and 200). Features are extracted on rank 0 only: kNN is cheap next to
training, and a single process keeps the memory bank in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cimpt.atomic import write_json
from cimpt.config import save_config, typed
from cimpt.data import ImageCollate
from cimpt.data.checks import check_paths
from cimpt.engine.distributed import pick_device
from cimpt.engine.precision import autocast, describe, resolve_amp
from cimpt.eval.augment import NormalizedEval
from cimpt.eval.classifier import classifier_args, load_backbone_into
from cimpt.eval.finetune import start_weights
from cimpt.eval.labelled import build_labelled_data
from cimpt.eval.source import adopt_from_init, init_record
from cimpt.export import timm_args
from cimpt.models.weights import create_timm_model

KNN_FILE = "knn.json"
#: Where ``cimpt knn`` writes when no run.dir is given (the config's is another run's).
DEFAULT_KNN_DIR = "runs/knn"


@torch.no_grad()
def extract_features(
    model: Any,
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
    amp: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized pooled features ``[N, C]`` (fp32) and labels ``[N]`` of a labelled
    dataset; the backbone runs under ``amp`` autocast when given (``train.amp``)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=ImageCollate(),
    )
    feats, labels = [], []
    for batch in tqdm(loader, disable=not progress, unit="batch", leave=False):
        if batch["label"].numel():
            with autocast(device, amp):
                out = model(batch["x"].to(device))
            feats.append(F.normalize(out.float(), dim=1).cpu())
            labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    query_f: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted-vote predictions ``[Q, num_classes]`` scores for normalized query features.

    Args:
        train_f: memory bank ``[N, C]``, rows L2-normalized; ``train_y``: labels ``[N]``.
        query_f: ``[Q, C]``, rows L2-normalized.
        k: neighbours (capped at N); temperature: vote weight ``exp(cos / T)``.
    """
    k = min(k, len(train_f))
    out = []
    for q in query_f.split(chunk):
        sims, idx = (q @ train_f.T).topk(k, dim=1)  # [q, k]
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_command(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate kNN accuracy; writes ``run.dir/knn.json`` and ``config.yaml``."""
    check_paths(cfg, val="required", init=True)
    source = adopt_from_init(cfg, "kNN on")
    c = typed(cfg)  # after the checkpoint's architecture was adopted into cfg
    view = NormalizedEval(c.data.img_size, c.data.mean, c.data.std)
    data = build_labelled_data(c, view, view)
    torch.manual_seed(c.seed)  # the random-init baseline is reproducible
    model = create_timm_model(
        start_weights(c.enhancer, source),
        **classifier_args(timm_args(c), 0, 0.0, c.finetune.global_pool),
    )
    if source is not None:
        load_backbone_into(model, source.state, str(source.path))
    device = pick_device(c.train.device)
    model.to(device).eval()
    bs, workers, bar = c.eval.batch_size, c.data.num_workers, c.run.progress
    amp = resolve_amp(c.train.amp, device)
    train_f, train_y = extract_features(model, data.train, bs, workers, device, bar, amp)
    val_f, val_y = extract_features(model, data.val, bs, workers, device, bar, amp)
    results: dict[str, Any] = {
        "init": init_record(c.enhancer, source)["init"],
        "label_fraction": c.data.label_fraction,
        "train_images": len(train_y),
        "val_images": len(val_y),
        "temperature": c.eval.knn_temperature,
        "precision": describe(amp, device),
        "top1": {},
    }
    for k in c.eval.knn_k:
        scores = knn_predict(train_f, train_y, val_f, k, c.eval.knn_temperature, data.num_classes)
        results["top1"][str(k)] = 100.0 * float((scores.argmax(1) == val_y).float().mean())
    run_dir = Path(c.run.dir).expanduser()
    save_config(cfg, run_dir / "config.yaml")
    write_json(run_dir / KNN_FILE, results)
    shown = ", ".join(f"k={k}: {v:.2f} %" for k, v in results["top1"].items())
    print(f"kNN top-1 ({len(val_y)} images): {shown}; {run_dir / KNN_FILE}")
    return results
