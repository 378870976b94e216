"""Vision towers behind one small interface, chosen by the checkpoint's `model_type`:

| field    | model_type                                  | class          | prefix dropped   | mean / std        |
|----------|---------------------------------------------|----------------|------------------|-------------------|
| `dino`   | dinov2, dinov2_with_registers, official file | `DinoTower`    | CLS + registers  | ImageNet          |
| `dino`   | dinov3_vit                                  | `Dinov3Tower`  | CLS + registers  | ImageNet*         |
| `siglip` | siglip, siglip_vision_model                 | `SiglipTower`  | none             | 0.5 / 0.5         |
| `siglip` | siglip2, siglip2_vision_model (NaFlex)      | `Siglip2Tower` | none             | 0.5 / 0.5         |

(*) or the `image_mean` / `image_std` of the folder's `preprocessor_config.json` (DINOv3's
satellite models use their own). Each tower knows its normalisation, patch size, blocks and how to
return the raw output of one block; the pooling heads (SigLIP's attention pool) never run.
The fixed-resolution SigLIP 2 checkpoints (`google/siglip2-*-patch16-224` …) are model_type
"siglip" (SigLIP's architecture) and load as `SiglipTower`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    DINOv3ViTModel,
    Siglip2VisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder
from vla_dino.encoder.dino_encoder import layer_index

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
    def config(self) -> Any:
        """The transformers config (the architecture a policy checkpoint keeps in `towers/`)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def layer_index(self, layer: int) -> int:
        return layer_index(layer, self.num_layers, f"the {self.num_layers}-block {self.kind} tower")

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

    @classmethod
    def from_architecture(cls, config: Any) -> "Tower":
        """Random-init tower of a transformers config (`Tower.config`), for callers that load the
        weights themselves (e.g. a policy checkpoint's model.safetensors)."""
        raise NotImplementedError


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
        file, or a `vla_dino.pretrain.export` output folder (its `hf/` transformers folder is used)."""
        return cls(DinoEncoder.from_source(source)).float()

    @classmethod
    def from_architecture(cls, config: Any) -> "DinoTower":
        return cls(DinoEncoder(config))

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

    @property
    def config(self) -> Any:
        return self.encoder.config


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
        """A size name ("so400m", "tiny": random init), a local folder or a hub id."""
        if source in SIGLIP_SIZES:
            return cls.from_architecture(SiglipVisionConfig(**SIGLIP_SIZES[source]))
        path = Path(source)
        if path.is_dir() or source.startswith((".", "/", "~")):
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"SigLIP folder {path} not found or has no config.json")
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type not in _SIGLIP_MODEL_TYPES:
            raise ValueError(
                f"siglip={source!r}: model_type {model_type!r} is not SigLIP (expected {list(_SIGLIP_MODEL_TYPES)})"
            )
        return cls(SiglipVisionModel.from_pretrained(source)).float()

    @classmethod
    def from_architecture(cls, config: Any) -> "SiglipTower":
        return cls(SiglipVisionModel(config))

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

    @property
    def config(self) -> Any:
        return self.model.config


def _mean_std_from_folder(source: str, default: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[tuple, tuple]:
    """`image_mean` / `image_std` of a local folder's `preprocessor_config.json`, else `default`."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return default
    fields = json.loads(path.read_text())
    mean, std = fields.get("image_mean"), fields.get("image_std")
    if mean is None or std is None:
        return default
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: image_mean / image_std must have 3 values; got {mean} / {std}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _check_local_folder(source: str, what: str) -> None:
    path = Path(source)
    if path.is_dir() or source.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what} folder {path} not found or has no config.json")


