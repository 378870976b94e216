"""Action-chunking heads over a token sequence (B, N, D) → actions (B, chunk_size, action_dim)."""

from __future__ import annotations

import torch
from torch import nn


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x))) — OpenVLA-OFT's MLPResNet block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class L1RegressionMLPHead(nn.Module):
    """OpenVLA-OFT-style L1 regression head, regressing the whole chunk from the tokens at once.

    tokens (B, N, D) → per-token Linear(D, token_dim) → flatten (B, N·token_dim) → LayerNorm →
    Linear → ReLU → `num_blocks` × MLPResNetBlock → LayerNorm → Linear(hidden, chunk·action_dim).
    The per-token compression keeps where each patch is (no mean pooling) at a small width.
    """

    def __init__(
        self, token_dim: int, num_tokens: int, action_dim: int, chunk_size: int,
        mlp_token_dim: int, hidden_dim: int, num_blocks: int,
    ) -> None:
        super().__init__()
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.compress = nn.Linear(token_dim, mlp_token_dim)
        flat = num_tokens * mlp_token_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(flat),
            nn.Linear(flat, hidden_dim),
            nn.ReLU(),
            *[MLPResNetBlock(hidden_dim) for _ in range(num_blocks)],
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, chunk_size * action_dim),
        )

    def forward(self, tokens: torch.Tensor, token_type: torch.Tensor) -> torch.Tensor:
        flat = self.compress(tokens).flatten(1)
        return self.mlp(flat).view(tokens.shape[0], self.chunk_size, self.action_dim)


class ActionQueryDecoderHead(nn.Module):
    """ACT-style transformer head: `chunk_size` learned action queries cross-attend to the tokens.

    memory = Linear(D, d)(tokens) + position_embedding[n] + type_embedding[token_type[n]]
    (type = camera index, or the proprio token), refined by `n_encoder_layers` self-attention
    layers; the queries go through `n_decoder_layers` (self-attention, cross-attention to the
    memory, FFN; pre-norm); a Linear(d, action_dim) reads one action per query.
    """

    def __init__(
        self, token_dim: int, num_tokens: int, num_token_types: int, action_dim: int, chunk_size: int,
        dim_model: int, n_heads: int, dim_feedforward: int, n_encoder_layers: int, n_decoder_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.input_proj = nn.Linear(token_dim, dim_model)
        self.position_embedding = nn.Embedding(num_tokens, dim_model)
        self.type_embedding = nn.Embedding(num_token_types, dim_model)
        self.queries = nn.Embedding(chunk_size, dim_model)
        layer_kwargs = dict(
            d_model=dim_model, nhead=n_heads, dim_feedforward=dim_feedforward, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = (
            nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_kwargs), n_encoder_layers, enable_nested_tensor=False)
            if n_encoder_layers
            else None
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer_kwargs), n_decoder_layers, norm=nn.LayerNorm(dim_model)
        )
        self.action_out = nn.Linear(dim_model, action_dim)
        for embedding in (self.position_embedding, self.type_embedding, self.queries):
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, token_type: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        memory = self.input_proj(tokens) + self.position_embedding(positions) + self.type_embedding(token_type)
        if self.encoder is not None:
            memory = self.encoder(memory)
        queries = self.queries.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.action_out(self.decoder(queries, memory))


def masked_l1(predicted: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """Σ m·|â − a| / (D·Σ m) over (B, T, D), m = 1 where the action is real (not episode padding)."""
    error = (predicted - target).abs()
    if is_pad is None:
        return error.mean()
    valid = (~is_pad).unsqueeze(-1).to(error.dtype)
    return (error * valid).sum() / (valid.sum() * error.shape[-1]).clamp_min(1)
