"""The main job on embedded defaults: encode frames and show what the encoder sees.

    python -m vla_dino.demo [--encoder vits14] [--out outputs/demo]

Builds an encoder (a size name gives random init; a hub id, folder or official checkpoint
loads weights), encodes a few frames made on the fly (a tabletop scene with a gripper and
objects), prints the token shapes and writes a PCA-of-patch-features picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vla_dino import DinoEncoder


def tabletop_frames(count: int = 4, size: int = 224, seed: int = 0) -> np.ndarray:
    """Synthetic camera frames (N, H, W, 3) uint8: a table, a moving gripper and two blocks."""
    rng = np.random.default_rng(seed)
    frames = np.empty((count, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        frame = np.zeros((size, size, 3), np.float32)
        frame[:] = (0.55, 0.45, 0.35)  # table
        frame[: size // 4] = (0.75, 0.8, 0.85)  # wall
        for colour in ((0.85, 0.15, 0.1), (0.1, 0.3, 0.85)):
            cy, cx = rng.integers(size // 3, size - size // 6, 2)
            half = size // 14
            frame[cy - half : cy + half, cx - half : cx + half] = colour
        gy, gx = size // 3 + i * size // (3 * count), size // 5 + i * size // (2 * count)
        frame[(yy - gy) ** 2 + (xx - gx) ** 2 < (size // 16) ** 2] = (0.2, 0.2, 0.2)  # gripper
        frame += rng.normal(0, 0.02, frame.shape)
        frames[i] = (frame.clip(0, 1) * 255).astype(np.uint8)
    return frames


def pca_rgb(patch_tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """First three principal components of all frames' patch tokens → (N, h, w, 3) in [0, 1]."""
    n, _, dim = patch_tokens.shape
    flat = patch_tokens.reshape(-1, dim).float()
    flat = flat - flat.mean(0)
    _, _, v = torch.pca_lowrank(flat, q=3, center=False)
    comps = flat @ v[:, :3]
    comps = (comps - comps.min(0).values) / (comps.max(0).values - comps.min(0).values + 1e-8)
    return comps.reshape(n, *grid, 3).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="vits14", help="size name, hub id, folder or official checkpoint")
    parser.add_argument("--frames", type=int, default=4, help="number of frames to encode")
    parser.add_argument("--resolution", type=int, default=224, help="input side in pixels (multiple of 14)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_dino.encoder.sizes import size_names

    torch.manual_seed(0)
    build = DinoEncoder.from_size if args.encoder in size_names() else DinoEncoder.from_pretrained
    encoder = build(args.encoder).eval()
    encoder.preprocessor.size = args.resolution
    frames = tabletop_frames(args.frames, size=args.resolution)
    tokens = encoder.encode(frames)
    raw = encoder.encode(frames, layer=-2)

    print(f"encoder {args.encoder}: hidden {encoder.hidden_size}, {encoder.num_layers} blocks, "
          f"patch {encoder.patch_size}, {encoder.num_register_tokens} registers")
    print(f"frames            {tuple(frames.shape)} uint8")
    print(f"cls_token         {tuple(tokens.cls_token.shape)}")
    print(f"register_tokens   {tuple(tokens.register_tokens.shape)}")
    print(f"patch_tokens      {tuple(tokens.patch_tokens.shape)}  grid {tokens.grid_size}")
    print(f"block -2 patches  {tuple(raw.patch_tokens.shape)}  (raw, OpenVLA's layer)")

    args.out.mkdir(parents=True, exist_ok=True)
    pca = pca_rgb(tokens.patch_tokens, tokens.grid_size)
    fig, axes = plt.subplots(2, args.frames, figsize=(2.5 * args.frames, 5), squeeze=False)
    for i in range(args.frames):
        axes[0, i].imshow(frames[i])
        axes[1, i].imshow(pca[i], interpolation="nearest")
        axes[0, i].set_title(f"frame {i}")
        for ax in axes[:, i]:
            ax.axis("off")
    axes[1, 0].set_title("PCA of patch tokens", loc="left")
    fig.tight_layout()
    picture = args.out / "pca_patch_features.png"
    fig.savefig(picture, dpi=100)
    print(f"wrote {picture}")


if __name__ == "__main__":
    main()
