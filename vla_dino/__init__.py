"""vla_dino: DINOv2 encoders for vision-language-action pipelines."""

from vla_dino.encoder import DinoEncoder, DinoTokens, ImagePreprocessor

__version__ = "0.1.0"
__all__ = ["DinoEncoder", "DinoTokens", "ImagePreprocessor", "__version__"]
