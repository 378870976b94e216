"""The three policy types over DINOv3 ViT + SigLIP 2 towers (tiny random-init folders): they build,
train a step, and their checkpoints reload after the tower folders are gone (the architectures in
`towers/*.json` carry the model_type that picks the tower class)."""

import shutil

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature
from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

from lerobot_policy_vla_dino import ACTVlaDinoConfig, DiffusionVlaDinoConfig, TowerBackboneConfig, VlaDinoConfig
from lerobot_policy_vla_dino.modeling_act_vla_dino import ACTVlaDinoPolicy
from lerobot_policy_vla_dino.modeling_diffusion_vla_dino import DiffusionVlaDinoPolicy
from lerobot_policy_vla_dino.modeling_vla_dino import VlaDinoPolicy
from vla_dino.adapter import Dinov3Tower, Siglip2Tower, VisionTokenizerConfig

B, CHUNK, IMAGE, SIZE = 2, 4, 40, 48
INPUTS = {
    "observation.image": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
    "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
}
OUTPUTS = {"action": PolicyFeature(FeatureType.ACTION, (2,))}


def save_towers(root) -> dict[str, str]:
    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   patch_size=16, image_size=SIZE, num_register_tokens=4)).save_pretrained(root / "dinov3")
    Siglip2VisionModel(Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, patch_size=16, num_patches=9)).save_pretrained(root / "siglip2")
    return dict(dino=str(root / "dinov3"), siglip=str(root / "siglip2"))


def make(kind: str, sources: dict[str, str]):
    common = dict(device="cpu", input_features=dict(INPUTS), output_features=dict(OUTPUTS))
    if kind == "vla_dino":
        vision = VisionTokenizerConfig(**sources, image_size=SIZE, projector="mlp", out_dim=16, train_mode="full")
        config = VlaDinoConfig(**common, chunk_size=CHUNK, n_action_steps=2, vision=vision, head="mlp",
                               mlp_token_dim=4, mlp_hidden_dim=32)
        return VlaDinoPolicy(config)
    backbone = TowerBackboneConfig(**sources, image_size=SIZE)
    if kind == "act_vla_dino":
        config = ACTVlaDinoConfig(**common, chunk_size=CHUNK, n_action_steps=2, backbone=backbone, dim_model=32,
                                  n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=4)
        return ACTVlaDinoPolicy(config)
    config = DiffusionVlaDinoConfig(**common, n_obs_steps=2, horizon=8, n_action_steps=2, backbone=backbone,
                                    down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=10,
                                    spatial_softmax_num_keypoints=4)
    return DiffusionVlaDinoPolicy(config)


def batch(kind: str) -> dict[str, torch.Tensor]:
    obs = {"observation.image": torch.rand(B, 3, IMAGE, IMAGE), "observation.state": torch.randn(B, 2)}
    steps = 8 if kind == "diffusion_vla_dino" else CHUNK
    if kind == "diffusion_vla_dino":
        obs = {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]) for k, v in obs.items()}
    return {**obs, "action": torch.randn(B, steps, 2), "action_is_pad": torch.zeros(B, steps, dtype=torch.bool)}


@pytest.mark.parametrize("kind", ["vla_dino", "act_vla_dino", "diffusion_vla_dino"])
def test_policy_over_dinov3_and_siglip2_trains_and_reloads_without_sources(tmp_path, kind):
    sources = save_towers(tmp_path)
    policy = make(kind, sources)
    towers = policy.fused_backbone()
    assert [type(t) for t in towers.towers] == [Dinov3Tower, Siglip2Tower]
    assert towers.grid_size == (3, 3) and towers.hidden_size == 64
    loss, _ = policy.forward(batch(kind))
    loss.backward()
    tower_grads = [p.grad for p in towers.parameters() if p.requires_grad]
    assert tower_grads and all(g is not None for g in tower_grads)

    policy.save_pretrained(tmp_path / "checkpoint")
    shutil.rmtree(tmp_path / "dinov3")
    shutil.rmtree(tmp_path / "siglip2")
    loaded = type(policy).from_pretrained(tmp_path / "checkpoint")
    assert [type(t) for t in loaded.fused_backbone().towers] == [Dinov3Tower, Siglip2Tower]
    expected, got = policy.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
