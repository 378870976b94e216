"""VisionTokenizer: multi-camera + proprio tokens, token reduction, training modes, persistence."""

import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import SiglipVisionConfig, SiglipVisionModel

from vla_dino.adapter import VisionTokenizer, VisionTokenizerConfig
from vla_dino.encoder import DinoEncoder


def tiny_config(**overrides) -> VisionTokenizerConfig:
    fields = dict(dino="tiny_reg", siglip="tiny", image_size=56, projector="mlp", out_dim=24)
    return VisionTokenizerConfig(**{**fields, **overrides})


def camera_batch(names, batch=2) -> dict[str, torch.Tensor]:
    return {name: torch.rand(batch, 3, 56, 56) for name in names}


@pytest.mark.parametrize("cameras", [["image"], ["front", "wrist"], ["a", "b", "c"]])
@pytest.mark.parametrize("proprio_dim", [0, 7])
def test_token_shapes_and_types_for_one_to_three_cameras(cameras, proprio_dim):
    model = VisionTokenizer(tiny_config(camera_names=cameras, proprio_dim=proprio_dim))
    out = model(camera_batch(cameras), torch.randn(2, proprio_dim) if proprio_dim else None)
    per_camera = 16  # 56 px / patch 14 → 4×4
    assert model.num_tokens == per_camera * len(cameras) + (proprio_dim > 0)
    assert out.tokens.shape == (2, model.num_tokens, 24) and model.out_dim == 24
    expected_type = torch.arange(len(cameras)).repeat_interleave(per_camera).tolist() + ([len(cameras)] if proprio_dim else [])
    assert out.token_type.dtype == torch.long and out.token_type.tolist() == expected_type


@torch.no_grad()
def test_cameras_share_the_backbone_and_differ_by_their_embedding():
    model = VisionTokenizer(tiny_config(camera_names=["front", "wrist"], proprio_dim=3))
    image = torch.rand(2, 3, 56, 56)
    proprio = torch.randn(2, 3)
    out = model({"front": image, "wrist": image}, proprio)
    projected = model.projector(model.backbone(image))
    torch.testing.assert_close(out.tokens[:, :16], projected + model.camera_embedding[0])
    torch.testing.assert_close(out.tokens[:, 16:32], projected + model.camera_embedding[1])
    torch.testing.assert_close(out.tokens[:, 32], proprio @ model.proprio.weight.T + model.proprio.bias)


@torch.no_grad()
def test_cameras_of_different_native_sizes_and_uint8():
    model = VisionTokenizer(tiny_config(camera_names=["front", "wrist"]))
    front = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    wrist = torch.rand(2, 3, 48, 64)
    out = model({"front": front, "wrist": wrist})
    torch.testing.assert_close(out.tokens[:, :16], model.projector(model.backbone(front.float() / 255)) + model.camera_embedding[0])
    torch.testing.assert_close(out.tokens[:, 16:], model.projector(model.backbone(wrist)) + model.camera_embedding[1])


@torch.no_grad()
def test_pool2x2_averages_neighbouring_patch_tokens():
    model = VisionTokenizer(tiny_config(token_reduction="pool2x2", camera_names=["a", "b"]))
    images = camera_batch(["a", "b"])
    out = model(images)
    assert model.num_tokens == 8 and out.tokens.shape == (2, 8, 24)
    grid = model.projector(model.backbone(images["a"])).view(2, 4, 4, 24)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
    torch.testing.assert_close(out.tokens[:, 0], top_left + model.camera_embedding[0])
    torch.testing.assert_close(out.tokens[:, 3], bottom_right + model.camera_embedding[0])


