"""The DINOv2 loss terms: DINO (CLS), iBOT (masked patches), KoLeo, Gram anchoring."""

from vla_dino.ssl.losses.dino import cross_entropy, dino_loss
from vla_dino.ssl.losses.gram import gram_loss
from vla_dino.ssl.losses.ibot import ibot_loss, masked_patch_weights
from vla_dino.ssl.losses.koleo import koleo_loss
from vla_dino.ssl.losses.prototypes import prototype_cross_entropy

__all__ = ["cross_entropy", "dino_loss", "gram_loss", "ibot_loss", "koleo_loss", "masked_patch_weights", "prototype_cross_entropy"]
