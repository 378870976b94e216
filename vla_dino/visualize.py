"""`python -m vla_dino.visualize`: what an encoder sees in a few robot frames, as one PNG.

Rows are frames; columns are the input, then for each `--encoder` (e.g. before and after
pretraining) the PCA of its patch features and its last-layer CLS attention:

- PCA map: last-layer patch tokens (final LayerNorm) of all shown frames pooled, centred, and
  projected on their first 3 principal components; each component min-max scaled to [0, 1] → RGB.
  Shared across frames, so equal colours mean similar features. With `--foreground-threshold t`,
  patches whose first component (scaled to [0, 1]) is ≤ t are background (black) and the PCA is
  recomputed on the foreground only, as in the DINOv2 paper's figures.
- CLS attention: softmax(q_cls · kᵀ / √d) of the last block, averaged over heads, over patch
  tokens only (CLS and register columns left out), min-max scaled per frame.

Example:
    python -m vla_dino.visualize --frames ./robot_logs --encoder facebook/dinov2-small \\
        --encoder ./runs/pretrain/export/teacher --num-frames 4 --out compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure

from vla_dino.data import load_frame_tensor
from vla_dino.encoder import DinoEncoder, ImagePreprocessor, size_names


def _min_max(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    low, high = values.amin(dim=dim, keepdim=True), values.amax(dim=dim, keepdim=True)
    return (values - low) / (high - low).clamp_min(1e-12)


def _principal_components(features: torch.Tensor, count: int = 3) -> torch.Tensor:
    """(M, D) → projections (M, count) on the top principal directions of the centred features."""
    centred = features - features.mean(dim=0, keepdim=True)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:count].T


@torch.no_grad()
def pca_feature_map(encoder: DinoEncoder, pixels: torch.Tensor, foreground_threshold: float | None = None) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) → RGB PCA maps (B, 3, h, w) in [0, 1] (see module docstring)."""
    tokens = encoder(pixels)
    batch, (height, width) = pixels.shape[0], tokens.grid_size
    features = tokens.patch_tokens.reshape(-1, tokens.patch_tokens.shape[-1]).double()
    rgb = torch.zeros(features.shape[0], 3, dtype=features.dtype)
    foreground = torch.ones(features.shape[0], dtype=torch.bool)
    if foreground_threshold is not None:
        foreground = _min_max(_principal_components(features, 1))[:, 0] > foreground_threshold
    if foreground.sum() >= 3:
        rgb[foreground] = _min_max(_principal_components(features[foreground], 3))
    return rgb.float().reshape(batch, height, width, 3).permute(0, 3, 1, 2)


@torch.no_grad()
def cls_attention_map(encoder: DinoEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) → last-layer CLS attention over patches, head mean, (B, h, w).

    Uses transformers' eager attention with `output_attentions` (SDPA does not return weights); the
    model's attention implementation is restored afterwards. Rows are not rescaled: values are the
    softmax weights (they sum to 1 with the CLS and register columns, which are left out).
    """
    model = encoder.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        attentions = model(pixels, output_attentions=True).attentions[-1]  # (B, heads, T, T)
    finally:
        model.set_attn_implementation(previous)
    prefix = 1 + encoder.num_register_tokens
    patch = encoder.patch_size
    height, width = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    return attentions[:, :, 0, prefix:].mean(dim=1).reshape(pixels.shape[0], height, width)


def _upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, C, h, w) → (B, size, size, C) numpy, nearest (one block per patch)."""
    return F.interpolate(maps, size=(size, size), mode="nearest").permute(0, 2, 3, 1).numpy()


def render_grid(
    frames: torch.Tensor,
    encoders: Sequence[tuple[str, DinoEncoder]],
    out: str | Path,
    foreground_threshold: float | None = None,
    cell_px: int = 192,
    device: str = "cpu",
) -> Path:
    """Writes the PNG: (N rows) × (1 + 2·len(encoders) columns), each cell `cell_px` square."""
    size = frames.shape[-1]
    columns: list[tuple[str, np.ndarray]] = [("input", frames.permute(0, 2, 3, 1).numpy())]
    inferno = colormaps["inferno"]
    for name, encoder in encoders:
        if size % encoder.patch_size:
            raise ValueError(f"--size {size} is not a multiple of {name}'s patch size {encoder.patch_size}")
        encoder = encoder.to(device).eval()
        preprocess = ImagePreprocessor(size=size, resize_mode="resize", patch_size=encoder.patch_size)
        parameter = next(encoder.parameters())
        pixels = preprocess(frames).to(parameter.device, parameter.dtype)
        pca = pca_feature_map(encoder, pixels, foreground_threshold).float().cpu()
        attention = _min_max(cls_attention_map(encoder, pixels).float().cpu().flatten(1), dim=1).reshape(-1, 1, *pca.shape[-2:])
        columns.append((f"{name}\nPCA", _upsample(pca, size)))
        columns.append((f"{name}\nCLS attention", inferno(_upsample(attention, size)[..., 0])[..., :3]))
    rows, dpi = frames.shape[0], 100
    figure = Figure(figsize=(len(columns) * cell_px / dpi, rows * cell_px / dpi), dpi=dpi)
    grid = figure.add_gridspec(rows, len(columns), left=0, right=1, bottom=0, top=1, wspace=0.02, hspace=0.02)
    for column, (title, images) in enumerate(columns):
        for row in range(rows):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(images[row], interpolation="nearest")
            axes.set_axis_off()
            if row == 0:  # titles inside the cell keep the PNG exactly cells × cell_px
                axes.text(0.02, 0.98, title, transform=axes.transAxes, va="top", ha="left", fontsize=7,
                          bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vla_dino.visualize",
        description="PCA of patch features and last-layer CLS attention of one or more DINOv2 encoders on a few frames, as a PNG grid "
        "(rows: frames; columns: input, then PCA and attention per encoder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--encoder", action="append", required=True, metavar="SPEC",
                        help=f"repeatable; a size name for random init ({', '.join(size_names())}), a hub id "
                        "(facebook/dinov2-small), a transformers folder (e.g. a pretraining export) or an official .pth/.safetensors file")
    parser.add_argument("--frames", nargs="+", required=True, metavar="PATH",
                        help="image files, image folders, videos, LeRobot dataset folders or HDF5 files (as for pretraining)")
    parser.add_argument("--cameras", nargs="+", default=None, help="keep only these cameras")
    parser.add_argument("--num-frames", type=int, default=4, help="frames to show, spread evenly over everything found")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (a multiple of the patch size, 14)")
    parser.add_argument("--foreground-threshold", type=float, default=None,
                        help="if set, patches whose first PCA component (scaled to [0, 1]) is at or below it are shown black")
    parser.add_argument("--cell-px", type=int, default=192, help="side of one grid cell in the PNG")
    parser.add_argument("--device", default="cpu", help="torch device for the encoders")
    parser.add_argument("--out", default="visualize.png", help="output PNG path")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.num_frames < 1:
        raise SystemExit(f"--num-frames {args.num_frames}: expected at least 1")
    frames = load_frame_tensor(args.frames, args.size, args.num_frames, args.cameras)
    encoders = [(spec, DinoEncoder.from_source(spec)) for spec in args.encoder]
    out = render_grid(frames, encoders, args.out, args.foreground_threshold, args.cell_px, args.device)
    print(f"wrote {out} ({len(frames)} frames × {len(encoders)} encoder(s))")
    return out


if __name__ == "__main__":
    main()
