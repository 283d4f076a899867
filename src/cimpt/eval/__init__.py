"""Downstream evaluation of a pre-trained enhancer (Fang et al., ICLR 2023, Sec. 3).

The paper measures CIM by fine-tuning the enhancer; linear probing (MAE's BatchNorm + linear
head on frozen features) and cosine kNN are cheaper views of the same features.

- ``source``: where backbone weights come from (pre-training checkpoint, fine-tuning
  checkpoint or exported enhancer), with the timm arguments that rebuild the network;
- ``classifier``: the timm backbone with a classification head, built from those arguments;
- ``labelled``: labelled train/val datasets, with ``data.label_fraction`` and checks;
- ``augment``: the fine-tuning augmentation (RandAugment, mixup/cutmix from timm);
- ``accuracy``: top-k evaluation, sharded over DDP ranks;
- ``finetune``, ``linprobe``, ``knn``: the three commands.
"""
