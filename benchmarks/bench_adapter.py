"""FusedBackbone forward vs running the two transformers towers by hand on the same input.

The hand-run reference is what a user would write without the adapter: normalise per tower,
`Dinov2WithRegistersModel(..., output_hidden_states=True).hidden_states[layer][:, prefix:]`,
`SiglipVisionModel(..., output_hidden_states=True).hidden_states[layer]`, concatenate channels.
Both sides use the same tower weights; the script checks that the outputs agree.

Two rows:
- layer -1: the same blocks run on both sides, so the ratio is the adapter's overhead (target ≤ 1.03);
- layer -2 (OpenVLA): transformers can only stop after the last block, the adapter stops one block
  earlier, so the ratio shows that saving.

    python benchmarks/bench_adapter.py                                   # small random-init towers, CPU, < 1 min
    python benchmarks/bench_adapter.py --openvla --device cuda --batch 32 --dtype bfloat16   # ViT-L/14 reg + so400m, 224²
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils import benchmark

from vla_dino.adapter import FusedBackbone, SiglipTower
from vla_dino.adapter.towers import DinoTower
from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dino", default="small-test_reg", help="DinoEncoder size name, hub id, folder or official file")
    parser.add_argument("--siglip", default="small-test", help="SigLIP size name (so400m, small-test, tiny), hub id or folder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--openvla", action="store_true", help="OpenVLA's towers: vitl14_reg + so400m (random init) at 224²")
    parser.add_argument("--rounds", type=int, default=10, help="alternating timing rounds per side")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing round")
    args = parser.parse_args()
    if args.openvla:
        args.dino, args.siglip, args.image_size = "vitl14_reg", "so400m", 224
    return args


def hand_run(backbone: FusedBackbone, layer: int, dtype: str):
    """The reference: transformers' towers called directly on hand-normalised pixels."""
    dino = backbone.dino.encoder.model
    siglip = backbone.siglip.model
    prefix = 1 + backbone.dino.encoder.num_register_tokens
    interpolate = backbone.grid_size != backbone.siglip.native_grid

    def run(pixels: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        with autocast:
            return towers(pixels)

    def towers(pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
        dino_states = dino((pixels - mean) / std, output_hidden_states=True).hidden_states
        siglip_states = siglip((pixels - 0.5) / 0.5, output_hidden_states=True, interpolate_pos_encoding=interpolate).hidden_states
        return torch.cat([dino_states[layer][:, prefix:], siglip_states[layer]], dim=-1).float()

    return run


def time_pair(adapter, reference, pixels, args) -> tuple[float, float, float]:
    """(adapter s, reference s, ratio). Rounds alternate the two sides (order flipped every round);
    each round times both with a blocked autorange. Times: the fastest round (other load on the
    machine only adds time); ratio: the median of the per-round ratios (paired, so drift cancels)."""
    times: dict[str, list[float]] = {"adapter": [], "reference": []}
    with torch.no_grad():
        adapter(pixels), reference(pixels)  # warm-up
        for round_index in range(args.rounds):
            sides = [("adapter", adapter), ("reference", reference)][:: 1 if round_index % 2 == 0 else -1]
            for name, fn in sides:
                timer = benchmark.Timer(stmt="fn(pixels)", globals={"fn": fn, "pixels": pixels})
                times[name].append(timer.blocked_autorange(min_run_time=args.min_run_time).median)
    ratios = [a / r for a, r in zip(times["adapter"], times["reference"])]
    return min(times["adapter"]), min(times["reference"]), statistics.median(ratios)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    dino, siglip = DinoTower.load(args.dino), SiglipTower.load(args.siglip)
    pixels = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    print(f"towers: dino={args.dino} siglip={args.siglip}  image {args.image_size}²  batch {args.batch}  "
          f"{args.dtype} on {device}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'layer':>6} {'tokens':>14} {'adapter ms':>11} {'hand-run ms':>12} {'ratio':>6} {'max |diff|':>10}")
    for layer in (-1, -2):
        backbone = FusedBackbone(dino, siglip, image_size=args.image_size, layer=layer, dtype=args.dtype).to(device).eval()
        reference = hand_run(backbone, layer, args.dtype)
        with torch.no_grad():
            expected, got = reference(pixels), backbone(pixels)
        diff = (got - expected).abs().max().item()
        ours, theirs, ratio = time_pair(backbone, reference, pixels, args)
        print(f"{layer:>6} {str(tuple(got.shape[1:])):>14} {ours * 1e3:>11.2f} {theirs * 1e3:>12.2f} {ratio:>6.3f} {diff:>10.2e}")


if __name__ == "__main__":
    main()