class Dinov3Tower(Tower):
    """DINOv3 ViT (transformers' `DINOv3ViTModel`, model_type "dinov3_vit"); prefix = CLS + registers.

    Positions are RoPE, computed for each input grid, so any multiple of the patch size (16 for the
    released models) works without interpolation. transformers jitters / rescales the RoPE
    coordinates in train mode (DINOv3's pretraining augmentation); a tower always uses the exact
    coordinates, so features in `train_mode="full"` match inference. Not usable for pretraining
    with our SSL model (see `DinoEncoder.from_pretrained`).
    """

    kind = "DINOv3"

    def __init__(self, model: DINOv3ViTModel, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)
        # transformers 5.2x nests the blocks under `.model.layer`; earlier 5.x had `.layer`
        self._blocks = model.layer if hasattr(model, "layer") else model.model.layer

    @classmethod
    def load(cls, source: str) -> "Dinov3Tower":
        """A local transformers folder or hub id of a DINOv3 ViT."""
        _check_local_folder(source, "DINOv3")
        mean, std = _mean_std_from_folder(source, (IMAGENET_MEAN, IMAGENET_STD))
        return cls(DINOv3ViTModel.from_pretrained(source), mean, std).float()

    @classmethod
    def from_architecture(cls, config: Any) -> "Dinov3Tower":
        return cls(DINOv3ViTModel(config))

    patch_size = property(lambda self: int(self.model.config.patch_size))
    hidden_size = property(lambda self: int(self.model.config.hidden_size))
    blocks = property(lambda self: self._blocks)
    final_norm = property(lambda self: self.model.norm)
    embeddings = property(lambda self: self.model.embeddings)
    config = property(lambda self: self.model.config)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(self.model.config.num_register_tokens)

    @property
    def native_grid(self) -> tuple[int, int]:
        side = int(self.model.config.image_size) // self.patch_size
        return side, side

    def unused_parameters(self) -> list[nn.Parameter]:
        return [self.model.embeddings.mask_token]  # only used with iBOT masking

    def train(self, mode: bool = True) -> "Dinov3Tower":
        super().train(mode)
        self.model.rope_embeddings.eval()  # exact RoPE coordinates (see the class docstring)
        return self

    def patch_tokens(self, pixels: torch.Tensor, layer: int, final_norm: bool) -> torch.Tensor:
        index = self.layer_index(layer)
        hidden = self.embeddings(pixels.to(self.model.embeddings.patch_embeddings.weight.dtype))
        rope = self.model.rope_embeddings(pixels)
        for block in self.blocks[: index + 1]:
            hidden = block(hidden, position_embeddings=rope)
        if final_norm:
            hidden = self.final_norm(hidden)
        return hidden[:, self.num_prefix_tokens :]

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)


