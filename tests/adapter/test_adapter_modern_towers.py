"""DINOv3 ViT and SigLIP 2 (NaFlex) towers, chosen by model_type, against hand-run transformers models.

Tiny random-init models saved to folders (hidden 32 / 48, 3 blocks, patch 16 at 48 px = 3×3 grid),
loaded through the same sources a user passes (`dino=<folder>`, `siglip=<folder>`).
"""

import json

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from vla_dino.adapter import (
    DinoTower,
    Dinov3Tower,
    FusedBackbone,
    Siglip2Tower,
    SiglipTower,
    VisionTokenizer,
    VisionTokenizerConfig,
    load_dino_tower,
    load_siglip_tower,
    tower_from_architecture,
)
from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder

SIZE, PATCH, GRID, REGISTERS = 48, 16, 3, 4


def dinov3(path=None, **overrides) -> DINOv3ViTModel:
    config = DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=PATCH,
        image_size=SIZE, num_register_tokens=REGISTERS, layerscale_value=0.5, **overrides,
    )
    model = DINOv3ViTModel(config).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


def siglip2(path=None) -> Siglip2VisionModel:
    config = Siglip2VisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, patch_size=PATCH,
        num_patches=16,  # a 4×4 learned grid, resized to each image's 3×3 as NaFlex does
    )
    model = Siglip2VisionModel(config).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


@pytest.fixture
def folders(tmp_path):
    return dinov3(tmp_path / "dinov3"), siglip2(tmp_path / "siglip2"), tmp_path


