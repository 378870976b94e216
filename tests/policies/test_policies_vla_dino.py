"""LeRobot's generic policy checks, adapted to our three policy types (tiny towers, CPU, offline).

Types: `vla_dino` (VisionTokenizer + MLP / ACT-decoder chunk head), `act_vla_dino` and
`diffusion_vla_dino` (LeRobot's ACT / Diffusion with the ResNet swapped for our towers).
"""

from __future__ import annotations

import pytest
import torch
from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature, PreTrainedConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

from lerobot_policy_vla_dino import ACTVlaDinoConfig, DiffusionVlaDinoConfig, TowerBackboneConfig, VlaDinoConfig
from lerobot_policy_vla_dino.feature_map import TowerFeatureMap
from lerobot_policy_vla_dino.heads import masked_l1
from lerobot_policy_vla_dino.modeling_act_vla_dino import ACTVlaDinoPolicy
from lerobot_policy_vla_dino.modeling_diffusion_vla_dino import DiffusionVlaDinoPolicy
from lerobot_policy_vla_dino.modeling_vla_dino import VlaDinoPolicy
from lerobot_policy_vla_dino.processor_vla_dino import make_vla_dino_pre_post_processors
from vla_dino.adapter import VisionTokenizerConfig

B, CHUNK, N_ACTION_STEPS, IMAGE = 2, 4, 3, 64
INPUTS = {
    "observation.image": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
    "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
}
OUTPUTS = {"action": PolicyFeature(FeatureType.ACTION, (2,))}
TINY_VISION = dict(dino="tiny", image_size=56, projector="mlp", out_dim=32)
TINY_BACKBONE = dict(dino="tiny", image_size=56)


def vla_dino_config(head: str = "act_decoder", **overrides) -> VlaDinoConfig:
    vision = VisionTokenizerConfig(**{**TINY_VISION, **overrides.pop("vision", {})})
    return VlaDinoConfig(
        device="cpu", input_features=dict(overrides.pop("inputs", INPUTS)), output_features=dict(OUTPUTS), head=head,
        chunk_size=CHUNK, n_action_steps=N_ACTION_STEPS, vision=vision, dim_model=32, n_heads=2, dim_feedforward=64,
        n_decoder_layers=2, mlp_token_dim=4, mlp_hidden_dim=32, **overrides,
    )


def act_config(**overrides) -> ACTVlaDinoConfig:
    return ACTVlaDinoConfig(
        device="cpu", input_features=dict(INPUTS), output_features=dict(OUTPUTS), chunk_size=CHUNK,
        n_action_steps=N_ACTION_STEPS, backbone=TowerBackboneConfig(**TINY_BACKBONE), dim_model=32, n_heads=2,
        dim_feedforward=64, n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=4, **overrides,
    )


def diffusion_config(**overrides) -> DiffusionVlaDinoConfig:
    return DiffusionVlaDinoConfig(
        device="cpu", input_features=dict(INPUTS), output_features=dict(OUTPUTS), n_obs_steps=2, horizon=8,
        n_action_steps=N_ACTION_STEPS, backbone=TowerBackboneConfig(**TINY_BACKBONE), down_dims=(16, 32),
        diffusion_step_embed_dim=16, num_train_timesteps=10, spatial_softmax_num_keypoints=8, **overrides,
    )


def observation(batch: int = B) -> dict[str, torch.Tensor]:
    return {"observation.image": torch.rand(batch, 3, IMAGE, IMAGE), "observation.state": torch.randn(batch, 2)}


def training_batch(steps: int = CHUNK, obs_steps: int | None = None) -> dict[str, torch.Tensor]:
    obs = observation()
    if obs_steps is not None:  # Diffusion reads a short observation history
        obs = {key: value.unsqueeze(1).expand(-1, obs_steps, *value.shape[1:]) for key, value in obs.items()}
    is_pad = torch.zeros(B, steps, dtype=torch.bool)
    is_pad[0, -1] = True
    return {**obs, "action": torch.randn(B, steps, 2), "action_is_pad": is_pad}


