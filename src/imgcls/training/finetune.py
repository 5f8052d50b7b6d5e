"""Fine-tuning from pretrained weights, after fastai's `fine_tune`: the head alone first (backbone frozen), then
the whole model with discriminative learning rates (the first layers lowest).

Beyond fastai: while the backbone is frozen its features do not change, so they are computed once, for every
training image and its mirror image, and the head trains on those. The frozen stage then costs one forward pass
per image and flip instead of one per image and epoch. Batch norm stays in eval mode there (ImageNet's statistics),
which is what cached features need; bench/transfer.py and bench/backbones.py measure it against training the norms.
"""

import math
import time

import torch
import torch.nn as nn

from imgcls import distributed
from imgcls.data.augment import prepare
from imgcls.device import autocast

GROUPS = 3  # backbone parameter groups, from lr / lr_mult (first layers) up to lr / lr_mult ** (1 / GROUPS)
HEAD_LR = 2.0  # the frozen stage's lr, times the run's: fastai's fine_tune halves its base lr when it unfreezes


def classifier(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The model's head: its last Linear layer with one output per class (None for models whose head is no Linear)."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = module
    return found


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def param_groups(
    model: nn.Module, head: nn.Module | None, lr: float, lr_mult: float, weight_decay: float, norm_lr_mult: float = 1.0
) -> list[dict]:
    """Optimizer groups: the backbone's parameters in GROUPS consecutive parts with learning rates rising geometrically
    from lr / lr_mult, the head's at lr; no weight decay on biases and norm weights (decaying them only hurts). Norm
    layers' parameters learn at norm_lr_mult times their part's lr (airbench94 raises its batch-norm biases' 64x)."""
    stages = [(list(model.parameters()), lr)]  # one lr for all: training from scratch
    if lr_mult != 1:
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        body = [p for p in model.parameters() if id(p) not in head_ids]
        stages = [(body[i * len(body) // GROUPS : (i + 1) * len(body) // GROUPS], lr / lr_mult ** (1 - i / GROUPS)) for i in range(GROUPS)]
        stages.append(([p for p in model.parameters() if id(p) in head_ids], lr))
    norms = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    groups = []
    for params, group_lr in stages:
        # (kind, lr, decay); the last group is then the head's weights' (Trainer.lr)
        kinds = (("norm", group_lr * norm_lr_mult, 0.0), ("bias", group_lr, 0.0), ("weight", group_lr, weight_decay))
        for kind, kind_lr, decay in kinds:
            chosen = [p for p in params if ("norm" if id(p) in norms else "bias" if p.ndim <= 1 else "weight") == kind]
            if chosen:
                groups.append({"params": chosen, "lr": kind_lr, "weight_decay": decay})
    return groups


@torch.no_grad()
def features(trainer, head: nn.Linear, images: torch.Tensor, flip: bool) -> torch.Tensor | None:
    """The head's inputs for uint8 images (mirrored with flip), in eval mode, float32 on the device; None when a stop
    was requested meanwhile. Several processes each compute their shard and gather the rest."""
    group = trainer.group
    sharded = group.active and len(images) >= group.world
    captured = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    trainer.model.eval()
    try:
        for chunk in (images[distributed.shard(len(images), group)] if sharded else images).split(trainer.cfg.batch_size):
            x = prepare(chunk.to(trainer.device, non_blocking=True), trainer.mean, trainer.std)
            x = x.flip(3) if flip else x
            if trainer.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(trainer.device, trainer.amp):
                trainer.model(x)
            if trainer.stop_requested and not group.active:  # several processes stop together, in the epochs
                return None
    finally:
        hook.remove()
    found = torch.cat(captured).flatten(1)
    return distributed.gather_rows(found, len(images), group) if sharded else found


def train_head(trainer) -> dict | None:
    """The frozen stage: cfg.freeze_epochs epochs of the head alone on cached features, one-cycle at HEAD_LR x lr.
    Returns what it did (for the log and summary.json), or None when a stop was requested."""
    cfg, data = trainer.cfg, trainer.data
    head = classifier(trainer.model, data.num_classes)
    if head is None:
        return {"skipped": f"model '{cfg.model}' has no Linear head with {data.num_classes} outputs to train alone"}
    start = time.perf_counter()
    views = [features(trainer, head, trainer.train_images, flip) for flip in ((False, True) if cfg.flip else (False,))]
    val = [features(trainer, head, data.val.images, flip) for flip in ((False, True) if cfg.tta else (False,))]
    if any(v is None for v in views + val):
        return None
    extract_seconds = time.perf_counter() - start
    labels = trainer.train_labels.to(trainer.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=HEAD_LR * cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(labels) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=HEAD_LR * cfg.lr, total_steps=max(2, cfg.freeze_epochs * steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    with torch.enable_grad():
        for _ in range(cfg.freeze_epochs):
            # Each image is seen plain or mirrored at random, as flip augmentation would show it.
            which = torch.randint(len(views), (len(labels),), generator=generator).to(trainer.device)
            for idx in torch.randperm(len(labels), generator=generator).to(trainer.device).split(cfg.batch_size):
                x = torch.where((which[idx] == 1)[:, None], views[-1][idx], views[0][idx])
                loss = trainer.task.loss(head(x), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    with torch.no_grad():
        logits = sum(head(v) for v in val) / len(val)
        val_accuracy = trainer.task.evaluate(logits, data.val.labels.to(logits.device), data.num_classes).accuracy
    return {
        "epochs": cfg.freeze_epochs,
        "feature_seconds": round(extract_seconds, 3),
        "head_seconds": round(time.perf_counter() - start, 3),
        "val_acc": val_accuracy,
    }


def describe(stage: dict) -> str:
    if "skipped" in stage:
        return f"frozen stage skipped: {stage['skipped']}"
    return (
        f"frozen backbone: head trained {stage['epochs']} epochs on cached features "
        f"(features {stage['feature_seconds']:.1f}s, head {stage['head_seconds']:.2f}s), val acc {stage['val_acc']:.2%}"
    )
