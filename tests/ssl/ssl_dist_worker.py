"""Worker for test_ssl_distributed (a plain module so spawned processes can import it)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist


def make_problem() -> dict[str, torch.Tensor]:
    """A fixed global batch: B = 4 images, L = 2 local crops, K = 16, 3×3 patches."""
    g = torch.Generator().manual_seed(123)
    batch, num_local, k, patches = 4, 2, 16, 9
    masks = torch.zeros(2 * batch, patches, dtype=torch.bool)
    masks[0, [0, 1, 2]] = True  # rank 0 images get 3 + 1 masked patches, rank 1 images 2 + 4
    masks[5, [4]] = True
    masks[2, [3, 8]] = True
    masks[7, [0, 1, 5, 6]] = True
    return dict(
        student_global=torch.randn(2 * batch, k, generator=g),
        student_local=torch.randn(num_local * batch, k, generator=g),
        teacher_global=torch.randn(2 * batch, k, generator=g),
        masks=masks,
        teacher_patches=torch.randn(int(masks.sum()), k, generator=g),
        student_patches=torch.randn(int(masks.sum()), 6, generator=g),  # bottleneck features (d = 6)
        prototypes=torch.randn(k, 6, generator=g),
    )


def rank_rows(num_rows: int, batch: int, rank: int, world: int) -> torch.Tensor:
    """Rows of a crop-major tensor (crops × batch) that belong to `rank`'s images."""
    per = batch // world
    crops = num_rows // batch
    return torch.cat([torch.arange(c * batch + rank * per, c * batch + (rank + 1) * per) for c in range(crops)])


def shard(problem: dict[str, torch.Tensor], rank: int, world: int, batch: int = 4) -> dict[str, torch.Tensor]:
    out = {}
    for key in ("student_global", "student_local", "teacher_global", "masks"):
        out[key] = problem[key][rank_rows(problem[key].shape[0], batch, rank, world)]
    # Masked-patch rows in the global nonzero() order → this rank's rows, in its own order.
    owner = torch.zeros_like(problem["masks"], dtype=torch.long)
    owner[rank_rows(problem["masks"].shape[0], batch, rank, world)] = 1
    index = torch.arange(problem["masks"].shape[0] * problem["masks"].shape[1]).view_as(owner)
    mine_order = index[rank_rows(problem["masks"].shape[0], batch, rank, world)][out["masks"]]
    global_order = index[problem["masks"]]
    position = {int(v): i for i, v in enumerate(global_order)}
    rows = torch.tensor([position[int(v)] for v in mine_order], dtype=torch.long)
    out["patch_rows"] = rows
    out["teacher_patches"] = problem["teacher_patches"][rows]
    out["student_patches"] = problem["student_patches"][rows]
    out["prototypes"] = problem["prototypes"]
    return out


def objective(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from vla_dino.ssl.centering import SoftmaxCenter, sinkhorn_knopp, sinkhorn_knopp_joint
    from vla_dino.ssl.losses import dino_loss, ibot_loss

    targets = sinkhorn_knopp(part["teacher_global"], 0.07)
    patch_targets = sinkhorn_knopp(part["teacher_patches"], 0.07)
    joint = sinkhorn_knopp_joint([part["teacher_global"], part["teacher_patches"]], 0.07)  # shared all-reduces
    local, glob = dino_loss(part["student_global"], part["student_local"], targets, 0.1)
    ibot = ibot_loss(part["student_patches"], part["prototypes"], patch_targets, part["masks"], 0.1)
    center = SoftmaxCenter(targets.shape[1])
    softmax_targets = center(part["teacher_global"], 0.07)
    softmax_targets = center(part["teacher_global"] * 2, 0.07)
    return dict(
        targets=targets, patch_targets=patch_targets, joint_targets=joint[0], joint_patch_targets=joint[1],
        dino=local + glob, ibot=ibot,
        softmax_targets=softmax_targets, center=center.center.clone(),
    )


def model_gradients(rank: int, world: int, distributed: bool) -> dict[str, torch.Tensor]:
    """One SSLModel step (KoLeo off: it is a per-rank batch statistic by design) → grads."""
    from vla_dino.encoder import DinoEncoder
    from vla_dino.ssl import MultiCropBatch, SSLConfig, SSLModel

    torch.manual_seed(0)
    config = SSLConfig()
    config.heads.hidden_dim, config.heads.bottleneck_dim, config.heads.num_prototypes = 32, 16, 32
    config.loss.koleo_weight = 0.0
    config.optim.drop_path = 0.0
    config.optim.batch_size = 4
    model = SSLModel(config, DinoEncoder.from_size("tiny", image_size=14, patch_size=7), total_steps=10)
    g = torch.Generator().manual_seed(7)
    batch = MultiCropBatch(torch.randn(8, 3, 14, 14, generator=g), torch.randn(8, 3, 7, 7, generator=g), make_problem()["masks"][:, :4])
    if distributed:
        g_rows, l_rows = rank_rows(8, 4, rank, world), rank_rows(8, 4, rank, world)
        batch = MultiCropBatch(batch.global_crops[g_rows], batch.local_crops[l_rows], batch.masks[g_rows])
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = model
    out = wrapped(batch, 3)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.student.named_parameters() if p.grad is not None}
    grads["_loss"] = out.loss.detach()
    return grads


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        part = shard(make_problem(), rank, world)
        result = objective(part)
        result["patch_rows"] = part["patch_rows"]
        result["grads"] = model_gradients(rank, world, distributed=True)
        torch.save(result, Path(outdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
