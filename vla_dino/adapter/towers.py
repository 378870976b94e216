"""Vision towers behind one small interface: DINOv2 (`DinoEncoder`) and SigLIP (transformers'
`SiglipVisionModel`). Each tower knows its normalisation, patch size, blocks and how to return
the patch tokens of one block (prefix tokens dropped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, SiglipVisionConfig, SiglipVisionModel

from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Random-init SigLIP sizes: the released so400m/14 vision config at 224², and test sizes matching
# DinoEncoder's "tiny" (hidden 32) and "small-test" (hidden 64).
SIGLIP_SIZES: dict[str, dict[str, Any]] = {
    "so400m": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        patch_size=14, image_size=224, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ),
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=14, image_size=56, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ),
    "small-test": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        patch_size=14, image_size=56, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ),
}
_SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")


class Tower(nn.Module):
    """A ViT tower. Subclasses set `mean`, `std` and implement the abstract members."""

    kind: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def patch_size(self) -> int:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def native_grid(self) -> tuple[int, int]:
        """The grid its position embeddings were made for."""
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    def patch_tokens(self, pixels: torch.Tensor, layer: int, final_norm: bool) -> torch.Tensor:
        """Normalised pixels (B, 3, H, W) → patch tokens (B, h·w, hidden) of block `layer`."""
        raise NotImplementedError

    def save_pretrained(self, directory: Path) -> None:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def layer_index(self, layer: int) -> int:
        index = layer + self.num_layers if layer < 0 else layer
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {layer} out of range for the {self.num_layers}-block {self.kind} tower")
        return index

    def grid_for(self, image_size: int) -> tuple[int, int]:
        if image_size % self.patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of the {self.kind} tower's patch size {self.patch_size}"
            )
        side = image_size // self.patch_size
        return side, side

    def used_modules(self, layer: int, final_norm: bool, last_n: int | None = None) -> list[nn.Module]:
        """Modules the features of `layer` depend on (all of them, or only the last `last_n` blocks)."""
        index = self.layer_index(layer)
        blocks = list(self.blocks[: index + 1])
        if last_n is None:
            modules = [self.embeddings, *blocks]
        else:
            if last_n > len(blocks):
                raise ValueError(
                    f"trainable_blocks={last_n} but the {self.kind} tower runs only {len(blocks)} blocks up to layer {layer}"
                )
            modules = blocks[len(blocks) - last_n :]
        return modules + ([self.final_norm] if final_norm else [])

    @property
    def embeddings(self) -> nn.Module:
        raise NotImplementedError

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters inside `used_modules` that plain forward passes never touch."""
        return []


def architecture_from_json(path: Path) -> Any:
    """A transformers config saved as JSON (`config.to_json_file`) → the config object."""
    if not path.is_file():
        raise FileNotFoundError(f"tower architecture file not found: {path}")
    fields = json.loads(path.read_text())
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path}: no 'model_type'; expected a transformers config saved as JSON")
    return AutoConfig.for_model(model_type, **fields)


class DinoTower(Tower):
    """DINOv2 (with or without registers); prefix = CLS + registers, dropped."""

    kind = "DINOv2"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, encoder: DinoEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def load(cls, source: str) -> "DinoTower":
        """A DinoEncoder size name (random init), hub id, transformers folder, official checkpoint
        file, or a `vla_dino.export` output folder (its `hf/` transformers folder is used).
        A transformers `*.json` config file gives the architecture only (random init), for callers
        that load the weights themselves (e.g. a policy checkpoint's model.safetensors)."""
        path = Path(source)
        if path.suffix == ".json":
            return cls(DinoEncoder(architecture_from_json(path)))
        return cls(DinoEncoder.from_source(source)).float()

    patch_size = property(lambda self: self.encoder.patch_size)
    hidden_size = property(lambda self: self.encoder.hidden_size)
    blocks = property(lambda self: self.encoder.blocks)
    final_norm = property(lambda self: self.encoder.model.layernorm)
    embeddings = property(lambda self: self.encoder.model.embeddings)

    @property
    def native_grid(self) -> tuple[int, int]:
        side = self.encoder.config.image_size // self.patch_size
        return side, side

    def unused_parameters(self) -> list[nn.Parameter]:
        return [self.encoder.model.embeddings.mask_token]  # only used with iBOT masking

    def patch_tokens(self, pixels: torch.Tensor, layer: int, final_norm: bool) -> torch.Tensor:
        return self.encoder.get_intermediate_layers(pixels, layer, norm=final_norm)[0].patch_tokens

    def save_pretrained(self, directory: Path) -> None:
        self.encoder.save_pretrained(directory)


class SiglipTower(Tower):
    """SigLIP vision tower; no prefix tokens; the attention-pooling head is never run.

    Runs the embeddings and blocks up to `layer` only, so layer -2 equals transformers'
    `hidden_states[-2]` without computing the last block.
    """

    kind = "SigLIP"
    mean, std = SIGLIP_MEAN, SIGLIP_STD

    def __init__(self, model: SiglipVisionModel) -> None:
        super().__init__()
        self.model = model
        # transformers < 5.x nests the modules under `.vision_model`; 5.x flattens them
        self._inner = getattr(model, "vision_model", model)

    @classmethod
    def load(cls, source: str) -> "SiglipTower":
        """A size name ("so400m", "tiny": random init), a local folder or a hub id; a transformers
        `*.json` config file gives the architecture only (random init, see `DinoTower.load`)."""
        if source in SIGLIP_SIZES:
            return cls(SiglipVisionModel(SiglipVisionConfig(**SIGLIP_SIZES[source])))
        path = Path(source)
        if path.suffix == ".json":
            return cls(SiglipVisionModel(architecture_from_json(path)))
        if path.is_dir() or source.startswith((".", "/", "~")):
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"SigLIP folder {path} not found or has no config.json")
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type not in _SIGLIP_MODEL_TYPES:
            raise ValueError(
                f"siglip={source!r}: model_type {model_type!r} is not SigLIP (expected {list(_SIGLIP_MODEL_TYPES)})"
            )
        return cls(SiglipVisionModel.from_pretrained(source)).float()

    patch_size = property(lambda self: int(self.model.config.patch_size))
    hidden_size = property(lambda self: int(self.model.config.hidden_size))
    blocks = property(lambda self: self._inner.encoder.layers)
    final_norm = property(lambda self: self._inner.post_layernorm)
    embeddings = property(lambda self: self._inner.embeddings)

    @property
    def native_grid(self) -> tuple[int, int]:
        side = int(self.model.config.image_size) // self.patch_size
        return side, side

    def patch_tokens(self, pixels: torch.Tensor, layer: int, final_norm: bool) -> torch.Tensor:
        index = self.layer_index(layer)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        hidden = self.embeddings(pixels, interpolate_pos_encoding=grid != self.native_grid)
        for block in self.blocks[: index + 1]:
            hidden = block(hidden, None)
        return self.final_norm(hidden) if final_norm else hidden

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)
