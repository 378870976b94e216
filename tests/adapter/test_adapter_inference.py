"""Inference-only tower rewrites (`vla_dino.adapter.inference`): fused QKV attention and channels-last patch
embeddings give the towers' own outputs, on tiny random-init towers of every class a policy can load."""

import copy

import pytest
import torch
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2WithRegistersConfig,
    DINOv3ViTConfig,
    Siglip2VisionConfig,
    SiglipVisionConfig,
)

from vla_dino.adapter import DinoTower, Dinov3Tower, FusedBackbone, Siglip2Tower, SiglipTower
from vla_dino.adapter.inference import (
    Float8Linear,
    FusedQKVAttention,
    channels_last_patch_embeddings,
    float8_linears,
    fuse_qkv,
    unfused_attention,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)

# name → (tower, input size); hidden 32, 2 blocks, 2 heads
TOWERS = {
    "dinov2": lambda: (DinoTower.from_architecture(Dinov2Config(**TINY, image_size=56, patch_size=14, layerscale_value=0.5)), 56),
    "dinov2_reg": lambda: (DinoTower.from_architecture(Dinov2WithRegistersConfig(
        **TINY, image_size=56, patch_size=14, num_register_tokens=4, layerscale_value=0.5)), 56),
    "siglip": lambda: (SiglipTower.from_architecture(SiglipVisionConfig(**TINY, intermediate_size=64, image_size=56, patch_size=14)), 56),
    "siglip2": lambda: (Siglip2Tower.from_architecture(Siglip2VisionConfig(**TINY, intermediate_size=64, patch_size=16, num_patches=16)), 48),
    "dinov3": lambda: (Dinov3Tower.from_architecture(DINOv3ViTConfig(
        **TINY, intermediate_size=64, image_size=48, patch_size=16, num_register_tokens=4, layerscale_value=0.5)), 48),
}


def frozen(tower: nn.Module) -> nn.Module:
    return tower.eval().requires_grad_(False)


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(TOWERS))
def test_fused_tower_equals_the_unfused_tower(name):
    torch.manual_seed(0)
    tower, size = TOWERS[name]()
    tower = frozen(tower)
    fused = copy.deepcopy(tower)
    assert fuse_qkv(fused) == 2  # one per block
    assert unfused_attention(tower) and not unfused_attention(fused)
    assert sum(isinstance(m, FusedQKVAttention) for m in fused.modules()) == 2
    pixels = torch.randn(2, 3, size, size)
    for layer in (0, -1):
        torch.testing.assert_close(fused.patch_tokens(pixels, layer, final_norm=layer == -1),
                                   tower.patch_tokens(pixels, layer, final_norm=layer == -1), rtol=1e-5, atol=1e-5)
    assert fuse_qkv(fused) == 0  # already fused: nothing left to do


@torch.no_grad()
def test_fused_weights_are_the_concatenated_projections_and_drive_the_output():
    torch.manual_seed(0)
    tower = frozen(TOWERS["siglip"]()[0])
    attention = tower.blocks[0].self_attn
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    fuse_qkv(tower)
    fused = tower.blocks[0].self_attn
    assert torch.equal(fused.qkv.weight, torch.cat([q.weight, k.weight, v.weight]))
    assert torch.equal(fused.qkv.bias, torch.cat([q.bias, k.bias, v.bias]))
    assert fused.out_proj is attention.out_proj and not fused.qkv.weight.requires_grad
    pixels = torch.randn(1, 3, 56, 56)
    before = tower.patch_tokens(pixels, -1, final_norm=False)
    fused.qkv.weight[2 * 32 :] *= 2  # the value rows: the fused layer is what runs
    assert not torch.allclose(tower.patch_tokens(pixels, -1, final_norm=False), before, atol=1e-4)


@torch.no_grad()
def test_the_fused_backbone_of_both_towers_is_unchanged():
    torch.manual_seed(0)
    dino, sig = (frozen(TOWERS[name]()[0]) for name in ("dinov2_reg", "siglip"))
    backbone = FusedBackbone(dino, sig, image_size=56, layer=-2)
    pixels = torch.rand(2, 3, 56, 56)
    expected = backbone(pixels)
    assert fuse_qkv(backbone) == 4
    torch.testing.assert_close(backbone(pixels), expected, rtol=1e-5, atol=1e-5)


