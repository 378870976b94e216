"""`VlaDinoPolicy`: `VisionTokenizer` tokens → action chunk, with LeRobot's policy interface."""

# No `from __future__ import annotations`: LeRobot reads the `config` annotation of `__init__` as a class
# (`issubclass(cfg_cls, signature(policy_cls.__init__).parameters["config"].annotation)`).
from collections import deque
from pathlib import Path

import torch
from torch import Tensor

from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION

from vla_dino.adapter import VisionTokenizer
from vla_dino.adapter.backbone import FusedBackbone

from lerobot_policy_vla_dino.configuration_vla_dino import VlaDinoConfig, camera_name
from lerobot_policy_vla_dino.heads import ActionQueryDecoderHead, L1RegressionMLPHead, masked_l1
from lerobot_policy_vla_dino.saved_towers import SavedTowersMixin


class VlaDinoPolicy(SavedTowersMixin, PreTrainedPolicy):
    """Tokenizer (towers + projector + camera/proprio tokens) and an action-chunking head.

    `select_action` runs the model when its queue is empty and then serves the first
    `n_action_steps` actions of the predicted chunk one by one (call `reset()` on env reset).
    """

    config_class = VlaDinoConfig
    name = "vla_dino"
    tower_field = "vision"

    def __init__(self, config: VlaDinoConfig, tower_architecture: Path | None = None, **kwargs) -> None:
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.tokenizer = VisionTokenizer(config.vision, tower_architecture)
        action_dim = config.action_feature.shape[0]
        if config.head == "mlp":
            self.head = L1RegressionMLPHead(
                self.tokenizer.out_dim, self.tokenizer.num_tokens, action_dim, config.chunk_size,
                config.mlp_token_dim, config.mlp_hidden_dim, config.mlp_num_blocks,
            )
        else:
            self.head = ActionQueryDecoderHead(
                self.tokenizer.out_dim, self.tokenizer.num_tokens, len(config.camera_names) + 1, action_dim,
                config.chunk_size, config.dim_model, config.n_heads, config.dim_feedforward,
                config.n_encoder_layers, config.n_decoder_layers, config.dropout,
            )
        self.reset()

    def fused_backbone(self) -> FusedBackbone:
        return self.tokenizer.backbone

    def get_optim_params(self) -> list[dict]:
        """Head + tokenizer head at the optimizer's lr; trainable tower parameters at `optimizer_lr_encoder`."""
        groups = self.tokenizer.trainable_parameter_groups()
        head = groups["head"] + [p for p in self.head.parameters() if p.requires_grad]
        param_groups = [{"params": head}]
        if groups["towers"]:
            param_groups.append({"params": groups["towers"], "lr": self.config.optimizer_lr_encoder})
        return param_groups

    def reset(self) -> None:
        self._action_queue: deque[Tensor] = deque([], maxlen=self.config.n_action_steps)

    # ---------------------------------------------------------------- model
    def _predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Normalised observations → normalised action chunk (B, chunk_size, action_dim)."""
        images = {camera_name(key): batch[key] for key in self.config.image_features}
        low_dim = [batch[key] for key in self.config.low_dim_keys]
        proprio = torch.cat(low_dim, dim=-1) if low_dim else None
        out = self.tokenizer(images, proprio)
        return self.head(out.tokens, out.token_type)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Masked L1 loss of the chunk (see `VlaDinoConfig`)."""
        actions = self._predict(batch)
        loss = masked_l1(actions, batch[ACTION], batch.get("action_is_pad"))
        return loss, {"l1_loss": loss.item()}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor]) -> Tensor:
        self.eval()
        return self._predict(batch)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor]) -> Tensor:
        self.eval()  # the queue may be consumed while a training loop left the policy in train mode
        if not self._action_queue:
            actions = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._action_queue.extend(actions.transpose(0, 1))  # (n_action_steps, B, action_dim)
        return self._action_queue.popleft()