# ---------------------------------------------------------------- registration and defaults
@pytest.mark.parametrize(
    "name, config_cls, policy_cls",
    [
        ("vla_dino", VlaDinoConfig, VlaDinoPolicy),
        ("act_vla_dino", ACTVlaDinoConfig, ACTVlaDinoPolicy),
        ("diffusion_vla_dino", DiffusionVlaDinoConfig, DiffusionVlaDinoPolicy),
    ],
)
def test_registered_with_lerobot_factory(name, config_cls, policy_cls):
    assert name in PreTrainedConfig.get_known_choices()
    assert PreTrainedConfig.get_choice_class(name) is config_cls
    assert get_policy_class(name) is policy_cls  # configuration_ → modeling_ naming convention
    assert policy_cls.config_class is config_cls and policy_cls.name == name
    config = make_policy_config(name, device="cpu")  # the default config is valid
    assert config.type == name
    assert config.normalization_mapping["VISUAL"] is NormalizationMode.IDENTITY
    assert config.get_optimizer_preset().lr == config.optimizer_lr
    # make_<name>_pre_post_processors is found in the processor_ module by convention
    pre, post = make_pre_post_processors(config, dataset_stats=None)
    assert pre.steps and post.steps


def test_vla_dino_defaults_and_validation():
    config = VlaDinoConfig(device="cpu")
    assert config.vision.dino == "facebook/dinov2-with-registers-small" and config.vision.train_mode == "frozen"
    assert config.action_delta_indices == list(range(config.chunk_size))
    assert config.observation_delta_indices is None and config.reward_delta_indices is None
    assert config.get_scheduler_preset().peak_lr == config.optimizer_lr
    with pytest.raises(ValueError, match="policy.head"):
        VlaDinoConfig(device="cpu", head="gru")
    with pytest.raises(ValueError, match="n_action_steps"):
        VlaDinoConfig(device="cpu", chunk_size=4, n_action_steps=5)
    with pytest.raises(ValueError, match="pretrained_backbone_weights"):
        ACTVlaDinoConfig(device="cpu", pretrained_backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="trainable_blocks"):
        TowerBackboneConfig(train_mode="last_n")


def test_validate_features_maps_cameras_and_proprio():
    inputs = {
        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 48, 64)),
        "observation.images.wrist": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
        "observation.state": PolicyFeature(FeatureType.STATE, (7,)),
        "observation.environment_state": PolicyFeature(FeatureType.ENV, (5,)),
    }
    config = vla_dino_config(inputs=inputs)
    config.validate_features()
    assert config.vision.camera_names == ["top", "wrist"]
    assert config.vision.proprio_dim == 12
    assert config.low_dim_keys == ["observation.state", "observation.environment_state"]
    policy = VlaDinoPolicy(config)
    batch = {
        "observation.images.top": torch.rand(B, 3, 48, 64), "observation.images.wrist": torch.rand(B, 3, 32, 32),
        "observation.state": torch.randn(B, 7), "observation.environment_state": torch.randn(B, 5),
    }
    assert policy.predict_action_chunk(batch).shape == (B, CHUNK, 2)
    with pytest.raises(ValueError, match="at least one image"):
        vla_dino_config(inputs={"observation.state": INPUTS["observation.state"]}).validate_features()


# ---------------------------------------------------------------- loss
def test_masked_l1_matches_formula():
    predicted, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    is_pad = torch.tensor([[False, False, True], [False, True, True]])
    expected = sum(
        (predicted[b, t] - target[b, t]).abs().sum() for b in range(2) for t in range(3) if not is_pad[b, t]
    ) / (3 * 4)
    torch.testing.assert_close(masked_l1(predicted, target, is_pad), expected)
    torch.testing.assert_close(masked_l1(predicted, target, None), (predicted - target).abs().mean())


# ---------------------------------------------------------------- vla_dino policy
@pytest.mark.parametrize("head", ["mlp", "act_decoder"])
def test_vla_dino_forward_backward_and_chunk_shapes(head):
    policy = VlaDinoPolicy(vla_dino_config(head))
    policy.train()
    loss, info = policy(training_batch())
    loss.backward()
    assert torch.isfinite(loss) and info["l1_loss"] == pytest.approx(loss.item())
    head_grads = [p.grad for p in policy.head.parameters()]
    assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
    # frozen towers (the default) get no gradient
    assert all(p.grad is None for p in policy.tokenizer.backbone.parameters())
    chunk = policy.predict_action_chunk(observation())
    assert chunk.shape == (B, CHUNK, 2)


