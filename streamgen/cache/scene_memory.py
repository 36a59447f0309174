"""Echo-Forcing's scene recall frames: what a scene leaves behind when it ends.

While a scene (the span between two prompt switches) plays, a :class:`SceneRecorder` keeps the clean, un-roped K/V
of its first ``frames`` latent frames and the running sum of its clean-pass queries, per layer. When the scene ends,
:func:`compress_scene` folds the recorded frames into ONE spatially ordered memory frame per layer (token i of the
memory frame is a blend of token i of the recorded frames), which a later switch can put back into the cache.

Buffers are allocated once per stream; recording is an in-place copy.
"""

from __future__ import annotations

import torch


def compress_scene(
    k: torch.Tensor, v: torch.Tensor, mean_query: torch.Tensor, base_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One memory frame from candidate frames ``k``, ``v`` [layers, B, F, tokens, H, D] and the scene's mean query
    [layers, B, H, D]:

        K* = w0 K[0] + (1 - w0) sum_f softmax_f(s[f, i]) K[f]     (same weights for V)

    with s[f, i] = k[f, i] . q_mean averaged over heads (one weight per frame and spatial token, shared by the
    heads) and w0 = ``base_weight``: the scene's first frame dominates, the frames its queries attend to most fill
    in. Computed in float32; returns [layers, B, tokens, H, D] each in the input dtype.
    """
    kf, vf, q = k.float(), v.float(), mean_query.float()
    scores = torch.einsum("lbfthd,lbhd->lbft", kf, q) / q.shape[-2]
    weights = scores.softmax(dim=2)[..., None, None]
    blend_k, blend_v = (kf * weights).sum(dim=2), (vf * weights).sum(dim=2)
    memory_k = base_weight * kf[:, :, 0] + (1 - base_weight) * blend_k
    memory_v = base_weight * vf[:, :, 0] + (1 - base_weight) * blend_v
    return memory_k.to(k.dtype), memory_v.to(v.dtype)


class SceneRecorder:
    """The current scene's first ``frames`` latent frames (K/V of every layer) and its mean clean-pass query.

    ``stride`` picks the candidate frames the memory is compressed from: 0, stride, 2 * stride, ... below the number
    recorded (12 frames with stride 4: frames 0, 4, 8).
    """

    def __init__(self, frames: int, stride: int, *, num_layers: int, batch_size: int, tokens_per_frame: int,
                 num_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str):
        self.stride = stride
        shape = (num_layers, batch_size, frames, tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.query_sum = torch.zeros(num_layers, batch_size, num_heads, head_dim, dtype=torch.float32, device=device)
        self.query_tokens = torch.zeros(num_layers, dtype=torch.float32, device=device)
        self.recorded = 0  # frames of the current scene recorded so far

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.query_sum.nbytes + self.query_tokens.nbytes

    def reset(self) -> None:
        """A new scene starts (old buffers are simply overwritten)."""
        self.recorded = 0
        self.query_sum.zero_()
        self.query_tokens.zero_()

    def observe_query(self, layer: int, q: torch.Tensor) -> None:
        """Add a clean pass's queries [B, n, H, D] of ``layer`` to the scene's mean."""
        self.query_sum[layer] += q.float().sum(dim=1)
        self.query_tokens[layer] += q.shape[1]

    def record(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the clean K/V [layers, B, f * tokens, H, D] of the scene's next f frames while there is room."""
        layers, batch, _, heads, dim = k.shape
        tokens = self.k.shape[3]
        frames = k.shape[2] // tokens
        room = min(frames, self.k.shape[2] - self.recorded)
        if room <= 0:
            return
        span = slice(self.recorded, self.recorded + room)
        self.k[:, :, span] = k.view(layers, batch, frames, tokens, heads, dim)[:, :, :room]
        self.v[:, :, span] = v.view(layers, batch, frames, tokens, heads, dim)[:, :, :room]
        self.recorded += room

    def mean_query(self) -> torch.Tensor:
        """[layers, B, H, D] mean of every clean-pass query of the scene so far."""
        return self.query_sum / self.query_tokens.clamp(min=1)[:, None, None, None]

    def candidates(self) -> list[int]:
        """Indices (into the scene's first frames) of the frames the memory is compressed from."""
        return list(range(0, self.recorded, self.stride))

    def compress(self, base_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The scene's memory frame [layers, B, tokens, H, D] (K, V); needs at least one recorded frame."""
        if self.recorded == 0:
            raise RuntimeError("a scene with no recorded frames has no memory frame")
        picked = self.candidates()
        return compress_scene(self.k[:, :, picked], self.v[:, :, picked], self.mean_query(), base_weight)
