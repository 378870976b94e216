"""`DinoEncoder`: a DINOv2 backbone (transformers' Dinov2 / Dinov2WithRegisters) that exposes
CLS, register and patch tokens from the last layer or any intermediate layer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import AutoConfig, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from vla_dino.encoder import official
from vla_dino.encoder.attention import attention_layout
from vla_dino.encoder.preprocessing import ImagePreprocessor
from vla_dino.encoder.sizes import config_for_size, size_names

_OFFICIAL_SUFFIXES = (".pth", ".pt", ".safetensors")


def layer_index(layer: int, num_layers: int, what: str) -> int:
    """The 0-based block index of `layer` (negative counts from the end: -1 last, -2 OpenVLA's);
    `what` names the model in the range error (e.g. "the 12-block DINOv2 tower")."""
    index = layer + num_layers if layer < 0 else layer
    if not 0 <= index < num_layers:
        raise IndexError(
            f"layer {layer} out of range for {what}; `layer` takes 0..{num_layers - 1} or -{num_layers}..-1 (from the end)"
        )
    return index


@dataclass
class DinoTokens:
    """Tokens of one layer. `patch_tokens` are in raster order over `grid_size` = (h, w)."""

    cls_token: torch.Tensor  # (B, D)
    register_tokens: torch.Tensor  # (B, R, D); R = 0 without registers
    patch_tokens: torch.Tensor  # (B, h·w, D)
    grid_size: tuple[int, int]

    def patch_map(self) -> torch.Tensor:
        """Patch tokens as a feature map (B, D, h, w)."""
        h, w = self.grid_size
        return self.patch_tokens.transpose(1, 2).reshape(self.patch_tokens.shape[0], -1, h, w)


class DinoEncoder(nn.Module):
    """DINOv2 ViT on transformers' implementation.

    - `forward(pixel_values)`: last layer, final LayerNorm applied (the released features).
    - `get_intermediate_layers(pixel_values, layers)`: raw block outputs (no final norm unless
      `norm=True`); layer -2 is the second-to-last block, which OpenVLA uses.
    - `bool_masked_pos` (B, h·w): masked patch embeddings are replaced by the mask token before
      the position embedding is added (iBOT).

    Inputs must be normalised pixels with sides that are multiples of the patch size; use
    `self.preprocessor` (or `encode`) for raw images. Position embeddings are interpolated as
    transformers does (bicubic to the new grid; with antialias for register models). The official
    non-register code adds a +0.1 offset to the scale factor, which transformers does not: outputs
    are identical at the checkpoint's native grid (37×37 for released models) and differ slightly
    elsewhere. We follow transformers so that hub models and our exports agree exactly.
    """

    def __init__(self, config: Dinov2Config | Dinov2WithRegistersConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        if model is None:
            model_cls = Dinov2WithRegistersModel if isinstance(config, Dinov2WithRegistersConfig) else Dinov2Model
            model = model_cls(config)
        self.model = model
        self.config = model.config
        self.preprocessor = ImagePreprocessor(patch_size=self.patch_size)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_size(cls, name: str, **config_overrides: Any) -> "DinoEncoder":
        """Random-init encoder of a named size (`vits14`, `vitb14_reg`, `tiny`, …)."""
        return cls(config_for_size(name, **config_overrides))

    @classmethod
    def from_source(cls, source: str | Path, **kwargs: Any) -> "DinoEncoder":
        """A size name gives a random-init encoder (`from_size`); anything else is loaded
        (`from_pretrained`). `kwargs` go to whichever is used."""
        if str(source) in size_names():
            return cls.from_size(str(source), **kwargs)
        return cls.from_pretrained(source, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> "DinoEncoder":
        """Load from a hub id, a local transformers folder (ours included), a `vla_dino.pretrain.export`
        output folder (its `hf/` folder), or an official checkpoint file (`.pth`/`.pt` read with
        `weights_only=True`, or `.safetensors`): a released hub file, or a file written by the
        official training code (`eval/<iter>/teacher_checkpoint.pth`, the checkpointer's
        `model_*.pth`; chunked blocks, `teacher`/`backbone.` prefixes; heads are ignored), detected
        from its keys (see `vla_dino.encoder.official`).

        For official files, `kwargs` override inferred config fields (e.g. `num_attention_heads`
        for non-standard widths); otherwise they go to transformers' `from_pretrained`.
        """
        path = Path(source)
        if path.suffix in _OFFICIAL_SUFFIXES and not path.is_dir():
            return cls._from_official_file(path, **kwargs)
        if path.is_dir() and not (path / "config.json").is_file() and (path / "hf" / "config.json").is_file():
            path = source = path / "hf"
        if path.is_dir() or str(source).startswith((".", "/", "~")):
            if not path.is_dir():
                raise FileNotFoundError(f"encoder folder not found: {path}")
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} has no config.json; expected a transformers DINOv2 folder")
        config = AutoConfig.from_pretrained(str(source))
        model_types = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
        if config.model_type == "dinov3_vit":
            raise ValueError(
                f"{source}: model_type 'dinov3_vit' is DINOv3, which DinoEncoder does not load, so it cannot be a "
                "pretraining backbone (model.init): DinoEncoder, the SSL model and the exports are built on DINOv2's "
                "learned absolute position embeddings (interpolated per crop size) and its official key layout, "
                "while DINOv3 uses RoPE. DINOv3 works as a tower of the fused adapter and the policies "
                "(VisionTokenizerConfig.dino / --policy.vision.dino / --policy.backbone.dino)"
            )
        if config.model_type not in model_types:
            raise ValueError(f"{source}: model_type {config.model_type!r} is not DINOv2 (expected {sorted(model_types)})")
        model = model_types[config.model_type].from_pretrained(str(source), **kwargs)
        return cls(model.config, model=model)

    @classmethod
    def _from_official_file(cls, path: Path, **overrides: Any) -> "DinoEncoder":
        state = official.read_state_dict(path)
        config = official.config_from_official(state, **overrides)
        encoder = cls(config)
        target = encoder.model.state_dict()
        converted = official.official_to_transformers(state, set(target), source=str(path))
        for key, value in converted.items():
            if value.shape != target[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
        encoder.model.load_state_dict(converted, strict=True)
        return encoder

    def save_pretrained(self, directory: str | Path) -> Path:
        """A transformers folder (safetensors) that `AutoModel.from_pretrained` loads unchanged."""
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        return directory

    def save_official(self, path: str | Path, block_chunks: int = 0, wrap: str | None = None) -> Path:
        """The backbone in the official DINOv2 layout.

        Default: the hub layout of the released `*_pretrain.pth` files, which
        `torch.hub.load("facebookresearch/dinov2", "dinov2_vits14", pretrained=False)` (or the
        matching `_reg` model) loads with `load_state_dict(torch.load(path))`, strict.
        For the official training code: `block_chunks` = the run's `student.block_chunks`
        (4 in its `configs/train/vit{l,g}14.yaml`) writes `blocks.<chunk>.<i>.…`; `wrap="model"`
        writes `{"model": state}` as `student.pretrained_weights` expects (it loads with
        `strict=False`, so a wrong layout would be skipped silently there); `wrap="teacher"` writes
        `{"teacher": {"backbone.…"}}` like `eval/<iter>/teacher_checkpoint.pth`, which
        `dinov2/eval/*` read via `--pretrained-weights`. `from_pretrained` reads all of these back.
        """
        path = Path(path)
        if wrap not in (None, "model", "teacher"):
            raise ValueError(f"wrap={wrap!r}; expected None, 'model' or 'teacher'")
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in official.transformers_to_official(self.model.state_dict(), block_chunks).items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            if wrap is not None:
                raise ValueError(f"{path}: safetensors holds a flat dict; wrap={wrap!r} needs a .pth file")
            from safetensors.torch import save_file

            save_file(state, str(path))
        elif wrap == "teacher":
            torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)
        elif wrap == "model":
            torch.save({"model": state}, path)
        else:
            torch.save(state, path)
        return path

    # ---------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    @property
    def num_register_tokens(self) -> int:
        return int(getattr(self.config, "num_register_tokens", 0))

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    # ---------------------------------------------------------------- forward
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> DinoTokens:
        """Last-layer tokens after the final LayerNorm."""
        grid = self._check_inputs(pixel_values, bool_masked_pos)
        hidden = self.model(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
        return self._split(hidden, grid)

    def get_intermediate_layers(
        self,
        pixel_values: torch.Tensor,
        layers: int | Sequence[int] = -1,
        norm: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> list[DinoTokens]:
        """Tokens of the given blocks (0-based; negative counts from the end: -1 last, -2 OpenVLA's).

        Only the blocks up to the deepest requested one are run. `norm=True` applies the final
        LayerNorm to each (DINOv2's `get_intermediate_layers(norm=True)`).
        """
        grid = self._check_inputs(pixel_values, bool_masked_pos)
        wanted = [layers] if isinstance(layers, int) else list(layers)
        indices = [layer_index(i, self.num_layers, f"a {self.num_layers}-layer encoder") for i in wanted]
        hidden = self.model.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        captured: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks[: max(indices) + 1]):
            hidden = block(hidden)
            if index in indices:
                captured[index] = self.model.layernorm(hidden) if norm else hidden
        return [self._split(captured[i], grid) for i in indices]

    def forward_packed(
        self, crop_sets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None
    ) -> list[DinoTokens]:
        """`[self(p, bool_masked_pos=m) for p, m in zip(crop_sets, masks)]` with every block run once over all
        sets: DINOv2's packed student forward (`forward_features_list`), e.g. global crops with iBOT masks and
        local crops of another size in one pass. Same weights and modules, so checkpoints are unchanged.

        Each set is embedded on its own (patch grid, position interpolation and masks differ by size); the
        tokens of all sets are then laid end to end as one (T, D) sequence. Per block, LayerNorms, q/k/v, output
        projection, MLP and layer-scale (the bulk of the FLOPs) act on the whole sequence in one call each; only
        attention runs per set, with SDPA on that set's dense (N, heads, S, d) view, so no mask and no cross-set
        FLOPs. That is exact up to float rounding (every op is per token except attention, which never mixes
        sets) and plain torch on every device. Not chosen: a jagged nested tensor through the blocks (the
        attention's head `view` raises on it in torch 2.11, so it would need this same hand-written block, and
        each set is dense anyway) and flex attention over one flat sequence with a document mask (fast only
        compiled; eager it materialises the T×T scores). Drop-path stays per sample: the block's own `drop_path`
        on each set's (N, S, D) view. The blocks' submodules are called directly, bypassing hooks on the blocks
        themselves, so FSDP2 (`fully_shard` per block) is refused: use it with DDP or one process.
        """
        masks = [None] * len(crop_sets) if masks is None else list(masks)
        if len(masks) != len(crop_sets):
            raise ValueError(f"{len(masks)} masks for {len(crop_sets)} crop sets")
        if any(hasattr(block, "unshard") for block in self.blocks):  # an FSDP2 `fully_shard` module
            raise RuntimeError("forward_packed bypasses the per-block FSDP2 hooks; call forward per crop set under FSDP")
        grids = [self._check_inputs(p, m) for p, m in zip(crop_sets, masks)]
        embedded = [self.model.embeddings(p, bool_masked_pos=m) for p, m in zip(crop_sets, masks)]
        shapes = [(e.shape[0], e.shape[1]) for e in embedded]  # (crops, tokens per crop) of each set
        hidden = torch.cat([e.flatten(0, 1) for e in embedded])  # (T, D)
        for block in self.blocks:
            hidden = self._packed_block(block, hidden, shapes)
        hidden = self.model.layernorm(hidden)
        parts = hidden.split([n * s for n, s in shapes])
        return [self._split(part.view(n, s, -1), grid) for part, (n, s), grid in zip(parts, shapes, grids)]

    @staticmethod
    def _packed_block(block: nn.Module, hidden: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """One transformers Dinov2(WithRegisters)Layer over the packed (T, D) tokens of `shapes`' sets."""
        sizes = [n * s for n, s in shapes]

        def drop_path(x: torch.Tensor) -> torch.Tensor:  # per sample, as in the block (identity when inactive)
            if not (block.drop_path.training and getattr(block.drop_path, "drop_prob", 0.0) > 0):
                return x
            return torch.cat([block.drop_path(p.view(n, s, -1)).flatten(0, 1) for p, (n, s) in zip(x.split(sizes), shapes)])

        attn = block.attention
        layout = attention_layout(attn)
        if layout is not None:  # transformers >= 5.2x: the block's attention holds q/k/v/o
            inner, output = attn, getattr(attn, layout.out)
        else:  # 5.1x (e.g. 5.17): a wrapper of Dinov2SelfAttention (q/k/v) + Dinov2SelfOutput (output Linear)
            inner, output = getattr(attn, "attention", attn), lambda x: attn.output(x, None)
            layout = attention_layout(inner)
        if layout is None:
            raise TypeError(f"forward_packed: {type(inner).__module__}.{type(inner).__name__} is not a Dinov2 attention "
                            "layout vla_dino.encoder.attention knows (transformers 5.1x or 5.2x)")
        project = [getattr(inner, name) for name in (layout.q, layout.k, layout.v)]
        head_dim, scale, dropout = (getattr(inner, name) for name in (layout.head_dim, layout.scale, layout.dropout))
        normed = block.norm1(hidden)
        q, k, v = (linear(normed) for linear in project)
        dropout = dropout if attn.training else 0.0
        outputs = []
        for qi, ki, vi, (n, s) in zip(q.split(sizes), k.split(sizes), v.split(sizes), shapes):
            qi, ki, vi = (t.view(n, s, -1, head_dim).transpose(1, 2) for t in (qi, ki, vi))
            out = nn.functional.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout, scale=scale)
            outputs.append(out.transpose(1, 2).reshape(n * s, -1))
        hidden = drop_path(block.layer_scale1(output(torch.cat(outputs)))) + hidden
        return drop_path(block.layer_scale2(block.mlp(block.norm2(hidden)))) + hidden

    @torch.no_grad()
    def encode(self, images: Any, layer: int | None = None) -> DinoTokens:
        """Raw images (numpy HWC uint8, PIL, tensors; single or batch) → tokens, in eval mode."""
        parameter = next(self.parameters())
        pixels = self.preprocessor(images).to(parameter.device, parameter.dtype)
        if layer is None:
            return self(pixels)
        return self.get_intermediate_layers(pixels, layer)[0]

    # ---------------------------------------------------------------- helpers
    def _check_inputs(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None) -> tuple[int, int]:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values shape {tuple(pixel_values.shape)}; expected (B, {self.config.num_channels}, H, W)"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values dtype {pixel_values.dtype}; expected normalised floats (use encoder.preprocessor)")
        height, width = pixel_values.shape[-2:]
        patch = self.patch_size
        if height < patch or width < patch:
            raise ValueError(f"input of {height}×{width} px is smaller than one {patch}×{patch} patch")
        if height % patch or width % patch:
            raise ValueError(
                f"input of {height}×{width} px is not a multiple of the patch size {patch}; "
                "resize or crop first (see ImagePreprocessor.resize_mode)"
            )
        grid = (height // patch, width // patch)
        if bool_masked_pos is not None:
            expected = (pixel_values.shape[0], grid[0] * grid[1])
            if bool_masked_pos.dtype != torch.bool or tuple(bool_masked_pos.shape) != expected:
                raise ValueError(
                    f"bool_masked_pos {bool_masked_pos.dtype} {tuple(bool_masked_pos.shape)}; expected bool {expected}"
                )
        return grid

    def _split(self, hidden: torch.Tensor, grid: tuple[int, int]) -> DinoTokens:
        prefix = 1 + self.num_register_tokens
        return DinoTokens(
            cls_token=hidden[:, 0],
            register_tokens=hidden[:, 1:prefix],
            patch_tokens=hidden[:, prefix:],
            grid_size=grid,
        )

    def extra_repr(self) -> str:
        return json.dumps(
            dict(hidden=self.hidden_size, layers=self.num_layers, patch=self.patch_size, registers=self.num_register_tokens)
        )
