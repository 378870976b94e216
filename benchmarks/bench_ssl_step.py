"""One full DINOv2 training step (teacher + student forward, DINO + iBOT + KoLeo, backward,
clip, AdamW, EMA) — ours (`vla_dino.ssl.SSLModel`) beside the peer a user would otherwise
pick: lightly's DINOLoss / IBOTPatchLoss / KoLeoLoss / DINOv2ProjectionHead /
update_momentum around the same transformers ViT, written like lightly's DINOv2 example.

Same encoder weights, same crops and masks, same batch, one process. Prints a table with
median step time and peak memory (CUDA only; CPU has no allocator peak to read) and the
ratio peer / ours. Needs `pip install lightly` (used with --no-deps is enough: only
lightly.loss / lightly.models are imported).

    python benchmarks/bench_ssl_step.py --device cuda --size vits14 --batch 64
    python benchmarks/bench_ssl_step.py --device cpu --size small-test --batch 16 --global-size 56 --local-size 28 --prototypes 4096
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, MultiCropBatch, SSLConfig, SSLModel


def make_config(args: argparse.Namespace, centering: str) -> SSLConfig:
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local = args.global_size, args.local_size, args.num_local
    config.heads.num_prototypes = args.prototypes
    config.loss.centering = centering
    config.optim.batch_size = args.batch
    config.optim.drop_path = 0.0  # same compute on both sides (lightly's example sets it on timm)
    return config


class OursStep:
    name = "vla_dino.ssl"

    def __init__(self, encoder: DinoEncoder, config: SSLConfig, steps: int) -> None:
        self.model = SSLModel(config, encoder, total_steps=steps).to(next(encoder.parameters()).device).train()
        self.optimizer = torch.optim.AdamW(self.model.param_groups(), betas=config.optim.betas)

    def __call__(self, batch: MultiCropBatch, step: int) -> float:
        self.model.apply_schedules(self.optimizer, step)
        out = self.model(batch, step)
        out.loss.backward()
        self.model.clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_teacher(step)
        return out.loss.item()


class LightlyStep:
    """lightly's examples/pytorch/dinov2.py step with a transformers Dinov2Model backbone."""

    name = "lightly 1.6 losses"

    def __init__(self, encoder: DinoEncoder, config: SSLConfig, steps: int) -> None:
        from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
        from lightly.models.modules import DINOv2ProjectionHead

        device = next(encoder.parameters()).device
        heads = config.heads
        self.student_backbone = encoder.model
        self.teacher_backbone = copy.deepcopy(encoder.model).requires_grad_(False).eval()
        def head() -> torch.nn.Module:
            return DINOv2ProjectionHead(encoder.hidden_size, heads.hidden_dim, heads.bottleneck_dim, heads.num_prototypes).to(device)

        self.student_head = head()
        self.teacher_head = head().requires_grad_(False).eval()  # old-style weight_norm: no deepcopy
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.dino = DINOLoss(output_dim=heads.num_prototypes).to(device)
        self.ibot = IBOTPatchLoss(output_dim=heads.num_prototypes).to(device)
        self.koleo = KoLeoLoss().to(device)
        params = list(self.student_backbone.parameters()) + list(self.student_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04)
        self.params = params
        self.grid = config.crops.global_size // encoder.patch_size

    def __call__(self, batch: MultiCropBatch, step: int) -> float:
        from lightly.models.utils import update_momentum

        views = batch.global_crops.shape[0] // batch.batch_size + batch.num_local
        mask = batch.masks
        with torch.no_grad():
            teacher = self.teacher_backbone(batch.global_crops).last_hidden_state
            teacher_cls_out = self.teacher_head(teacher[:, 0])
            teacher_masked_out = self.teacher_head(teacher[:, 1:][mask])
        student = self.student_backbone(batch.global_crops, bool_masked_pos=mask).last_hidden_state
        student_global_cls_out = self.student_head(student[:, 0])
        student_masked_out = self.student_head(student[:, 1:][mask])
        student_local = self.student_backbone(batch.local_crops).last_hidden_state
        student_local_cls_out = self.student_head(student_local[:, 0])
        student_cls_out = torch.cat([student_global_cls_out, student_local_cls_out])
        dino = self.dino(teacher_out=list(teacher_cls_out.chunk(2)), student_out=list(student_cls_out.chunk(views)), teacher_temp=0.04)
        ibot = self.ibot(teacher_out=teacher_masked_out, student_out=student_masked_out,
                         mask=mask.view(-1, self.grid, self.grid), teacher_temp=0.04)
        koleo = 0.1 * sum(self.koleo(t) for t in student[:, 0].chunk(2))
        loss = dino + ibot + koleo
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 3.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_momentum(self.student_backbone, self.teacher_backbone, m=0.992)
        update_momentum(self.student_head, self.teacher_head, m=0.992)
        return loss.item()


def measure(step_fn, batch: MultiCropBatch, device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    for i in range(warmup):
        step_fn(batch, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(iters):
        start = time.perf_counter()
        step_fn(batch, warmup + i)  # .item() inside synchronises
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="vits14", help="DinoEncoder size name (vits14, vitb14, small-test, …)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (each gives 2 global + L local crops)")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--num-local", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around both steps (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    base = DinoEncoder.from_size(args.size)
    frames = torch.randint(0, 256, (args.batch, 3, args.frame_size, args.frame_size), dtype=torch.uint8, device=device)
    augment = MultiCropAugmentation.from_config(make_config(args, "softmax"), base.patch_size)
    batch = augment(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    augment(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    augment_s = time.perf_counter() - start

    rows = []
    runs = [("lightly (softmax centering)", LightlyStep, "softmax"),
            ("ours (softmax centering)", OursStep, "softmax"),
            ("ours (Sinkhorn-Knopp)", OursStep, "sinkhorn")]
    for label, cls, centering in runs:
        encoder = copy.deepcopy(base).to(device)
        step_fn = cls(encoder, make_config(args, centering), steps=1000)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
        with autocast:
            seconds, peak = measure(step_fn, batch, device, args.warmup, args.iters)
        rows.append((label, seconds, peak))
        del step_fn, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"device {device}, encoder {args.size}, batch {args.batch} (2×{args.global_size}² + {args.num_local}×{args.local_size}²), "
          f"K={args.prototypes}, bf16={args.bf16}, median of {args.iters}")
    print(f"multi-crop augmentation of the batch on {device}: {augment_s * 1000:.1f} ms")
    peer_time, peer_mem = rows[0][1], rows[0][2]
    print(f"{'implementation':32s} {'step ms':>10s} {'peak MiB':>10s} {'time ratio peer/ours':>22s} {'mem ratio peer/ours':>20s}")
    for label, seconds, peak in rows:
        mem = f"{peak:10.0f}" if peak is not None else f"{'n/a':>10s}"
        ratio_t = peer_time / seconds
        ratio_m = f"{peer_mem / peak:20.2f}" if peak is not None else f"{'n/a':>20s}"
        print(f"{label:32s} {seconds * 1000:10.1f} {mem} {ratio_t:22.2f} {ratio_m}")


if __name__ == "__main__":
    main()
