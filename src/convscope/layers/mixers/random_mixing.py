"""Random token mixing (RandFormer, MetaFormer Baselines, arXiv 2210.13452)."""
from __future__ import annotations

import torch
from torch import nn


class RandomMixing(nn.Module):
    """Mix the N = H*W tokens with a frozen random matrix softmax(U(0,1)^{N x N}), row-stochastic.

    The matrix is a non-trainable parameter (so it is saved with the weights, as in the official code), and
    fixes the number of tokens: the input must have exactly `num_tokens` positions.
    """

    channels_last = False

    def __init__(self, dim: int | None = None, num_tokens: int = 196) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1),
                                          requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H * W != self.num_tokens:
            raise ValueError(f"RandomMixing was built for {self.num_tokens} tokens; got a {H}x{W} map "
                             f"({H * W} tokens)")
        # (B, C, N) @ (N, N)^T: token m receives sum_n R[m, n] x_n
        return (x.reshape(B, C, H * W) @ self.random_matrix.t()).reshape(B, C, H, W)
