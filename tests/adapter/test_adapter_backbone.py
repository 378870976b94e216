"""FusedBackbone against hand-run transformers towers (tiny random-init DINOv2 reg + SigLIP)."""

import pytest
import torch
from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

from vla_dino.adapter import DinoTower, FusedBackbone, SiglipTower
from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder
from vla_dino.pretrain.export import export_encoder

TINY_SIGLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, patch_size=14, image_size=56)


def tiny_towers(layers: int = 3, **siglip_overrides) -> tuple[DinoEncoder, SiglipVisionModel]:
    dino = DinoEncoder.from_size("tiny_reg", num_hidden_layers=layers).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(**{**TINY_SIGLIP, "num_hidden_layers": layers, **siglip_overrides})).eval()
    return dino, siglip


def reference_features(dino: DinoEncoder, siglip: SiglipVisionModel, pixels01: torch.Tensor, layer: int, **kw) -> torch.Tensor:
    """What a user writes by hand: each tower's normalisation, hidden_states[layer], prefix dropped, concat."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    prefix = 1 + dino.num_register_tokens
    dino_states = dino.model((pixels01 - mean) / std, output_hidden_states=True).hidden_states
    siglip_states = siglip((pixels01 - 0.5) / 0.5, output_hidden_states=True, **kw).hidden_states
    # hidden_states[0] is the embedding output, so block i is hidden_states[i + 1]; -2 is the same either way
    return torch.cat([dino_states[layer][:, prefix:], siglip_states[layer]], dim=-1)


@torch.no_grad()
@pytest.mark.parametrize("layer", [-2, 1, -1])
def test_layer_choice_prefix_drop_and_normalisation_match_hand_run_towers(layer):
    dino, siglip = tiny_towers()
    backbone = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56, layer=layer)
    pixels = torch.rand(2, 3, 56, 56)
    hidden_index = layer if layer < 0 else layer + 1
    expected = reference_features(dino, siglip, pixels, hidden_index)
    features = backbone(pixels)
    assert features.shape == (2, 16, 32 + 48) == (2, backbone.num_patches, backbone.hidden_size)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    if layer == -2:  # discriminative: the neighbours, the prefix and a shared normalisation all differ
        assert not torch.allclose(features, reference_features(dino, siglip, pixels, -1), atol=1e-3)
        registers_kept = dino.model(backbone.preprocess(pixels)[0], output_hidden_states=True).hidden_states[-2][:, :16]
        assert not torch.allclose(features[..., :32], registers_kept, atol=1e-3)
        imagenet_for_both = siglip(backbone.preprocess(pixels)[0], output_hidden_states=True).hidden_states[-2]
        assert not torch.allclose(features[..., 32:], imagenet_for_both, atol=1e-3)


@torch.no_grad()
def test_final_norm_on_last_layer_gives_the_released_last_hidden_state():
    dino, siglip = tiny_towers()
    backbone = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56, layer=-1, final_norm=True)
    pixels = torch.rand(1, 3, 56, 56)
    inputs = backbone.preprocess(pixels)
    expected = torch.cat([dino.model(inputs[0]).last_hidden_state[:, 5:], siglip(inputs[1]).last_hidden_state], -1)
    torch.testing.assert_close(backbone(pixels), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_non_native_resolution_interpolates_siglip_positions_like_transformers():
    dino, siglip = tiny_towers()
    backbone = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=84)
    pixels = torch.rand(2, 3, 84, 84)
    expected = reference_features(dino, siglip, pixels, -2, interpolate_pos_encoding=True)
    torch.testing.assert_close(backbone(pixels), expected, rtol=1e-5, atol=1e-5)
    assert backbone.grid_size == (6, 6)


@torch.no_grad()
def test_uint8_and_resize_naive_inputs():
    dino, siglip = tiny_towers()
    backbone = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56)
    uint8 = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    torch.testing.assert_close(backbone(uint8), backbone(uint8.float() / 255))
    wide = torch.rand(2, 3, 70, 112)  # resize-naive: aspect ratio not kept, still a 4×4 grid
    assert backbone(wide).shape == (2, 16, 80)


@torch.no_grad()
def test_letterbox_pads_each_tower_with_its_own_mean():
    dino, siglip = tiny_towers()
    backbone = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56, resize_mode="letterbox")
    pixels = torch.rand(1, 3, 28, 56)  # fits as 56 wide × 28 high, padded 14 rows above and below
    dino_in, siglip_in = backbone.preprocess(pixels)
    for normalised in (dino_in, siglip_in):
        assert normalised[..., :14, :].abs().max() == 0 and normalised[..., 42:, :].abs().max() == 0
    # both towers see the same content rows (the pixels themselves, no resize), each in its own normalisation
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(dino_in[..., 14:42, :] * std + mean, pixels, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(siglip_in[..., 14:42, :] * 0.5 + 0.5, pixels, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_dino_only_path_and_towers_from_files(tmp_path):
    _, siglip = tiny_towers()
    # official files carry no head count; the loader infers head dim 64 (as released) → 1 head at width 32
    dino = DinoEncoder.from_size("tiny_reg", num_hidden_layers=3, num_attention_heads=1).eval()
    dino.save_pretrained(tmp_path / "dino")
    dino.save_official(tmp_path / "dino.pth")
    siglip.save_pretrained(tmp_path / "siglip")
    full = SiglipModel(SiglipConfig(vision_config=siglip.config.to_dict(),
                                    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)))
    full.vision_model.load_state_dict(siglip.state_dict())
    full.save_pretrained(tmp_path / "siglip_full")  # the hub's google/siglip-* layout (vision + text)
    pixels = torch.rand(2, 3, 56, 56)
    expected = reference_features(dino, siglip, pixels, -2)
    export_encoder(dino, tmp_path / "export", formats=["hf"])  # `python -m vla_dino.pretrain.export` output folder
    for dino_source in ("dino", "dino.pth", "export"):
        for siglip_source in ("siglip", "siglip_full"):
            backbone = FusedBackbone.from_sources(str(tmp_path / dino_source), str(tmp_path / siglip_source), image_size=56)
            torch.testing.assert_close(backbone(pixels), expected, rtol=1e-5, atol=1e-5)
    dino_only = FusedBackbone.from_sources(str(tmp_path / "dino"), None, image_size=56)
    torch.testing.assert_close(dino_only(pixels), expected[..., :32], rtol=1e-5, atol=1e-5)


def test_mismatched_grids_and_bad_sources_give_clear_errors(tmp_path):
    dino, _ = tiny_towers()
    _, siglip16 = tiny_towers(patch_size=16, image_size=64)
    with pytest.raises(ValueError, match=r"grids differ.*DINOv2 patch 14.*SigLIP patch 16"):
        FusedBackbone(DinoTower(dino), SiglipTower(siglip16), image_size=112)  # 8×8 vs 7×7
    with pytest.raises(ValueError, match="not a multiple of the SigLIP tower's patch size 16"):
        FusedBackbone(DinoTower(dino), SiglipTower(siglip16), image_size=56)
    with pytest.raises(IndexError, match="layer 5 out of range"):
        FusedBackbone(DinoTower(dino), None, image_size=56, layer=5)
    with pytest.raises(FileNotFoundError, match="SigLIP folder"):
        SiglipTower.load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="encoder folder not found"):
        DinoTower.load(str(tmp_path / "missing"))
    dino.save_pretrained(tmp_path / "dino")
    with pytest.raises(ValueError, match="is not SigLIP"):
        SiglipTower.load(str(tmp_path / "dino"))
    with pytest.raises(ValueError, match="trainable_blocks=4 but the DINOv2 tower runs only 2 blocks"):
        FusedBackbone(DinoTower(dino), None, image_size=56, train_mode="last_n", trainable_blocks=4)


def test_bfloat16_autocast_runs_towers_in_bf16_and_returns_float32():
    dino, siglip = tiny_towers()
    fp32 = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56)
    bf16 = FusedBackbone(DinoTower(dino), SiglipTower(siglip), image_size=56, dtype="bfloat16")
    pixels = torch.rand(2, 3, 56, 56)
    seen = []
    hook = siglip.encoder.layers[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = bf16(pixels)
    hook.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    torch.testing.assert_close(out, fp32(pixels), rtol=0.1, atol=0.15)
