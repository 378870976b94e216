"""Official DINOv2 checkpoint layout → DinoEncoder, checked against an independent reference
forward written here from the official layout (facebookresearch/dinov2 `dinov2/models/vision_transformer.py`,
`dinov2/layers/{attention,block,swiglu_ffn}.py`)."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


# ---------------------------------------------------------------- training-code layouts
# Checkpoints written by DINOv2's own training code load into DinoEncoder.
#
# The layouts are built here the way facebookresearch/dinov2 (main @ b8931f7) builds them:
# `DinoVisionTransformer(block_chunks=N)` holds `nn.ModuleList([BlockChunk([nn.Identity()] * i +
# blocks[i:i + chunk])])` (`dinov2/models/vision_transformer.py`), `do_test` saves
# `{"teacher": model.teacher.state_dict()}` with the backbone under `backbone.` next to `dino_head.` /
# `ibot_head.` (`dinov2/train/train.py`), and the checkpointer saves `{"model": SSLMetaArch.state_dict(),
# "optimizer": …, "iteration": …}` holding `student.*` and `teacher.*`. Every file is checked against
# `reference_forward` above at the checkpoint's native size.


def module_from_flat(flat: dict[str, torch.Tensor]) -> nn.Module:
    """A module tree whose state_dict() has exactly these keys (dots → submodules)."""
    root = nn.Module()
    for key, value in flat.items():
        *path, name = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(name, nn.Parameter(value.clone()))
    return root


def official_backbone_module(state: dict[str, torch.Tensor], block_chunks: int) -> nn.Module:
    """The official module structure: flat `blocks` or chunks padded with nn.Identity."""
    globals_ = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    root = module_from_flat(globals_)
    blocks = [
        module_from_flat({k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")})
        for i in range(DEPTH)
    ]
    if block_chunks == 0:
        root.blocks = nn.ModuleList(blocks)
    else:
        size = DEPTH // block_chunks
        root.blocks = nn.ModuleList(
            [nn.ModuleList([nn.Identity()] * i + blocks[i : i + size]) for i in range(0, DEPTH, size)]
        )
    return root


def head_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "mlp.0.weight": torch.randn(64, 32, generator=g),
        "mlp.0.bias": torch.randn(64, generator=g),
        "last_layer.parametrizations.weight.original0": torch.randn(16, 1, generator=g),
        "last_layer.parametrizations.weight.original1": torch.randn(16, 64, generator=g),
    }


def ssl_network_state(state: dict[str, torch.Tensor], block_chunks: int, seed: int) -> dict[str, torch.Tensor]:
    """`SSLMetaArch.teacher` (an nn.ModuleDict of backbone, dino_head, ibot_head)."""
    network = nn.ModuleDict(
        {
            "backbone": official_backbone_module(state, block_chunks),
            "dino_head": module_from_flat(head_state(seed)),
            "ibot_head": module_from_flat(head_state(seed + 1)),
        }
    )
    return network.state_dict()


def write(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


LAYOUTS = ["hub", "chunked", "teacher_checkpoint", "trainer_checkpoint", "ddp_student_only"]


def official_file(tmp_path, state: dict[str, torch.Tensor], layout: str) -> str:
    path = tmp_path / f"{layout}.pth"
    if layout == "hub":
        return write(path, official_backbone_module(state, 0).state_dict())
    if layout == "chunked":
        return write(path, official_backbone_module(state, 2).state_dict())
    if layout == "teacher_checkpoint":
        return write(path, {"teacher": ssl_network_state(state, 2, seed=5)})
    if layout == "trainer_checkpoint":  # the student differs: the teacher must be the one loaded
        student = {k: v + 1.0 for k, v in state.items()}
        model = {f"teacher.{k}": v for k, v in ssl_network_state(state, 2, seed=5).items()}
        model.update({f"student.{k}": v for k, v in ssl_network_state(student, 2, seed=7).items()})
        return write(path, {"model": model, "optimizer": {"state": {}}, "iteration": 1250})
    if layout == "ddp_student_only":
        return write(path, {"model": {f"module.student.backbone.{k}": v for k, v in state.items()}})
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, False), (0, True)])
def test_training_layouts_match_the_reference_forward(tmp_path, layout, registers, swiglu):
    state = random_official_state(registers, swiglu)
    encoder = DinoEncoder.from_pretrained(official_file(tmp_path, state, layout), num_attention_heads=HEADS).eval()
    assert (encoder.num_layers, encoder.num_register_tokens, encoder.config.use_swiglu_ffn) == (DEPTH, registers, swiglu)
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        expected = reference_forward(state, x)
        got = encoder(x)
    prefix = 1 + registers
    torch.testing.assert_close(got.cls_token, expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.patch_tokens, expected[:, prefix:], atol=1e-5, rtol=1e-5)


def test_chunked_keys_are_the_official_ones_and_heads_are_noted(tmp_path, caplog):
    state = random_official_state()
    raw = ssl_network_state(state, 2, seed=5)
    assert "backbone.blocks.1.1.attn.qkv.weight" in raw and "backbone.blocks.0.0.norm1.weight" in raw
    assert not any(k.startswith("backbone.blocks.1.0.") for k in raw)  # Identity padding has no parameters
    with caplog.at_level(logging.INFO, logger="vla_dino.encoder.official"):
        backbone = official.extract_backbone({"teacher": raw}, source="teacher_checkpoint.pth")
    assert set(backbone) == set(state)
    note = caplog.text
    assert "read teacher" in note and "un-chunked 2 block chunks" in note
    assert "ignored 8 head tensors (dino_head, ibot_head)" in note


@pytest.mark.parametrize("block_chunks,wrap", [(0, None), (2, "model"), (2, "teacher"), (1, None)])
def test_save_official_writes_the_layout_the_official_code_loads(tmp_path, block_chunks, wrap):
    state = random_official_state(registers=4)
    encoder = DinoEncoder.from_pretrained(official_file(tmp_path, state, "hub"), num_attention_heads=HEADS).eval()
    out = encoder.save_official(tmp_path / "out.pth", block_chunks=block_chunks, wrap=wrap)
    written = torch.load(out, weights_only=True)
    expected_backbone = official_backbone_module(state, block_chunks).state_dict()
    if wrap == "model":  # dinov2/train/ssl_meta_arch.py: student_backbone.load_state_dict(chkpt["model"])
        assert set(written) == {"model"}
        written = written["model"]
    elif wrap == "teacher":  # dinov2/utils/utils.py:load_pretrained_weights(model, path, "teacher")
        assert set(written) == {"teacher"}
        written = {k.replace("backbone.", ""): v for k, v in written["teacher"].items()}
    assert set(written) == set(expected_backbone)
    # strict load into the official module structure: every tensor has its home and its value
    target = official_backbone_module({k: torch.zeros_like(v) for k, v in state.items()}, block_chunks)
    target.load_state_dict(written, strict=True)
    for key, value in expected_backbone.items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    again = DinoEncoder.from_pretrained(out, num_attention_heads=HEADS).eval()
    x = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(again(x).patch_tokens, encoder(x).patch_tokens, rtol=0, atol=0)


def test_bad_save_official_arguments(tmp_path):
    encoder = DinoEncoder.from_size("tiny")
    with pytest.raises(ValueError, match="block_chunks=3 is more than the 2 blocks"):
        encoder.save_official(tmp_path / "x.pth", block_chunks=3)
    with pytest.raises(ValueError, match="wrap='student'"):
        encoder.save_official(tmp_path / "x.pth", wrap="student")
    with pytest.raises(ValueError, match="safetensors holds a flat dict"):
        encoder.save_official(tmp_path / "x.safetensors", wrap="model")


def test_missing_layer_scale_means_gamma_one(tmp_path):
    """`DinoVisionTransformer(init_values=None)` has no ls1/ls2 (identity layer-scale)."""
    state = random_official_state()
    without = {k: v for k, v in state.items() if ".ls" not in k}
    encoder = DinoEncoder.from_pretrained(write(tmp_path / "nols.pth", without), num_attention_heads=HEADS).eval()
    ones = dict(without, **{k: torch.ones_like(v) for k, v in state.items() if ".ls" in k})
    x = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x).patch_tokens, reference_forward(ones, x)[:, 1:], atol=1e-5, rtol=1e-5)


def test_files_that_are_not_a_dinov2_backbone_say_what_they_hold(tmp_path):
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    with pytest.raises(ValueError, match=r"resnet\.pth: not a DINOv2 backbone checkpoint.*3 tensors.*'fc': 2.*'conv1': 1"):
        DinoEncoder.from_pretrained(write(tmp_path / "resnet.pth", resnet))
    with pytest.raises(ValueError, match=r"not a DINOv2 backbone checkpoint; top-level keys \['epoch', 'optimizer'\]"):
        DinoEncoder.from_pretrained(write(tmp_path / "opt.pth", {"optimizer": {"lr": 0.1}, "epoch": 3}))
    heads_only = {"teacher": {f"dino_head.{k}": v for k, v in head_state(0).items()}}
    with pytest.raises(ValueError, match=r"not a DINOv2 backbone checkpoint.*expected DINOv2 backbone keys"):
        DinoEncoder.from_pretrained(write(tmp_path / "heads.pth", heads_only))
    state = random_official_state()
    mixed = dict(official_backbone_module(state, 2).state_dict(), **{"blocks.5.norm1.weight": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"mixes chunked .* and flat block keys"):
        DinoEncoder.from_pretrained(write(tmp_path / "mixed.pth", mixed))
    no_mlp = {k: v for k, v in state.items() if not k.startswith("blocks.0.mlp.")}
    with pytest.raises(ValueError, match=r"block 0 has neither mlp\.fc1\.weight .* its keys are \['blocks\.0\.attn"):
        DinoEncoder.from_pretrained(write(tmp_path / "nomlp.pth", no_mlp))


def test_dinov3_folder_is_refused_as_a_dino_encoder_with_the_reason(tmp_path):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32)
    DINOv3ViTModel(config).save_pretrained(tmp_path / "dinov3")
    with pytest.raises(ValueError, match=r"'dinov3_vit' is DINOv3.*cannot be a pretraining backbone.*RoPE.*policy\.backbone\.dino"):
        DinoEncoder.from_pretrained(tmp_path / "dinov3")
