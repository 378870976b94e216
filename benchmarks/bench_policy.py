"""Training-step time and `select_action` latency of our policies beside LeRobot's ACT (ResNet-18).

All policies see the same batch (one camera of --image-size², state 2, action 2, chunk 16) on the
same device. LeRobot's ACT uses ResNet-18 with `pretrained_backbone_weights=None` (same speed as
ImageNet weights, no download). Our towers are random-init with the released architecture named
by --dino (speed does not depend on the weights).

Rows: LeRobot `act` (reference) · `act_vla_dino` (same ACT, ResNet swapped for our towers, towers
trained as ACT trains its ResNet) · `vla_dino` with the ACT-style decoder head (towers frozen and
fully trained) and with the MLP head (frozen). Ratios are time / reference time (lower is faster).

    python benchmarks/bench_policy.py                      # small CPU run (< 2 min)
    python benchmarks/bench_policy.py --device cuda --image-size 224 --batch 32 --dino vitl14_reg
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.pretrained import PreTrainedPolicy

from lerobot_policy_vla_dino import ACTVlaDinoConfig, TowerBackboneConfig, VlaDinoConfig
from lerobot_policy_vla_dino.modeling_act_vla_dino import ACTVlaDinoPolicy
from lerobot_policy_vla_dino.modeling_vla_dino import VlaDinoPolicy
from vla_dino.adapter import VisionTokenizerConfig

CHUNK = 16


def features(image_size: int) -> tuple[dict, dict]:
    inputs = {
        "observation.image": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)),
        "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
    }
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (2,))}


def build_policies(args: argparse.Namespace) -> dict[str, Callable[[], PreTrainedPolicy]]:
    inputs, outputs = features(args.image_size)
    common = dict(device=args.device, input_features=inputs, output_features=outputs, chunk_size=CHUNK, n_action_steps=CHUNK)
    tower_size = args.image_size // 14 * 14  # towers need a multiple of the patch size

    def vision(train_mode: str) -> VisionTokenizerConfig:
        return VisionTokenizerConfig(dino=args.dino, image_size=tower_size, projector="mlp", out_dim=512, train_mode=train_mode)

    backbone = TowerBackboneConfig(dino=args.dino, image_size=tower_size, train_mode="full")
    return {
        "act (LeRobot, ResNet-18)": lambda: ACTPolicy(ACTConfig(pretrained_backbone_weights=None, **common)),
        "act_vla_dino (towers full)": lambda: ACTVlaDinoPolicy(ACTVlaDinoConfig(backbone=backbone, **common)),
        "vla_dino act_decoder (frozen)": lambda: VlaDinoPolicy(VlaDinoConfig(vision=vision("frozen"), **common)),
        "vla_dino act_decoder (full)": lambda: VlaDinoPolicy(VlaDinoConfig(vision=vision("full"), **common)),
        "vla_dino mlp (frozen)": lambda: VlaDinoPolicy(VlaDinoConfig(vision=vision("frozen"), head="mlp", **common)),
    }


def make_batch(batch: int, image_size: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "observation.image": torch.rand(batch, 3, image_size, image_size, generator=generator).to(device),
        "observation.state": torch.randn(batch, 2, generator=generator).to(device),
        "action": torch.randn(batch, CHUNK, 2, generator=generator).to(device),
        "action_is_pad": torch.zeros(batch, CHUNK, dtype=torch.bool, device=device),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], None], steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(policy: PreTrainedPolicy, args: argparse.Namespace) -> tuple[float, float, int]:
    policy.to(args.device)
    batch = make_batch(args.batch, args.image_size, args.device)
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-4)

    def train_step() -> None:
        policy.train()
        loss, _ = policy.forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    observation = {key: value[:1] for key, value in batch.items() if key.startswith("observation.")}

    def act() -> None:
        policy.reset()  # empty queue: every call runs the model (the latency a new chunk costs)
        policy.select_action(observation)

    train_s = median_time(train_step, args.steps, args.warmup, args.device)
    act_s = median_time(act, args.steps, args.warmup, args.device)
    trainable = sum(p.numel() for group in policy.get_optim_params() for p in group["params"])
    return train_s, act_s, trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dino", default="vits14_reg", help="tower size name (random init) or checkpoint source")
    parser.add_argument("--steps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))

    print(f"device={args.device} image={args.image_size}² batch={args.batch} chunk={CHUNK} dino={args.dino} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    header = f"{'policy':32s} {'trainable':>10s} {'train step ms':>14s} {'ratio':>6s} {'select_action ms':>17s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    reference: tuple[float, float] | None = None
    for name, build in build_policies(args).items():
        torch.manual_seed(0)
        train_s, act_s, trainable = measure(build(), args)
        reference = reference or (train_s, act_s)
        print(f"{name:32s} {trainable / 1e6:9.1f}M {train_s * 1e3:14.1f} {train_s / reference[0]:6.2f} "
              f"{act_s * 1e3:17.1f} {act_s / reference[1]:6.2f}")


if __name__ == "__main__":
    main()