def reference(dino: DINOv3ViTModel, sig: Siglip2VisionModel, pixels01: torch.Tensor, hidden_index: int) -> torch.Tensor:
    """By hand: each tower's normalisation, hidden_states[index] (0 = embeddings), prefix dropped,
    SigLIP 2 fed patches from transformers' own Siglip2 image-processor helper."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    dino_states = dino((pixels01 - mean) / std, output_hidden_states=True).hidden_states
    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in (pixels01 - 0.5) / 0.5])
    batch = pixels01.shape[0]
    sig_states = sig(
        pixel_values=patches, pixel_attention_mask=torch.ones(batch, GRID * GRID, dtype=torch.long),
        spatial_shapes=torch.tensor([[GRID, GRID]] * batch), output_hidden_states=True,
    ).hidden_states
    return torch.cat([dino_states[hidden_index][:, 1 + REGISTERS :], sig_states[hidden_index]], dim=-1)


@torch.no_grad()
@pytest.mark.parametrize("layer", [-2, 0, -1])
def test_dinov3_and_siglip2_towers_match_hand_run_models(folders, layer):
    dino, sig, root = folders
    backbone = FusedBackbone.from_sources(str(root / "dinov3"), str(root / "siglip2"), image_size=SIZE, layer=layer)
    assert [type(t) for t in backbone.towers] == [Dinov3Tower, Siglip2Tower]
    assert backbone.grid_size == (GRID, GRID) and backbone.hidden_size == 32 + 48
    pixels = torch.rand(2, 3, SIZE, SIZE)
    features = backbone(pixels)
    assert features.shape == (2, GRID * GRID, 80)
    hidden_index = layer if layer < 0 else layer + 1
    torch.testing.assert_close(features, reference(dino, sig, pixels, hidden_index), rtol=1e-5, atol=1e-5)
    if layer == -2:  # the layer choice is discriminative
        assert not torch.allclose(features, reference(dino, sig, pixels, -1), atol=1e-3)


@torch.no_grad()
def test_final_norm_on_the_last_layer_is_the_released_last_hidden_state(folders):
    dino, sig, root = folders
    backbone = FusedBackbone.from_sources(str(root / "dinov3"), str(root / "siglip2"), image_size=SIZE, layer=-1,
                                          final_norm=True)
    pixels = torch.rand(1, 3, SIZE, SIZE)
    dino_in, sig_in = backbone.preprocess(pixels)
    patches, shapes = backbone.siglip.patchify(sig_in)
    expected = torch.cat([
        dino(dino_in).last_hidden_state[:, 1 + REGISTERS :],
        sig(pixel_values=patches, pixel_attention_mask=torch.ones(1, GRID * GRID, dtype=torch.long),
            spatial_shapes=shapes).last_hidden_state,
    ], -1)
    torch.testing.assert_close(backbone(pixels), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_dinov3_uses_exact_rope_when_fine_tuned(folders):
    """transformers jitters RoPE coordinates in train mode (pos_embed_rescale=2 by default); a
    trained tower keeps the exact coordinates, so train-mode features equal eval-mode features."""
    _, _, root = folders
    backbone = FusedBackbone.from_sources(str(root / "dinov3"), None, image_size=SIZE, train_mode="full")
    pixels = torch.rand(2, 3, SIZE, SIZE)
    backbone.eval()
    frozen_like = backbone(pixels)
    backbone.train()
    assert backbone.dino.model.training and not backbone.dino.model.rope_embeddings.training
    torch.testing.assert_close(backbone(pixels), frozen_like, rtol=0, atol=0)
    raw = dinov3(pos_embed_rescale=2.0).train()  # what the plain model does in train mode
    raw.rope_embeddings.train()
    a, b = raw.rope_embeddings(pixels)[0], raw.eval().rope_embeddings(pixels)[0]
    assert not torch.allclose(a, b)


def test_last_n_trains_only_the_last_blocks_of_each_modern_tower(folders):
    _, _, root = folders
    backbone = FusedBackbone.from_sources(str(root / "dinov3"), str(root / "siglip2"), image_size=SIZE, layer=-2,
                                          train_mode="last_n", trainable_blocks=1)
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n or ".layers.1." in n for n in trainable)
    assert any(n.startswith("towers.0.") for n in trainable) and any(n.startswith("towers.1.") for n in trainable)
    loss = backbone(torch.rand(1, 3, SIZE, SIZE)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_dinov3_normalisation_comes_from_the_folders_preprocessor_config(tmp_path):
    dinov3(tmp_path / "sat")
    (tmp_path / "sat" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.430, 0.411, 0.296], "image_std": [0.213, 0.156, 0.143]})
    )
    tower = load_dino_tower(str(tmp_path / "sat"))
    assert tower.mean == (0.430, 0.411, 0.296) and tower.std == (0.213, 0.156, 0.143)
    dinov3(tmp_path / "plain")
    assert load_dino_tower(str(tmp_path / "plain")).mean == IMAGENET_MEAN


def test_model_type_picks_the_tower_and_wrong_types_are_named(folders, tmp_path):
    _, _, root = folders
    DinoEncoder.from_size("tiny_reg").save_pretrained(root / "dinov2")
    assert type(load_dino_tower(str(root / "dinov2"))) is DinoTower
    assert type(load_dino_tower("tiny")) is DinoTower
    assert type(load_siglip_tower("tiny")) is SiglipTower
    with pytest.raises(ValueError, match=r"siglip=.*model_type 'dinov3_vit' is not SigLIP; expected one of \['siglip'"):
        load_siglip_tower(str(root / "dinov3"))
    with pytest.raises(ValueError, match=r"dino=.*model_type 'siglip2_vision_model' is not a DINO tower"):
        load_dino_tower(str(root / "siglip2"))
    with pytest.raises(FileNotFoundError, match="SigLIP folder .* not found"):
        load_siglip_tower(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"grids differ.*DINOv3 patch 16 → \(7, 7\).*SigLIP patch 14 → \(8, 8\)"):
        FusedBackbone(load_dino_tower(str(root / "dinov3")), load_siglip_tower("tiny"), image_size=112)


@torch.no_grad()
def test_tokenizer_round_trip_and_architecture_only_json(folders, tmp_path):
    _, _, root = folders
    config = VisionTokenizerConfig(dino=str(root / "dinov3"), siglip=str(root / "siglip2"), image_size=SIZE,
                                   projector="mlp", out_dim=16, camera_names=["front", "wrist"], proprio_dim=3)
    tokenizer = VisionTokenizer(config).eval()
    images = {"front": torch.rand(2, 3, SIZE, SIZE), "wrist": torch.rand(2, 3, 40, 56)}
    proprio = torch.randn(2, 3)
    out = tokenizer(images, proprio)
    assert out.tokens.shape == (2, 2 * GRID * GRID + 1, 16)
    loaded = VisionTokenizer.from_pretrained(tokenizer.save_pretrained(tmp_path / "tok")).eval()
    assert [type(t) for t in loaded.backbone.towers] == [Dinov3Tower, Siglip2Tower]
    torch.testing.assert_close(loaded(images, proprio).tokens, out.tokens, rtol=0, atol=0)
    # a saved architecture (what policy checkpoints keep in towers/*.json) rebuilds the same classes
    for tower, name in zip(tokenizer.backbone.towers, ("dino", "siglip")):
        tower.config.to_json_file(tmp_path / f"{name}.json")
    assert type(tower_from_architecture(tmp_path / "dino.json", "dino")) is Dinov3Tower
    assert type(tower_from_architecture(tmp_path / "siglip.json", "siglip")) is Siglip2Tower