def test_select_action_serves_the_chunk_from_a_queue(monkeypatch):
    policy = VlaDinoPolicy(vla_dino_config("mlp"))
    calls = []
    original = policy.predict_action_chunk

    def counted(batch):
        calls.append(1)
        return original(batch)

    monkeypatch.setattr(policy, "predict_action_chunk", counted)
    obs = observation()
    chunk = original(obs)
    actions = [policy.select_action(obs) for _ in range(N_ACTION_STEPS)]
    assert len(calls) == 1  # one model call serves n_action_steps actions
    for step, action in enumerate(actions):
        torch.testing.assert_close(action, chunk[:, step])
    policy.select_action(obs)
    assert len(calls) == 2  # queue empty → the model runs again
    policy.reset()
    assert len(policy._action_queue) == 0


@pytest.mark.parametrize("head", ["mlp", "act_decoder"])
def test_vla_dino_save_load_round_trip(tmp_path, head):
    policy = VlaDinoPolicy(vla_dino_config(head, vision=dict(train_mode="last_n", trainable_blocks=1)))
    policy.eval()
    obs = observation()
    expected = policy.predict_action_chunk(obs)
    policy.save_pretrained(tmp_path)
    loaded = VlaDinoPolicy.from_pretrained(tmp_path)
    assert isinstance(loaded.config, VlaDinoConfig) and loaded.config.head == head
    assert loaded.config.vision.camera_names == ["image"] and loaded.config.vision.trainable_blocks == 1
    torch.testing.assert_close(loaded.predict_action_chunk(obs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vla_dino", "act_vla_dino", "diffusion_vla_dino"])
def test_checkpoint_loads_without_its_tower_sources(tmp_path, kind):
    """Checkpoints keep the towers' architectures, so they load (e.g. on the robot machine) after
    the folders their towers came from are gone; the weights come from model.safetensors."""
    import shutil

    from transformers import SiglipVisionConfig, SiglipVisionModel

    from vla_dino import DinoEncoder

    DinoEncoder.from_size("tiny_reg").save_pretrained(tmp_path / "dino")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=56, patch_size=14)).save_pretrained(tmp_path / "siglip")
    sources = dict(dino=str(tmp_path / "dino"), siglip=str(tmp_path / "siglip"))
    if kind == "vla_dino":
        policy_cls, config = VlaDinoPolicy, vla_dino_config(vision=sources)
    else:
        policy_cls, config = (ACTVlaDinoPolicy, act_config()) if kind == "act_vla_dino" else (DiffusionVlaDinoPolicy, diffusion_config())
        config.backbone = TowerBackboneConfig(**{**TINY_BACKBONE, **sources})
    policy = policy_cls(config)
    policy.save_pretrained(tmp_path / "checkpoint")
    assert {p.name for p in (tmp_path / "checkpoint" / "towers").iterdir()} == {"dino.json", "siglip.json"}
    shutil.rmtree(tmp_path / "dino")
    shutil.rmtree(tmp_path / "siglip")
    loaded = policy_cls.from_pretrained(tmp_path / "checkpoint")
    assert loaded.fused_backbone().dino.encoder.num_register_tokens == 4
    assert getattr(loaded.config, loaded.tower_field).dino == sources["dino"]  # the config still names the source
    expected, got = policy.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_vla_dino_optimizer_groups_give_towers_their_own_lr():
    frozen = VlaDinoPolicy(vla_dino_config())
    assert len(frozen.get_optim_params()) == 1  # frozen towers are not handed to the optimizer
    full = VlaDinoPolicy(vla_dino_config(vision=dict(train_mode="full"), optimizer_lr_encoder=3e-6))
    head_group, tower_group = full.get_optim_params()
    assert tower_group["lr"] == 3e-6 and "lr" not in head_group
    tower_ids = {id(p) for p in full.tokenizer.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in tower_group["params"]} == tower_ids
    assert not tower_ids & {id(p) for p in head_group["params"]}
    optimizer = full.config.get_optimizer_preset().build(full.get_optim_params())
    assert [g["lr"] for g in optimizer.param_groups] == [full.config.optimizer_lr, 3e-6]


