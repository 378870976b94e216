"""Fused DINOv2 + SigLIP adapter with OpenVLA's semantics: camera images (+ proprio) → tokens."""

from vla_dino.adapter.backbone import FusedBackbone
from vla_dino.adapter.config import VisionTokenizerConfig
from vla_dino.adapter.pooling import AttentionPool, Pool2x2
from vla_dino.adapter.projector import build_projector
from vla_dino.adapter.tokenizer import VisionTokenizer, VisionTokens
from vla_dino.adapter.towers import SIGLIP_SIZES, DinoTower, SiglipTower, Tower

__all__ = [
    "VisionTokenizerConfig",
    "VisionTokenizer",
    "VisionTokens",
    "FusedBackbone",
    "Tower",
    "DinoTower",
    "SiglipTower",
    "SIGLIP_SIZES",
    "build_projector",
    "Pool2x2",
    "AttentionPool",
]
