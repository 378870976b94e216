"""`FusedBackbone`: DINO (+ SigLIP) patch features with OpenVLA's semantics.

pixels in [0, 1] (or uint8) → per-tower resize + normalisation → raw output of block `layer`
of each tower → prefix tokens dropped → grids checked equal → channel concatenation.
OpenVLA's ViT-L/14 reg + SigLIP so400m/14 at 224² gives (B, 256, 1024 + 1152 = 2176).
The towers may also be DINOv3 ViT and SigLIP 2, chosen from each checkpoint's model_type (see
`vla_dino.adapter.towers`); the same semantics apply (e.g. DINOv3 ViT-L/16 + SigLIP 2 so400m/16 at
256² share a 16×16 grid).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from vla_dino.adapter.config import TowerConfig
from vla_dino.adapter.towers import Tower, load_dino_tower, load_siglip_tower, tower_from_architecture
from vla_dino.encoder import ImagePreprocessor

# Files of `save_architecture` / `from_config(architecture=…)`: each tower's transformers config.
ARCHITECTURE_FILES = {"dino": "dino.json", "siglip": "siglip.json"}


class FusedBackbone(nn.Module):
    """One or two towers sharing a patch grid; `forward(pixels_01) -> (B, h·w, sum of widths)`.

    `train_mode`: "frozen" (no_grad, requires_grad False, towers stay in eval mode), "full" or
    "last_n" (the last `trainable_blocks` blocks up to `layer` of each tower). Parameters the
    features never reach (blocks after `layer`, SigLIP's head and unused final norms) are always
    frozen, so optimisers and DDP only see parameters that get gradients.
    """

    def __init__(
        self,
        dino: Tower,
        siglip: Tower | None = None,
        image_size: int = 224,
        resize_mode: str = "resize",
        layer: int = -2,
        final_norm: bool = False,
        train_mode: str = "frozen",
        trainable_blocks: int = 0,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleList([dino] + ([siglip] if siglip is not None else []))
        self.image_size, self.layer, self.final_norm = image_size, layer, final_norm
        self.train_mode, self.dtype = train_mode, dtype
        grids = {tower.kind: tower.grid_for(image_size) for tower in self.towers}
        if len(set(grids.values())) > 1:
            sizes = ", ".join(f"{kind} patch {t.patch_size} → {grids[kind]}" for kind, t in zip(grids, self.towers))
            raise ValueError(f"tower patch grids differ at image_size {image_size} ({sizes}); the towers need one grid")
        self.grid_size: tuple[int, int] = grids[dino.kind]
        for tower in self.towers:
            tower.layer_index(layer)  # range check now rather than at the first forward
        # each tower gets its own normalisation; letterbox pads with the tower's mean (→ 0)
        self.preprocessors = [
            ImagePreprocessor(size=image_size, resize_mode=resize_mode, patch_size=t.patch_size, mean=t.mean, std=t.std)
            for t in self.towers
        ]
        self._set_trainable(train_mode, trainable_blocks)

    @classmethod
    def from_sources(cls, dino: str, siglip: str | None = None, **kwargs) -> "FusedBackbone":
        """Towers from their sources (see `TowerConfig.dino` / `.siglip`); the tower class
        follows each checkpoint's model_type (DINOv2 / DINOv3, SigLIP / SigLIP 2)."""
        return cls(load_dino_tower(dino), load_siglip_tower(siglip) if siglip is not None else None, **kwargs)

    @classmethod
    def from_config(cls, config: TowerConfig, architecture: Path | None = None) -> "FusedBackbone":
        """Towers of `config` loaded from its sources or, with `architecture` (a `save_architecture`
        folder), built from the saved architectures with random weights, for callers that load the
        weights themselves (a policy checkpoint's model.safetensors); `config.dino` / `.siglip` are
        then only read for whether there is a SigLIP tower."""
        options = dict(
            image_size=config.image_size,
            resize_mode=config.resize_mode,
            layer=config.layer,
            final_norm=config.final_norm,
            train_mode=config.train_mode,
            trainable_blocks=config.trainable_blocks,
            dtype=config.dtype,
        )
        if architecture is None:
            return cls.from_sources(config.dino, config.siglip, **options)
        siglip = None
        if config.siglip is not None:
            siglip = tower_from_architecture(architecture / ARCHITECTURE_FILES["siglip"], "siglip")
        return cls(tower_from_architecture(architecture / ARCHITECTURE_FILES["dino"], "dino"), siglip, **options)

    def save_architecture(self, directory: Path) -> None:
        """Each tower's transformers config as JSON (its model_type picks the tower class), which
        `from_config(config, architecture=directory)` rebuilds the towers from."""
        directory.mkdir(parents=True, exist_ok=True)
        for field, tower in zip(ARCHITECTURE_FILES, self.towers):
            tower.config.to_json_file(directory / ARCHITECTURE_FILES[field])

    @property
    def dino(self) -> Tower:
        return self.towers[0]

    @property
    def siglip(self) -> Tower | None:
        return self.towers[1] if len(self.towers) > 1 else None

    @property
    def hidden_size(self) -> int:
        return sum(tower.hidden_size for tower in self.towers)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    # ---------------------------------------------------------------- training modes
    def _set_trainable(self, train_mode: str, trainable_blocks: int) -> None:
        self.towers.requires_grad_(False)
        if train_mode == "frozen":
            return
        last_n = trainable_blocks if train_mode == "last_n" else None
        for tower in self.towers:
            for module in tower.used_modules(self.layer, self.final_norm, last_n):
                module.requires_grad_(True)
            for parameter in tower.unused_parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "FusedBackbone":
        super().train(mode)
        if self.train_mode == "frozen":
            self.towers.eval()  # frozen towers keep inference behaviour (dropout, drop-path off)
        return self

    # ---------------------------------------------------------------- forward
    def preprocess(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] or uint8 → one resized, normalised tensor per tower."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"images of shape {tuple(pixels.shape)}; expected (B, 3, H, W)")
        return [preprocess(pixels) for preprocess in self.preprocessors]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] or uint8 → (B, h·w, C_dino [+ C_siglip])."""
        return self.features(self.preprocess(pixels))

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Per-tower normalised pixels (from `preprocess`) → fused patch features."""
        if len(inputs) != len(self.towers):
            raise ValueError(f"{len(inputs)} inputs for {len(self.towers)} towers")
        grad = contextlib.nullcontext() if self.train_mode != "frozen" else torch.no_grad()
        with grad, self._autocast(inputs[0].device):
            features = [tower.patch_tokens(x, self.layer, self.final_norm) for tower, x in zip(self.towers, inputs)]
        counts = {f.shape[1] for f in features}
        if len(counts) > 1:
            raise RuntimeError(f"towers returned different token counts {[f.shape[1] for f in features]}")
        return torch.cat(features, dim=-1).float()

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype != "bfloat16":
            return contextlib.nullcontext()
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            warnings.warn("dtype='bfloat16' asked but this GPU has no bf16 support; towers run in float32", stacklevel=3)
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)


__all__ = ["FusedBackbone", "ARCHITECTURE_FILES"]
