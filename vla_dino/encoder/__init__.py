"""The DINOv2 encoder: named sizes, checkpoint loading (hub, folder, official file), preprocessing."""

from vla_dino.encoder.dino_encoder import DinoEncoder, DinoTokens
from vla_dino.encoder.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessor
from vla_dino.encoder.sizes import HUB_IDS, config_for_size, size_names

__all__ = [
    "DinoEncoder",
    "DinoTokens",
    "ImagePreprocessor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HUB_IDS",
    "config_for_size",
    "size_names",
]
