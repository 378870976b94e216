"""`vla_dino`: our vision tokenizer (DINOv2, optionally fused with SigLIP) + an action-chunking head.

Command line (draccus): `--policy.type=vla_dino --policy.vision.dino=<size | hub id | folder | .pth>
--policy.vision.train_mode=frozen|full|last_n --policy.head=mlp|act_decoder --policy.chunk_size=…`.

Normalisation: the tokenizer resizes and normalises each tower itself (ImageNet mean/std for
DINOv2, 0.5/0.5 for SigLIP) from images in [0, 1], so LeRobot's processors leave VISUAL features
un-normalised (IDENTITY). STATE, ENV and ACTION use MEAN_STD as LeRobot's ACT does.

Feature mapping (`validate_features`): every VISUAL input becomes a camera of the tokenizer
(`observation.image` → "image", `observation.images.<name>` → "<name>"), and the low-dimensional
inputs (`observation.state`, then `observation.environment_state`) are concatenated into the
tokenizer's proprio token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGE, OBS_IMAGES, OBS_STATE

from vla_dino.adapter import VisionTokenizerConfig
from vla_dino.adapter.config import Projector

Head = Literal["mlp", "act_decoder"]
HEADS: tuple[str, ...] = get_args(Head)


def camera_name(key: str) -> str:
    """LeRobot image key → tokenizer camera name."""
    if key.startswith(OBS_IMAGES + "."):
        return key[len(OBS_IMAGES) + 1 :]
    if key == OBS_IMAGE:
        return "image"
    raise ValueError(f"image feature {key!r}: expected {OBS_IMAGE!r} or '{OBS_IMAGES}.<camera>'")


@dataclass
class PolicyVisionConfig(VisionTokenizerConfig):
    """`VisionTokenizerConfig` with the vla_dino policy's defaults: the released DINOv2 ViT-S/14 with
    registers, frozen, second-to-last block, 256 tokens of width 512 per 224² camera.

    Two defaults differ from the adapter's: `dino` is a released model (the adapter's is a
    random-init ViT-L), so the policy trains on pretrained features with no tower flag; `projector`
    is the policy's own default since its first version (the adapter keeps OpenVLA's fused MLP)."""

    # First tower. The default, facebook/dinov2-with-registers-small (ViT-S/14 + 4 registers), is
    # downloaded from the Hugging Face hub on first use. Also: a size name (random init: vits14 …,
    # *_reg, tiny), another hub id, a local transformers folder (DINOv2, or DINOv3 ViT by its
    # model_type), a vla_dino pretrain export folder, or an official DINOv2 .pth/.safetensors file.
    dino: str = "facebook/dinov2-with-registers-small"
    # Token projector: mlp, fused-gelu-mlp (OpenVLA's 3-layer), linear, or none (keep fused width).
    projector: Projector = "mlp"


def default_vision() -> PolicyVisionConfig:
    return PolicyVisionConfig()


@PreTrainedConfig.register_subclass("vla_dino")
@dataclass
class VlaDinoConfig(PreTrainedConfig):
    """Policy over `VisionTokenizer` tokens.

    Heads (`head`):
    - "mlp": OpenVLA-OFT-style L1 regression. Each token is projected to `mlp_token_dim`, the
      sequence is flattened and an MLP-ResNet (`mlp_hidden_dim`, `mlp_num_blocks` residual blocks)
      regresses the whole chunk (chunk_size × action_dim) at once.
    - "act_decoder": ACT-style transformer. `chunk_size` learned action queries attend (through
      `n_decoder_layers` decoder layers) to the image, camera and proprio tokens, which first get
      learned position + token-type (camera / proprio) embeddings and `n_encoder_layers` of
      self-attention. No VAE: the loss is L1 as for the MLP head.

    Loss (both heads), with m the action-padding mask from the dataset:
        L1 = Σ_{b,t,d} m_{b,t} · |â_{b,t,d} − a_{b,t,d}| / (D · Σ_{b,t} m_{b,t})

    Optimisation: AdamW at `optimizer_lr` for the head and tokenizer head (projector, pooling,
    embeddings), `optimizer_lr_encoder` for trainable tower parameters; linear warm-up then cosine
    decay (LeRobot's `CosineDecayWithWarmupSchedulerConfig`, rescaled to short runs).
    """

    # Observation steps the policy reads: only the current one (1).
    n_obs_steps: int = 1
    # Actions predicted per forward pass.
    chunk_size: int = 16
    # Actions of each predicted chunk executed before the model runs again (1..chunk_size).
    n_action_steps: int = 8

    # VISUAL stays un-normalised (the tokenizer normalises per tower); STATE/ENV/ACTION: mean/std.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    vision: PolicyVisionConfig = field(default_factory=default_vision)  # towers, layer, projector; cameras from the data

    # Action head: act_decoder (ACT-style transformer over the tokens) or mlp (L1-regression MLP).
    head: Head = "act_decoder"
    # act_decoder: transformer width.
    dim_model: int = 512
    # act_decoder: attention heads (dim_model must be divisible by it).
    n_heads: int = 8
    # act_decoder: feed-forward width.
    dim_feedforward: int = 2048
    # act_decoder: self-attention layers over the image / proprio tokens.
    n_encoder_layers: int = 1
    # act_decoder: decoder layers of the action queries.
    n_decoder_layers: int = 4
    # act_decoder: dropout.
    dropout: float = 0.1
    # mlp: width each token is projected to before flattening.
    mlp_token_dim: int = 32
    # mlp: hidden width of the MLP-ResNet.
    mlp_hidden_dim: int = 1024
    # mlp: residual blocks of the MLP-ResNet.
    mlp_num_blocks: int = 2

    # AdamW lr of the head, projector and embeddings.
    optimizer_lr: float = 1e-4
    # AdamW lr of trainable tower parameters (vision.train_mode=full or last_n).
    optimizer_lr_encoder: float = 1e-5
    optimizer_betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    optimizer_weight_decay: float = 1e-4  # AdamW weight decay (all groups)
    optimizer_grad_clip_norm: float = 10.0  # gradient-norm clip of LeRobot's training loop
    # Linear warm-up steps of the cosine schedule.
    scheduler_warmup_steps: int = 500
    # Steps of the cosine decay (LeRobot rescales it to shorter runs).
    scheduler_decay_steps: int = 100_000
    # Final lr of the cosine decay.
    scheduler_decay_lr: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"policy.head={self.head!r}; expected one of {list(HEADS)}")
        if self.n_obs_steps != 1:
            raise ValueError(f"policy.n_obs_steps={self.n_obs_steps}; vla_dino uses the current observation only (1)")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"policy.n_action_steps={self.n_action_steps} must be between 1 and policy.chunk_size={self.chunk_size}"
            )
        if self.head == "act_decoder" and self.dim_model % self.n_heads:
            raise ValueError(f"policy.dim_model={self.dim_model} is not divisible by policy.n_heads={self.n_heads}")

    # ---------------------------------------------------------------- LeRobot hooks
    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
        )

    @property
    def low_dim_keys(self) -> list[str]:
        """Inputs concatenated (in this order) into the proprio token."""
        features = self.input_features or {}
        keys = [OBS_STATE] if self.robot_state_feature is not None else []
        return keys + [OBS_ENV_STATE] if OBS_ENV_STATE in features else keys

    @property
    def camera_names(self) -> list[str]:
        """The tokenizer's cameras: one per VISUAL input, in input order."""
        return [camera_name(key) for key in self.image_features]

    @property
    def proprio_dim(self) -> int:
        """Width of the proprio token's input: the `low_dim_keys` concatenated."""
        return sum(self.input_features[key].shape[0] for key in self.low_dim_keys)

    def validate_features(self) -> None:
        """Map LeRobot's inputs onto the tokenizer: cameras from VISUAL keys, proprio from STATE/ENV.

        `vision` becomes a new config with the inputs' `camera_names` and `proprio_dim` (the fields
        a saved checkpoint records them in); every field the user set is carried over unchanged."""
        if not self.image_features:
            raise ValueError(
                f"vla_dino needs at least one image input ('{OBS_IMAGE}' or '{OBS_IMAGES}.<camera>'); "
                f"got input features {sorted(self.input_features or {})}"
            )
        if self.action_feature is None:
            raise ValueError(f"vla_dino needs an 'action' output feature; got {sorted(self.output_features or {})}")
        for key, feature in (self.input_features or {}).items():
            if feature.type not in (FeatureType.VISUAL, FeatureType.STATE, FeatureType.ENV):
                raise ValueError(f"input feature {key!r} of type {feature.type}: vla_dino reads images, state and env state")
            if feature.type is FeatureType.STATE and key != OBS_STATE:
                raise ValueError(f"state feature {key!r}: vla_dino reads the state from {OBS_STATE!r}")
        self.vision = replace(self.vision, camera_names=self.camera_names, proprio_dim=self.proprio_dim)
