"""Fused DINOv2 + SigLIP adapter with OpenVLA's semantics (DINOv3 / SigLIP 2 towers too): camera images
(+ proprio) → tokens."""

from vla_dino.adapter.backbone import FusedBackbone
from vla_dino.adapter.config import TowerConfig, VisionTokenizerConfig
from vla_dino.adapter.inference import channels_last_patch_embeddings, fuse_qkv
from vla_dino.adapter.pooling import AttentionPool, Pool2x2
from vla_dino.adapter.projector import build_projector
from vla_dino.adapter.tokenizer import VisionTokenizer, VisionTokens
from vla_dino.adapter.towers import (
    SIGLIP_SIZES,
    DinoTower,
    Dinov3Tower,
    Siglip2Tower,
    SiglipTower,
    Tower,
    load_dino_tower,
    load_siglip_tower,
    tower_from_architecture,
)

__all__ = [
    "TowerConfig",
    "VisionTokenizerConfig",
    "VisionTokenizer",
    "VisionTokens",
    "FusedBackbone",
    "Tower",
    "DinoTower",
    "SiglipTower",
    "Dinov3Tower",
    "Siglip2Tower",
    "load_dino_tower",
    "load_siglip_tower",
    "tower_from_architecture",
    "SIGLIP_SIZES",
    "build_projector",
    "Pool2x2",
    "AttentionPool",
    "fuse_qkv",
    "channels_last_patch_embeddings",
]
