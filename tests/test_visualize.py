"""`python -m vla_dino.visualize`: PCA and CLS-attention maps checked against their formulas, and the
PNG grid written by the CLI for tiny encoders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vla_dino.data import examples
from vla_dino.encoder import DinoEncoder
from vla_dino.visualize import cls_attention_map, main, pca_feature_map


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 56, 56, generator=generator)


@pytest.mark.parametrize("size", ["tiny", "tiny_reg"])
def test_cls_attention_is_the_last_block_softmax_over_patches(size: str, pixels: torch.Tensor) -> None:
    encoder = DinoEncoder.from_size(size).eval()
    result = cls_attention_map(encoder, pixels)
    assert result.shape == (3, 4, 4)
    assert encoder.model.config._attn_implementation == "sdpa"  # restored
    # reference: the last block's input, its norm1, q/k projections, softmax(q_cls kᵀ / √d), head mean
    with torch.no_grad():
        hidden = encoder.model.embeddings(pixels)
        for block in encoder.blocks[:-1]:
            hidden = block(hidden, None)
        last = encoder.blocks[-1]
        normed = last.norm1(hidden)
        heads = encoder.config.num_attention_heads
        head_dim = encoder.hidden_size // heads
        q = last.attention.q_proj(normed).view(3, -1, heads, head_dim).transpose(1, 2)
        k = last.attention.k_proj(normed).view(3, -1, heads, head_dim).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    prefix = 1 + encoder.num_register_tokens
    expected = weights[:, :, 0, prefix:].mean(dim=1).reshape(3, 4, 4)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


def test_pca_map_matches_numpy_principal_components(pixels: torch.Tensor) -> None:
    encoder = DinoEncoder.from_size("small-test").eval()
    result = pca_feature_map(encoder, pixels)
    assert result.shape == (3, 3, 4, 4) and result.min() >= 0 and result.max() <= 1
    with torch.no_grad():
        features = encoder(pixels).patch_tokens.reshape(-1, encoder.hidden_size).double().numpy()
    centred = features - features.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:3]]
    projected = centred @ top
    scaled = (projected - projected.min(0)) / (projected.max(0) - projected.min(0))
    ours = result.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    for component in range(3):  # principal directions are defined up to sign
        np.testing.assert_allclose(min(np.abs(ours[:, component] - scaled[:, component]).max(),
                                       np.abs(ours[:, component] - (1 - scaled[:, component])).max()), 0, atol=1e-5)


def test_pca_foreground_threshold_blacks_out_background(pixels: torch.Tensor) -> None:
    encoder = DinoEncoder.from_size("small-test").eval()
    result = pca_feature_map(encoder, pixels, foreground_threshold=0.5)
    with torch.no_grad():
        features = encoder(pixels).patch_tokens.reshape(-1, encoder.hidden_size).double()
    centred = features - features.mean(0)
    first = centred @ torch.linalg.svd(centred, full_matrices=False)[2][0]
    first = (first - first.min()) / (first.max() - first.min())
    background = (result.permute(0, 2, 3, 1).reshape(-1, 3) == 0).all(dim=1)
    assert torch.equal(background, first <= 0.5) and 0 < int(background.sum()) < len(background)


def test_cli_writes_a_grid_of_the_expected_size(tmp_path: Path) -> None:
    examples.write_image_folder(tmp_path / "logs" / "ep0" / "wrist", 6)
    examples.write_video(tmp_path / "logs" / "ep1.mp4", 8)
    folder = DinoEncoder.from_size("tiny_reg").save_pretrained(tmp_path / "after")
    out = main(["--frames", str(tmp_path / "logs"), "--encoder", "tiny", "--encoder", str(folder),
                "--num-frames", "3", "--size", "56", "--cell-px", "64", "--out", str(tmp_path / "grid.png")])
    image = Image.open(out)
    assert image.size == ((1 + 2 * 2) * 64, 3 * 64) and image.mode == "RGBA"
    pixels = np.asarray(image.convert("RGB"))
    # the input column shows the frames: the first chosen frame is frame 0 of the wrist episode
    corner = pixels[40:60, 30:34].reshape(-1, 3).mean(axis=0)
    assert abs(corner[0] - 0) < 3 and corner[2] > 50  # red 16·0, blue ramp


def test_cli_help_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--encoder SPEC" in text and "--foreground-threshold" in text and "repeatable" in text
    examples.write_image_folder(tmp_path / "cam_front", 1)
    with pytest.raises(ValueError, match="--size 50 is not a multiple of tiny's patch size 14"):
        main(["--frames", str(tmp_path / "cam_front"), "--encoder", "tiny", "--size", "50", "--out", str(tmp_path / "x.png")])
