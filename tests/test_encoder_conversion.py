"""Official DINOv2 checkpoint layout → DinoEncoder, checked against an independent reference
forward written here from the official layout (DESIGN.md §4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vla_dino import DinoEncoder
from vla_dino.encoder import official

DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 14, 4


def random_official_state(registers: int = 0, swiglu: bool = False, grid: int = GRID) -> dict[str, torch.Tensor]:
    """Random tensors in the released checkpoint's key layout (tiny sizes)."""
    g = torch.Generator().manual_seed(1)

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    state = {
        "cls_token": rnd(1, 1, DIM),
        "pos_embed": rnd(1, 1 + grid * grid, DIM),
        "mask_token": rnd(1, DIM),
        "patch_embed.proj.weight": rnd(DIM, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": rnd(DIM),
        "norm.weight": 1 + rnd(DIM),
        "norm.bias": rnd(DIM),
    }
    if registers:
        state["register_tokens"] = rnd(1, registers, DIM)
    hidden = 2 * DIM
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update(
            {
                b + "norm1.weight": 1 + rnd(DIM),
                b + "norm1.bias": rnd(DIM),
                b + "attn.qkv.weight": rnd(3 * DIM, DIM),
                b + "attn.qkv.bias": rnd(3 * DIM),
                b + "attn.proj.weight": rnd(DIM, DIM),
                b + "attn.proj.bias": rnd(DIM),
                b + "ls1.gamma": 0.5 + rnd(DIM),
                b + "norm2.weight": 1 + rnd(DIM),
                b + "norm2.bias": rnd(DIM),
                b + "ls2.gamma": 0.5 + rnd(DIM),
            }
        )
        if swiglu:
            swiglu_hidden = (int(4 * DIM * 2 / 3) + 7) // 8 * 8
            state[b + "mlp.w12.weight"] = rnd(2 * swiglu_hidden, DIM)
            state[b + "mlp.w12.bias"] = rnd(2 * swiglu_hidden)
            state[b + "mlp.w3.weight"] = rnd(DIM, swiglu_hidden)
            state[b + "mlp.w3.bias"] = rnd(DIM)
        else:
            state[b + "mlp.fc1.weight"] = rnd(hidden, DIM)
            state[b + "mlp.fc1.bias"] = rnd(hidden)
            state[b + "mlp.fc2.weight"] = rnd(DIM, hidden)
            state[b + "mlp.fc2.bias"] = rnd(DIM)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DINOv2's ViT forward written directly from the official layout (fused qkv, SwiGLU w12/w3)."""
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    if mask is not None:
        tokens = torch.where(mask[..., None], state["mask_token"].to(tokens.dtype)[None], tokens)
    batch = x.shape[0]
    tokens = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens], dim=1) + state["pos_embed"]
    if "register_tokens" in state:
        tokens = torch.cat([tokens[:, :1], state["register_tokens"].expand(batch, -1, -1), tokens[:, 1:]], dim=1)
    head_dim = DIM // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(tokens, (DIM,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, -1, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, -1, DIM)
        tokens = tokens + state[b + "ls1.gamma"] * F.linear(out, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        h = F.layer_norm(tokens, (DIM,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps=1e-6)
        if b + "mlp.w12.weight" in state:
            x1, x2 = F.linear(h, state[b + "mlp.w12.weight"], state[b + "mlp.w12.bias"]).chunk(2, dim=-1)
            h = F.linear(F.silu(x1) * x2, state[b + "mlp.w3.weight"], state[b + "mlp.w3.bias"])
        else:
            h = F.linear(F.gelu(F.linear(h, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
                         state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"])
        tokens = tokens + state[b + "ls2.gamma"] * h
    return F.layer_norm(tokens, (DIM,), state["norm.weight"], state["norm.bias"], eps=1e-6)


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, False), (0, True)])
def test_official_checkpoint_matches_reference(tmp_path, registers, swiglu):
    state = random_official_state(registers, swiglu)
    path = tmp_path / "dinov2_tiny14_pretrain.pth"
    torch.save(state, path)
    encoder = DinoEncoder.from_pretrained(path, num_attention_heads=HEADS).eval()
    assert encoder.num_register_tokens == registers
    assert encoder.config.use_swiglu_ffn == swiglu
    assert encoder.config.image_size == GRID * PATCH

    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    mask = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    mask[0, [1, 5, 6]] = True
    with torch.no_grad():
        expected = reference_forward(state, x, mask)
        got = encoder(x, bool_masked_pos=mask)
    prefix = 1 + registers
    torch.testing.assert_close(got.cls_token, expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.register_tokens, expected[:, 1:prefix], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.patch_tokens, expected[:, prefix:], atol=1e-5, rtol=1e-5)


def test_official_roundtrip_and_safetensors(tmp_path):
    state = random_official_state(registers=4, swiglu=True)
    src = tmp_path / "in.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, src)  # training-checkpoint wrapping
    encoder = DinoEncoder.from_pretrained(src, num_attention_heads=HEADS)
    out = encoder.save_official(tmp_path / "out.safetensors")
    exported = official.read_state_dict(out)
    assert set(exported) == set(state)
    for key in state:
        torch.testing.assert_close(exported[key], state[key], rtol=0, atol=0)


def test_unknown_official_keys_are_reported(tmp_path):
    state = random_official_state()
    state["blocks.0.attn.extra.weight"] = torch.zeros(2)
    state["head.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bad\.pth: unexpected keys.*blocks\.0\.attn\.extra\.weight.*head\.weight"):
        DinoEncoder.from_pretrained(path, num_attention_heads=HEADS)


def test_missing_official_keys_are_reported(tmp_path):
    state = random_official_state()
    del state["blocks.1.ls2.gamma"]
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys.*encoder\.layer\.1\.layer_scale2\.lambda1"):
        DinoEncoder.from_pretrained(path, num_attention_heads=HEADS)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"obj": object()}}, path)
    with pytest.raises(ValueError, match="weights-only"):
        DinoEncoder.from_pretrained(path)


def test_position_embedding_interpolation_is_transformers_bicubic(tmp_path):
    """Documented choice: off the native grid we resize the position grid bicubically to the new
    grid size, as transformers does (no +0.1 offset of the official non-register code)."""
    state = random_official_state()
    path = tmp_path / "m.pth"
    torch.save(state, path)
    encoder = DinoEncoder.from_pretrained(path, num_attention_heads=HEADS).eval()
    h, w = 3, 6
    x = torch.randn(1, 3, h * PATCH, w * PATCH)
    grid_pos = state["pos_embed"][:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2)
    resized = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
    interpolated = dict(state, pos_embed=torch.cat([state["pos_embed"][:, :1], resized.flatten(2).transpose(1, 2)], 1))
    with torch.no_grad():
        expected = reference_forward(interpolated, x)
        got = encoder(x)
    assert got.grid_size == (h, w)
    torch.testing.assert_close(got.patch_tokens, expected[:, 1:], atol=1e-5, rtol=1e-5)