def test_processors_leave_images_and_normalise_state():
    config = vla_dino_config()
    stats = {
        "observation.image": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.1)},
        "observation.state": {"mean": torch.tensor([1.0, 2.0]), "std": torch.tensor([2.0, 4.0])},
        "action": {"mean": torch.tensor([10.0, -10.0]), "std": torch.tensor([5.0, 5.0])},
    }
    pre, post = make_vla_dino_pre_post_processors(config, dataset_stats=stats)
    obs = observation(1)
    out = pre({**obs, "action": torch.tensor([[15.0, -5.0]])})
    torch.testing.assert_close(out["observation.image"], obs["observation.image"])  # IDENTITY: towers normalise
    torch.testing.assert_close(out["observation.state"], (obs["observation.state"] - stats["observation.state"]["mean"]) / stats["observation.state"]["std"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["action"], torch.tensor([[1.0, 1.0]]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(post(torch.tensor([[1.0, 1.0]])), torch.tensor([[15.0, -5.0]]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- ACT / Diffusion with our towers
def test_act_swap_replaces_only_the_image_backbone(tmp_path):
    config = act_config()
    policy = ACTVlaDinoPolicy(config)
    assert isinstance(policy.model.backbone.module, TowerFeatureMap)
    assert not any("layer4" in name for name, _ in policy.named_parameters())
    reference = ACTPolicy(make_policy_config(
        "act", device="cpu", input_features=dict(INPUTS), output_features=dict(OUTPUTS), chunk_size=CHUNK,
        n_action_steps=N_ACTION_STEPS, pretrained_backbone_weights=None, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=4,
    ))
    ours = {k: v.shape for k, v in policy.state_dict().items() if not k.startswith(("model.backbone", "model.encoder_img_feat_input_proj"))}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith(("model.backbone", "model.encoder_img_feat_input_proj"))}
    assert ours == theirs  # the transformer, VAE and heads are LeRobot's, unchanged
    policy.train()
    loss, info = policy(training_batch())
    loss.backward()
    assert torch.isfinite(loss) and "kld_loss" in info
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.model.backbone.parameters())
    main_group, backbone_group = policy.get_optim_params()
    assert backbone_group["lr"] == config.optimizer_lr_backbone and backbone_group["params"]
    policy.eval()
    obs = observation()
    expected = policy.predict_action_chunk(obs)
    assert expected.shape == (B, CHUNK, 2)
    policy.save_pretrained(tmp_path)
    loaded = ACTVlaDinoPolicy.from_pretrained(tmp_path)
    assert loaded.config.backbone == config.backbone
    torch.testing.assert_close(loaded.predict_action_chunk(obs), expected, rtol=0, atol=0)
    assert loaded.select_action(obs).shape == (B, 2)


def test_diffusion_swap_replaces_only_the_image_backbone(tmp_path):
    config = diffusion_config()
    policy = DiffusionVlaDinoPolicy(config)
    encoder = policy.diffusion.rgb_encoder[0]
    assert isinstance(encoder.backbone, TowerFeatureMap)
    assert encoder.pool._in_c == encoder.backbone.out_channels and (encoder.pool._in_h, encoder.pool._in_w) == (4, 4)
    policy.train()
    loss, _ = policy(training_batch(steps=8, obs_steps=2))
    loss.backward()
    assert torch.isfinite(loss)
    main_group, backbone_group = policy.get_optim_params()
    backbone_ids = {id(p) for p in encoder.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in backbone_group["params"]} == backbone_ids and backbone_group["lr"] == config.optimizer_lr_backbone
    policy.eval()
    batch = {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]) for k, v in observation().items()}
    noise = torch.randn(B, 8, 2)
    torch.manual_seed(1)  # DDPM steps draw fresh noise too
    expected = policy.predict_action_chunk(batch, noise=noise)
    assert expected.shape == (B, N_ACTION_STEPS, 2)  # Diffusion keeps n_action_steps from the current step
    policy.save_pretrained(tmp_path)
    loaded = DiffusionVlaDinoPolicy.from_pretrained(tmp_path)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)
    loaded.reset()
    assert loaded.select_action(observation()).shape == (B, 2)