@torch.no_grad()
def test_attention_pool_is_learned_query_cross_attention():
    model = VisionTokenizer(tiny_config(token_reduction="attention_pool", num_pooled_tokens=3, attention_pool_heads=2,
                                        camera_names=["a", "b"], proprio_dim=2))
    images = camera_batch(["a", "b"])
    out = model(images, torch.randn(2, 2))
    assert model.num_tokens == 7 and out.tokens.shape == (2, 7, 24)
    pool = model.reduction
    keys = pool.norm(model.projector(model.backbone(images["b"])))
    w_q, w_k, w_v = pool.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = pool.attention.in_proj_bias.chunk(3)
    heads = lambda x: x.unflatten(-1, (2, 12)).transpose(1, 2)  # noqa: E731
    q = heads((pool.queries @ w_q.T + b_q).expand(2, -1, -1))
    attended = F.softmax(q @ heads(keys @ w_k.T + b_k).transpose(-1, -2) / 12**0.5, dim=-1) @ heads(keys @ w_v.T + b_v)
    expected = pool.attention.out_proj(attended.transpose(1, 2).flatten(2)) + model.camera_embedding[1]
    torch.testing.assert_close(out.tokens[:, 3:6], expected, rtol=1e-5, atol=1e-5)


def test_dino_only_path_and_projector_none_keep_the_interface():
    dino_only = VisionTokenizer(tiny_config(siglip=None, projector="fused-gelu-mlp"))
    assert dino_only(camera_batch(["image"])).tokens.shape == (2, 16, 24)
    fused_gelu = dino_only.projector
    assert [m.out_features for m in fused_gelu if isinstance(m, torch.nn.Linear)] == [4 * 32, 24, 24]
    raw = VisionTokenizer(tiny_config(projector="none", out_dim=999))
    assert raw.out_dim == 32 + 32 and raw(camera_batch(["image"])).tokens.shape == (2, 16, 64)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    config = tiny_config(camera_names=["front", "wrist"], proprio_dim=4, token_reduction="attention_pool",
                         num_pooled_tokens=2, attention_pool_heads=2, train_mode="last_n", trainable_blocks=1)
    model = VisionTokenizer(config).eval()
    images, proprio = camera_batch(["front", "wrist"]), torch.randn(2, 4)
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "dino", "head.safetensors", "siglip"]
    loaded = VisionTokenizer.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, proprio).tokens, model(images, proprio).tokens, rtol=0, atol=0)
    assert loaded.config.train_mode == "last_n" and loaded.num_tokens == model.num_tokens
    # the tower folders are plain transformers folders
    assert DinoEncoder.from_pretrained(tmp_path / "adapter" / "dino").num_layers == 2
    assert SiglipVisionModel.from_pretrained(tmp_path / "adapter" / "siglip").config.hidden_size == 32


def test_towers_from_saved_tiny_folders(tmp_path):
    dino = DinoEncoder.from_size("tiny", num_hidden_layers=3)
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, patch_size=14, image_size=56))
    dino.save_pretrained(tmp_path / "dino")
    siglip.save_pretrained(tmp_path / "siglip")
    model = VisionTokenizer(tiny_config(dino=str(tmp_path / "dino"), siglip=str(tmp_path / "siglip")))
    assert model.backbone.hidden_size == 32 + 64
    for name, tower in (("dino", model.backbone.dino.encoder.model), ("siglip", model.backbone.siglip.model)):
        source = dino.model if name == "dino" else siglip
        for key, value in source.state_dict().items():
            torch.testing.assert_close(tower.state_dict()[key], value, rtol=0, atol=0)
    model.save_pretrained(tmp_path / "adapter")
    loaded = VisionTokenizer.from_pretrained(tmp_path / "adapter")
    images = camera_batch(["image"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).tokens, model(images).tokens, rtol=0, atol=0)


def _four_block_towers(folder) -> dict[str, str]:
    DinoEncoder.from_size("tiny_reg", num_hidden_layers=4).save_pretrained(folder / "dino")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                                         patch_size=14, image_size=56)).save_pretrained(folder / "siglip")
    return dict(dino=str(folder / "dino"), siglip=str(folder / "siglip"))


