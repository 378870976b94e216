"""`RuntimeConfig.fuse_qkv` / `channels_last`: a DINOv2-reg + SigLIP vla_dino policy gives the same chunks with the
tower rewrites on and off."""

from pathlib import Path

import numpy as np
import pytest

from vla_dino.adapter import VisionTokenizerConfig
from torch import nn

from vla_dino.adapter.inference import Float8Linear, FusedQKVAttention, unfused_attention
from vla_dino.adapter.towers import Tower
from vla_dino.runtime.random_checkpoint import write_random_checkpoint
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig


@pytest.fixture(scope="module")
def two_tower_checkpoint(tmp_path_factory) -> Path:
    vision = VisionTokenizerConfig(dino="tiny_reg", siglip="tiny", image_size=56, projector="fused-gelu-mlp", out_dim=32)
    return write_random_checkpoint(
        tmp_path_factory.mktemp("fuse") / "pretrained_model", "vla_dino", cameras={"front": (48, 64)}, state_dim=5,
        action_dim=4, vision=vision, chunk_size=4, n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64,
        n_decoder_layers=1,
    )


def runtime(path: Path, **options) -> PolicyRuntime:
    return PolicyRuntime.from_pretrained(path, RuntimeConfig(device="cpu", dtype="fp32", warmup_iters=1, **options))


def test_fused_qkv_gives_the_unfused_chunks(two_tower_checkpoint):
    plain = runtime(two_tower_checkpoint, fuse_qkv=False)
    fused = runtime(two_tower_checkpoint)  # on by default
    assert RuntimeConfig().fuse_qkv and not RuntimeConfig().channels_last
    assert "fused QKV in 4 attention layers" in fused.notes  # 2 DINOv2 + 2 SigLIP blocks
    assert not any("QKV" in note for note in plain.notes)
    assert sum(isinstance(m, FusedQKVAttention) for m in fused.policy.modules()) == 4
    assert not unfused_attention(fused.policy) and sum(unfused_attention(plain.policy).values()) == 4
    for seed in range(2):
        obs = plain._synthetic_observation(plain.spec.inputs, seed=seed)
        np.testing.assert_allclose(fused.predict_chunk(obs), plain.predict_chunk(obs), rtol=1e-5, atol=1e-5)


def test_channels_last_patch_embeddings_give_the_same_chunks(two_tower_checkpoint):
    plain = runtime(two_tower_checkpoint, fuse_qkv=False)
    other = runtime(two_tower_checkpoint, fuse_qkv=False, channels_last=True)
    assert "channels-last patch embeddings: 2 convs" in other.notes
    obs = plain._synthetic_observation(plain.spec.inputs, seed=3)
    np.testing.assert_allclose(other.predict_chunk(obs), plain.predict_chunk(obs), rtol=1e-5, atol=1e-5)


def test_a_policy_without_tower_attention_is_left_as_it_is(act_runtime):
    """LeRobot's ACT (ResNet + nn.MultiheadAttention, already one in-projection) has nothing to fuse."""
    assert "fused QKV in 0 attention layers" in act_runtime.notes



def test_fp8_towers_quantise_only_the_towers_and_stay_close(two_tower_checkpoint):
    """RuntimeConfig.fp8_towers: every Linear of both towers in float8, the head left alone, actions near fp32's."""
    plain = runtime(two_tower_checkpoint)
    quantised = runtime(two_tower_checkpoint, fp8_towers=True)
    towers = [m for m in quantised.policy.modules() if isinstance(m, Tower)]
    assert len(towers) == 2 and not any(type(m) is nn.Linear for tower in towers for m in tower.modules())
    converted = sum(isinstance(m, Float8Linear) for m in quantised.policy.modules())
    assert f"float8 weights in {converted} tower Linears" in quantised.notes and converted >= 2 * 2 * 4
    assert any(type(m) is nn.Linear for m in quantised.policy.modules())  # projector and head stay as they were
    obs = plain._synthetic_observation(plain.spec.inputs, seed=0)
    reference = plain.predict_chunk(obs)
    error = np.abs(quantised.predict_chunk(obs) - reference).max()
    assert 0 < error < 0.1 * np.abs(reference).max()


def test_fp8_towers_refuse_a_policy_without_towers(act_checkpoint):
    with pytest.raises(ValueError, match="no vla_dino vision towers"):
        runtime(act_checkpoint, fp8_towers=True)
