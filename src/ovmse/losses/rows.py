"""The valid transitions of an episode batch, gathered into rows of their own.

A batch of episodes is ``[B, T, ...]`` with padding after each episode's end (a trimmed 2s3z
batch still has about 40% padding rows). The CQL terms cost K = 100 (MACQL) or N·A (CFCQL)
mixer evaluations per row, so they run on the valid rows only: ``take_rows`` gives them the
shape ``[M, 1, ...]`` (M valid transitions as a batch of one-step episodes), so code written
for ``[B, T, ...]`` runs on them unchanged, and padding (which may hold anything, even NaN)
never enters the graph.

Examples:
    >>> import torch
    >>> mask = torch.tensor([[[1.0], [1.0], [0.0]], [[1.0], [0.0], [0.0]]])   # [B=2, T=3, 1]
    >>> x = torch.arange(6.0).view(2, 3, 1)
    >>> rows = valid_rows(mask)
    >>> take_rows(x, rows).flatten().tolist()                 # [M=3, 1, 1]
    [0.0, 1.0, 3.0]
    >>> put_rows(take_rows(x, rows), rows, (2, 3), fill=-1.0).flatten().tolist()
    [0.0, 1.0, -1.0, 3.0, -1.0, -1.0]
"""

from __future__ import annotations

import torch

__all__ = ["put_rows", "take_rows", "valid_rows"]


def valid_rows(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the valid transitions: ``mask [B, T, 1]`` (> 0 valid) -> int64 ``[M]``."""
    return (mask > 0).reshape(-1).nonzero().squeeze(-1)


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x [B, T, ...]`` -> ``[M, 1, ...]``, the rows of :func:`valid_rows` (gradient flows)."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, rows).unsqueeze(1)


def put_rows(x: torch.Tensor, rows: torch.Tensor, batch_shape: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`take_rows` for reporting: ``x [M, 1, ...]`` -> ``[B, T, ...]`` with
    ``fill`` on the rows that were left out."""
    B, T = batch_shape
    out = x.new_full((B * T, *x.shape[2:]), fill)
    out.index_copy_(0, rows, x.squeeze(1))
    return out.view(B, T, *x.shape[2:])