def _parts_with_gradients(model: VisionTokenizer) -> dict[str, set[str]]:
    """Tower → the blocks ("0", "1", …) and other modules ("embeddings", …) whose parameters got gradients."""
    found: dict[str, set[str]] = {"dino": set(), "siglip": set()}
    for name, p in model.backbone.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            tower, local = re.sub(r"^towers\.1\.model\.", "siglip.", re.sub(r"^towers\.0\.encoder\.model\.", "dino.", name)).split(".", 1)
            block = re.match(r"encoder\.layers?\.(\d+)\.", local)
            found[tower].add(block[1] if block else local.split(".")[0])  # "embeddings", "layernorm", "post_layernorm", "head"
    return found


def test_last_n_trains_exactly_the_last_n_blocks_up_to_the_chosen_layer(tmp_path):
    # 4 blocks, layer -2: blocks 0..2 run, block 3 never does; last_n=2 → blocks 1 and 2 train
    model = VisionTokenizer(tiny_config(train_mode="last_n", trainable_blocks=2, **_four_block_towers(tmp_path))).train()
    model(camera_batch(["image"])).tokens.square().mean().backward()
    assert _parts_with_gradients(model) == {"dino": {"1", "2"}, "siglip": {"1", "2"}}
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.backbone.named_parameters() if p.grad is not None}
    assert trainable == with_grad  # nothing trainable is left without a gradient (DDP-safe)
    assert len(model.trainable_parameter_groups()["towers"]) == len(trainable)


def test_full_mode_trains_every_block_the_features_use(tmp_path):
    model = VisionTokenizer(tiny_config(train_mode="full", **_four_block_towers(tmp_path))).train()
    model(camera_batch(["image"])).tokens.square().mean().backward()
    blocks = _parts_with_gradients(model)
    assert {"0", "1", "2"} <= blocks["dino"] and {"0", "1", "2"} <= blocks["siglip"]
    assert "3" not in blocks["dino"] | blocks["siglip"]  # after the chosen layer: never run, never trained
    assert "embeddings" in blocks["dino"] and "embeddings" in blocks["siglip"]
    assert "post_layernorm" not in blocks["siglip"] and "head" not in blocks["siglip"]
    untouched = {n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None}
    assert untouched == set()


def test_bad_inputs_and_missing_towers_give_clear_errors(tmp_path):
    model = VisionTokenizer(tiny_config(camera_names=["front", "wrist"], proprio_dim=3))
    with pytest.raises(KeyError, match=r"missing \['wrist'\], extra \[\]"):
        model(camera_batch(["front"]), torch.randn(2, 3))
    with pytest.raises(KeyError, match=r"missing \[\], extra \['side'\]"):
        model(camera_batch(["front", "wrist", "side"]), torch.randn(2, 3))
    with pytest.raises(ValueError, match="camera 'wrist'.*expected \\(B, 3, H, W\\)"):
        model({"front": torch.rand(2, 3, 56, 56), "wrist": torch.rand(2, 56, 56)}, torch.randn(2, 3))
    with pytest.raises(ValueError, match="different batch sizes"):
        model({"front": torch.rand(2, 3, 56, 56), "wrist": torch.rand(1, 3, 56, 56)}, torch.randn(2, 3))
    with pytest.raises(ValueError, match="no proprio given"):
        model(camera_batch(["front", "wrist"]))
    with pytest.raises(ValueError, match=r"proprio shape \(2, 4\); expected \(2, 3\)"):
        model(camera_batch(["front", "wrist"]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="train_mode='last_n' needs trainable_blocks"):
        tiny_config(train_mode="last_n")
    with pytest.raises(ValueError, match=r"projector='mlp4'; expected one of"):
        tiny_config(projector="mlp4")
    model.save_pretrained(tmp_path / "adapter")
    for tower in ("siglip", "dino"):
        shutil.rmtree(tmp_path / "adapter" / tower)
        with pytest.raises(FileNotFoundError, match=f"no {tower}/ tower folder"):
            VisionTokenizer.from_pretrained(tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="expected a VisionTokenizer.save_pretrained folder"):
        VisionTokenizer.from_pretrained(tmp_path / "nothing")