class Siglip2Tower(Tower):
    """SigLIP 2 NaFlex vision tower (transformers' `Siglip2VisionModel`, model_type "siglip2").

    NaFlex takes patchified pixels (B, h·w, 3·P·P) plus each image's (h, w); the learned position
    grid is resized to (h, w) (bilinear, antialiased). We feed the square `image_size` of the
    adapter, so every image has the same grid, no padding and no attention mask. Patches are
    flattened as transformers' `Siglip2ImageProcessor` does (row-major patches, (P, P, C) inside).
    """

    kind = "SigLIP2"
    mean, std = SIGLIP_MEAN, SIGLIP_STD

    def __init__(self, model: Siglip2VisionModel) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def load(cls, source: str) -> "Siglip2Tower":
        _check_local_folder(source, "SigLIP 2")
        return cls(Siglip2VisionModel.from_pretrained(source)).float()

    @classmethod
    def from_architecture(cls, config: Any) -> "Siglip2Tower":
        return cls(Siglip2VisionModel(config))

    patch_size = property(lambda self: int(self.model.config.patch_size))
    hidden_size = property(lambda self: int(self.model.config.hidden_size))
    blocks = property(lambda self: self.model.encoder.layers)
    final_norm = property(lambda self: self.model.post_layernorm)
    embeddings = property(lambda self: self.model.embeddings)
    config = property(lambda self: self.model.config)

    @property
    def native_grid(self) -> tuple[int, int]:
        side = int(round(int(self.model.config.num_patches) ** 0.5))
        return side, side

    def patchify(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → patches (B, h·w, P·P·C) and spatial shapes (B, 2) = (h, w)."""
        batch, channels, height, width = pixels.shape
        p = self.patch_size
        h, w = height // p, width // p
        patches = pixels.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, -1)
        shapes = torch.tensor([[h, w]], dtype=torch.long, device=pixels.device).expand(batch, 2)
        return patches, shapes

    def patch_tokens(self, pixels: torch.Tensor, layer: int, final_norm: bool) -> torch.Tensor:
        index = self.layer_index(layer)
        patches, shapes = self.patchify(pixels)
        hidden = self.embeddings(patches, shapes)
        for block in self.blocks[: index + 1]:
            hidden = block(hidden, None)  # no padding: every patch attends to every patch
        return self.final_norm(hidden) if final_norm else hidden

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)


def _model_type(source: str, field: str) -> str | None:
    """The model_type of a transformers folder or hub id; None for an official DINOv2 file."""
    path = Path(source)
    if path.suffix in (".pth", ".pt", ".safetensors") and not path.is_dir():
        return None  # an official DINOv2 checkpoint file
    _check_local_folder(source, field)
    return AutoConfig.from_pretrained(source).model_type


def _tower_class(field: str, source: str, model_type: str | None) -> type[Tower]:
    """The tower class of a `dino=` / `siglip=` checkpoint's model_type (None: an official DINOv2 file)."""
    classes = _DINO_CLASSES if field == "dino" else _SIGLIP_CLASSES
    if model_type in classes:
        return classes[model_type]
    what = "a DINO tower" if field == "dino" else "SigLIP"
    expected = [name for name in classes if name is not None]
    raise ValueError(f"{field}={source!r}: model_type {model_type!r} is not {what}; expected one of {expected}")


def load_dino_tower(source: str) -> Tower:
    """`dino=`: a DinoEncoder size name (random init), an official DINOv2 file, a `vla_dino.pretrain.export`
    folder, or a transformers folder / hub id of DINOv2 or DINOv3 (by model_type)."""
    from vla_dino.encoder.sizes import size_names

    if source in size_names():
        return DinoTower.load(source)
    export = Path(source) / "hf"
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file() and (export / "config.json").is_file():
        return DinoTower.load(source)  # our export folder: DinoEncoder reads its hf/ folder
    return _tower_class("dino", source, _model_type(source, "DINO")).load(source)


def load_siglip_tower(source: str) -> Tower:
    """`siglip=`: a SigLIP size name (random init) or a transformers folder / hub id of SigLIP
    (vision or full model) or SigLIP 2 NaFlex, chosen by model_type."""
    if source in SIGLIP_SIZES:
        return SiglipTower.load(source)
    return _tower_class("siglip", source, _model_type(source, "SigLIP")).load(source)


def tower_from_architecture(path: Path, field: str) -> Tower:
    """A random-init `field` ("dino" / "siglip") tower from a transformers config saved as JSON
    (`Tower.config.to_json_file`); its model_type picks the class as in `load_dino_tower`."""
    if not path.is_file():
        raise FileNotFoundError(f"tower architecture file not found: {path}")
    values = json.loads(path.read_text())
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path}: no 'model_type'; expected a transformers config saved as JSON")
    return _tower_class(field, str(path), model_type).from_architecture(AutoConfig.for_model(model_type, **values))


# model_type → tower class (None: an official DINOv2 file, which has no config)
_DINO_CLASSES: dict[str | None, type[Tower]] = {
    None: DinoTower, "dinov2": DinoTower, "dinov2_with_registers": DinoTower, "dinov3_vit": Dinov3Tower,
}
_SIGLIP_CLASSES: dict[str | None, type[Tower]] = {
    "siglip": SiglipTower, "siglip_vision_model": SiglipTower, "siglip2": Siglip2Tower, "siglip2_vision_model": Siglip2Tower,
}
