"""`VisionTokenizer`: camera images (+ proprio) → one token sequence for a policy head.

Per camera: FusedBackbone patch features → projector → optional token reduction → + learned
camera embedding. Cameras are concatenated on the sequence axis (all cameras go through the
towers as one batch), then the proprio token `Linear(proprio_dim, d)(proprio)` if configured.
The DINO-only path (`siglip=None`) gives the same interface with C = C_dino.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vla_dino.adapter.backbone import FusedBackbone
from vla_dino.adapter.config import VisionTokenizerConfig
from vla_dino.adapter.pooling import build_token_reduction
from vla_dino.adapter.projector import build_projector, projector_out_dim

CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
DINO_DIR, SIGLIP_DIR = "dino", "siglip"


@dataclass
class VisionTokens:
    tokens: torch.Tensor  # (B, N, out_dim): cameras in config order, then the proprio token if any
    token_type: torch.Tensor  # (N,) long: camera index 0..C-1 for image tokens, C for the proprio token


class VisionTokenizer(nn.Module):
    """`out_dim`: token width; `num_tokens`: tokens per observation (all cameras + proprio);
    `tokens_per_camera`: h·w patches, or fewer after token reduction."""

    def __init__(self, config: VisionTokenizerConfig, architecture: Path | None = None) -> None:
        """`architecture`: build the towers from saved architectures (see `FusedBackbone.from_config`)."""
        super().__init__()
        self.config = config
        self.backbone = FusedBackbone.from_config(config, architecture)
        self.out_dim: int = projector_out_dim(config.projector, self.backbone.hidden_size, config.out_dim)
        self.projector = build_projector(config.projector, self.backbone.hidden_size, self.out_dim)
        self.reduction = build_token_reduction(
            config.token_reduction, self.out_dim, self.backbone.grid_size, config.num_pooled_tokens,
            config.attention_pool_heads,
        )
        self.camera_embedding = nn.Parameter(torch.randn(len(config.camera_names), self.out_dim) * 0.02)
        self.proprio = nn.Linear(config.proprio_dim, self.out_dim) if config.proprio_dim else None
        self.tokens_per_camera: int = self.reduction.num_tokens if self.reduction else self.backbone.num_patches
        self.num_tokens: int = self.tokens_per_camera * len(config.camera_names) + (1 if self.proprio else 0)
        token_type = torch.arange(len(config.camera_names)).repeat_interleave(self.tokens_per_camera)
        if self.proprio is not None:
            token_type = torch.cat([token_type, torch.tensor([len(config.camera_names)])])
        self.register_buffer("token_type", token_type, persistent=False)

    # ---------------------------------------------------------------- forward
    def forward(self, images: dict[str, torch.Tensor], proprio: torch.Tensor | None = None) -> VisionTokens:
        """images: camera name → (B, 3, H, W) float in [0, 1] or uint8; proprio: (B, proprio_dim)."""
        inputs = self._stack_cameras(images)
        cameras = len(self.config.camera_names)
        batch = inputs[0].shape[0] // cameras
        tokens = self.projector(self.backbone.features(inputs))
        if self.reduction is not None:
            tokens = self.reduction(tokens)
        # (C·B, K, d) → (B, C·K, d), each camera's block shifted by its embedding
        tokens = tokens.reshape(cameras, batch, -1, self.out_dim) + self.camera_embedding[:, None, None, :]
        tokens = tokens.permute(1, 0, 2, 3).reshape(batch, -1, self.out_dim)
        if self.proprio is not None:
            tokens = torch.cat([tokens, self.proprio(self._check_proprio(proprio, batch, tokens.device))[:, None]], 1)
        elif proprio is not None:
            raise ValueError("proprio given but VisionTokenizerConfig.proprio_dim=0; set proprio_dim to use it")
        return VisionTokens(tokens=tokens, token_type=self.token_type)

    def _stack_cameras(self, images: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each camera preprocessed per tower (own size allowed), then batched: per tower (C·B, 3, S, S)."""
        expected = self.config.camera_names
        if not isinstance(images, dict):
            raise TypeError(f"images must be a dict camera name → (B, 3, H, W) tensor; got {type(images).__name__}")
        missing, extra = [n for n in expected if n not in images], sorted(set(images) - set(expected))
        if missing or extra:
            raise KeyError(
                f"camera names {sorted(images)} do not match camera_names {expected} (missing {missing}, extra {extra})"
            )
        batch_sizes = {name: images[name].shape[0] for name in expected}
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"cameras have different batch sizes {batch_sizes}")
        device = self.camera_embedding.device
        per_camera = []
        for name in expected:
            try:
                per_camera.append(self.backbone.preprocess(images[name].to(device)))
            except (ValueError, TypeError) as error:
                raise type(error)(f"camera {name!r}: {error}") from error
        return [torch.cat(tower_inputs) for tower_inputs in zip(*per_camera)]

    def _check_proprio(self, proprio: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        expected = (batch, self.config.proprio_dim)
        if proprio is None:
            raise ValueError(
                f"VisionTokenizerConfig.proprio_dim={self.config.proprio_dim} but no proprio given; expected {expected}"
            )
        if tuple(proprio.shape) != expected:
            raise ValueError(f"proprio shape {tuple(proprio.shape)}; expected {expected}")
        return proprio.to(device=device, dtype=self.proprio.weight.dtype)

    # ---------------------------------------------------------------- training
    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"towers": trainable tower parameters (empty when frozen), "head": everything else}."""
        towers = [p for p in self.backbone.parameters() if p.requires_grad]
        tower_ids = {id(p) for p in self.backbone.parameters()}
        head = [p for p in self.parameters() if id(p) not in tower_ids and p.requires_grad]
        return {"towers": towers, "head": head}

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """`adapter_config.json`, the towers as transformers folders (`dino/`, `siglip/`) and the
        projector / reduction / embeddings in `head.safetensors`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.backbone.dino.save_pretrained(directory / DINO_DIR)
        if self.backbone.siglip is not None:
            self.backbone.siglip.save_pretrained(directory / SIGLIP_DIR)
        head = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        save_file(head, str(directory / HEAD_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "VisionTokenizer":
        """Load a `save_pretrained` folder; `overrides` replace config fields (e.g. train_mode)."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found; expected a VisionTokenizer.save_pretrained folder")
        values = json.loads(config_path.read_text())
        if not (directory / DINO_DIR / "config.json").is_file():
            raise FileNotFoundError(f"{directory} has no {DINO_DIR}/ tower folder")
        if {"dino", "siglip"} & set(overrides):
            raise ValueError("from_pretrained loads the saved towers; build VisionTokenizerConfig yourself to swap towers")
        values.update(overrides, dino=str(directory / DINO_DIR))
        if values.get("siglip") is not None:
            if not (directory / SIGLIP_DIR / "config.json").is_file():
                raise FileNotFoundError(
                    f"{directory} has siglip={values['siglip']!r} in its config but no {SIGLIP_DIR}/ tower folder"
                )
            values["siglip"] = str(directory / SIGLIP_DIR)
        model = cls(VisionTokenizerConfig.from_dict(values))
        missing, unexpected = model.load_state_dict(load_file(str(directory / HEAD_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{directory / HEAD_FILE}: missing keys {missing}, unexpected keys {unexpected}")
        return model

