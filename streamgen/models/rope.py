"""Wan 3-axis rotary position embedding, computed for arbitrary (even fractional) frame positions.

diffusers precomputes a table for positions 0..1023 and slices it; a streaming cache needs the temporal index of
each cached frame to come from a position policy (absolute, block-relative, tri-region ...), so angles are built
on demand from positions instead. Angles are computed in float64 whatever the model dtype (long streams put large
indices through the rotation; bf16 angles break relative positions), then rotated in float32.

The frequency split and pair layout match ``diffusers.models.transformers.transformer_wan.WanRotaryPosEmbed``:
head dim D = t + h + w with h = w = 2 * (D // 6); consecutive channel pairs (2i, 2i+1) rotate together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    # [dim / 2], float64: theta^(-2i/dim)
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


@dataclass
class Rotary:
    """cos / sin of the rotation angle per token and channel pair: [N_tokens, D / 2] float32 each."""

    cos: torch.Tensor
    sin: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [B, N_tokens, H, D] channel pairs; returns the input dtype."""
        cos = self.cos[None, :, None, :]
        sin = self.sin[None, :, None, :]
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return out.type_as(x)


class WanRope:
    """Builds :class:`Rotary` tables for frames at given temporal positions on an (h, w) token grid."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"attention_head_dim must be even for rotary embedding, got {head_dim}")
        self.h_dim = self.w_dim = 2 * (head_dim // 6)
        self.t_dim = head_dim - self.h_dim - self.w_dim
        self.inv_t = _inverse_frequencies(self.t_dim, theta)
        self.inv_h = _inverse_frequencies(self.h_dim, theta)
        self.inv_w = _inverse_frequencies(self.w_dim, theta)
        self._spatial: dict[tuple[int, int], torch.Tensor] = {}

    def _spatial_angles(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[grid_h * grid_w, (h_dim + w_dim) / 2] float64, row-major like Wan's patch flattening."""
        key = (grid_h, grid_w)
        if key not in self._spatial:
            ah = torch.arange(grid_h, dtype=torch.float64)[:, None] * self.inv_h  # [gh, h/2]
            aw = torch.arange(grid_w, dtype=torch.float64)[:, None] * self.inv_w  # [gw, w/2]
            grid = torch.cat(
                (ah[:, None, :].expand(grid_h, grid_w, -1), aw[None, :, :].expand(grid_h, grid_w, -1)), dim=-1
            )
            self._spatial[key] = grid.reshape(grid_h * grid_w, -1)
        return self._spatial[key]

    def rotary(self, frame_positions: torch.Tensor, grid_h: int, grid_w: int, device: torch.device) -> Rotary:
        """Tables for len(frame_positions) frames laid out one after another (frame-major token order)."""
        pos = frame_positions.to(torch.float64).cpu()
        temporal = pos[:, None] * self.inv_t  # [F, t/2]
        spatial = self._spatial_angles(grid_h, grid_w)  # [S, (h+w)/2]
        tokens = spatial.shape[0]
        angles = torch.cat(
            (temporal[:, None, :].expand(-1, tokens, -1), spatial[None].expand(len(pos), -1, -1)), dim=-1
        ).reshape(len(pos) * tokens, -1)
        return Rotary(angles.cos().float().to(device), angles.sin().float().to(device))