def test_training_layers_are_refused_and_left_alone():
    tower = TOWERS["dinov2"]()[0]
    with pytest.raises(RuntimeError, match="training mode or requires grad"):
        fuse_qkv(tower.train())
    with pytest.raises(RuntimeError, match="training mode or requires grad"):
        fuse_qkv(tower.eval())  # eval, but its parameters still require grad
    assert sum(unfused_attention(tower).values()) == 2  # untouched


def test_unknown_attention_classes_are_left_and_reported(caplog):
    class OtherAttention(nn.Module):  # separate q/k/v, but no fused forward for it
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    model = frozen(nn.Sequential(OtherAttention(), OtherAttention()))
    assert fuse_qkv(model) == 0
    assert unfused_attention(model) == {"OtherAttention": 2}
    assert "OtherAttention ×2" in caplog.text


@torch.no_grad()
@pytest.mark.parametrize("name", ["dinov2", "siglip", "dinov3"])
def test_channels_last_patch_embedding_is_equal(name):
    torch.manual_seed(0)
    tower, size = TOWERS[name]()
    tower = frozen(tower)
    other = copy.deepcopy(tower)
    assert channels_last_patch_embeddings(other) == 1
    conv = next(m for m in other.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.randn(2, 3, size, size)
    torch.testing.assert_close(other.patch_tokens(pixels, -1, True), tower.patch_tokens(pixels, -1, True), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_fused_attention_compiles_without_graph_breaks():
    """What the runtime's torch.compile sees (aot_eager: dynamo + AOTAutograd, no codegen; quick)."""
    torch.manual_seed(0)
    tower = frozen(TOWERS["dinov3"]()[0])  # the RoPE variant: the most code in the fused forward
    fuse_qkv(tower)
    block = tower.blocks[0]
    hidden = torch.randn(2, 1 + 4 + 9, 32)
    rope = tower.model.rope_embeddings(torch.randn(2, 3, 48, 48))
    compiled = torch.compile(block.attention, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(hidden, position_embeddings=rope)[0], block.attention(hidden, position_embeddings=rope)[0])


def test_float8_linear_is_the_scaled_product_of_its_quantised_operands():
    """Float8Linear against the same product written out: x and W rounded to e4m3 under their max-|·| / 448
    scales, multiplied in fp32, scales and bias applied."""
    torch.manual_seed(0)
    linear = nn.Linear(32, 48).eval().requires_grad_(False)
    holder = nn.Sequential(linear)
    assert float8_linears(holder) == 1 and isinstance(holder[0], Float8Linear)
    x = torch.randn(2, 5, 32)

    def quantised(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = t.abs().amax() / 448.0
        return (t / scale).to(torch.float8_e4m3fn).float(), scale

    (xq, xs), (wq, ws) = quantised(x.reshape(-1, 32)), quantised(linear.weight)
    expected = (xq @ wq.t() * xs * ws + linear.bias).view(2, 5, 48)
    torch.testing.assert_close(holder(x), expected, rtol=1e-5, atol=1e-5)
    # e4m3 keeps 3 mantissa bits: close to the fp32 layer, not equal
    error = (holder(x) - linear(x)).norm() / linear(x).norm()
    assert 0 < error < 0.1


@torch.no_grad()
@pytest.mark.parametrize("name", ["dinov2_reg", "siglip"])
def test_float8_tower_stays_close_to_the_fp32_tower(name):
    torch.manual_seed(0)
    tower, size = TOWERS[name]()
    tower = frozen(tower)
    quantised = copy.deepcopy(tower)
    fuse_qkv(quantised)
    linears = [m for m in quantised.modules() if type(m) is nn.Linear]  # all 16-divisible at these sizes
    assert float8_linears(quantised) == len(linears) >= 2 * 4  # per block: qkv, output projection, fc1, fc2
    assert not any(type(m) is nn.Linear for m in quantised.modules())
    pixels = torch.randn(2, 3, size, size)
    reference, ours = tower.patch_tokens(pixels, -1, True), quantised.patch_tokens(pixels, -1, True)
    assert (ours - reference).norm() / reference.norm() < 0.1
