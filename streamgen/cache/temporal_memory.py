"""Echo-Forcing's hierarchical temporal memory: what a long scene attends to between switches.

A scene's cache budget (``anchors`` + ``compressed`` + the evicting ``window`` of recent frames and the chunk being
denoised; 12 + 3 + 6 = Wan's 21 trained positions) first simply fills with the scene's frames in order. Once it is
full, every chunk sees, in slot order:

- **anchors**: the scene's first ``anchors`` frames, rolled through one chunk-sized block per chunk in a ping-pong
  order (forward 0..11, then backwards 11..0, ...), so the scene's identity stays in view without the same frames
  sitting at the same positions for ever;
- **compressed history**: the ``compressed`` x tokens_per_frame tokens of the last ``history_frames`` frames (less
  the ``exclude_recent`` newest, which the window holds) that the scene's queries would attend to most, by
  :func:`phase_scores`, with each token picked at most ``max_reuse`` times; chosen per layer (shared by its heads)
  at the chunk's first denoising pass, and laid into the slots in time order (a token takes its slot's position,
  as in the reference implementation);
- the **window** (recent frames + the current chunk), as in any rolling cache.

Keys stay un-roped in the cache; the scene-relative position policy gives every slot its rank, so all indices stay
inside the trained range. Everything is preallocated per stream (a ring of ``history_frames`` frames and per-token
reuse counts); the anchors are read from the scene's first frames that the switch strategy records anyway
(``scene-memory``; :meth:`~streamgen.cache.mechanisms.SwitchStrategy.scene_frames_kv`), a need checked at load.

The preset names it ``memory: hierarchical``, with these dataclass fields as ``memory_options``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_cache import _token_index
from .mechanisms import BetweenSwitchMemory, register_memory


def ping_pong_block(chunk: int, chunk_frames: int, anchor_frames: int, scene_frames: int) -> list[int]:
    """The anchor block inserted at scene-local ``chunk``: ``chunk_frames`` of the scene's first ``anchor_frames``
    frames, walking forward through them, then backward, and so on. ``scene_frames`` is the scene's whole budget;
    the walk is aligned so that the blocks of the fill phase are the plain frames 0, 1, 2, ..."""
    start = chunk * chunk_frames - (scene_frames - anchor_frames)
    sweep, offset = divmod(start, anchor_frames)
    if sweep % 2 == 0:
        return list(range(offset, offset + chunk_frames))
    right = anchor_frames - offset
    return list(range(right - 1, right - chunk_frames - 1, -1))


def anchor_frames_at(chunk: int, chunk_frames: int, anchor_frames: int, scene_frames: int) -> list[int]:
    """Scene-local frames in the anchor slots (oldest slot first) at scene-local ``chunk`` once the scene's budget is
    full: the blocks of the last anchor_frames / chunk_frames chunks."""
    blocks = anchor_frames // chunk_frames
    return [f for c in range(chunk - blocks + 1, chunk + 1)
            for f in ping_pong_block(c, chunk_frames, anchor_frames, scene_frames)]


def _pairs(x: torch.Tensor) -> torch.Tensor:
    """[..., D] real -> [..., D/2] complex: RoPE rotates consecutive channel pairs (2i, 2i+1)."""
    return torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())


def phase_scores(keys: torch.Tensor, distances: torch.Tensor, mean_query: torch.Tensor, mean_query_abs: torch.Tensor,
                 temporal_frequencies: torch.Tensor, offsets: tuple[int, ...], gate: torch.Tensor) -> torch.Tensor:
    """Echo-Forcing's drift-gated phase score of un-roped ``keys`` [B, N, H, D]: how strongly the scene's mean
    query would attend to each key from ``distances`` [N] frames (plus each of ``offsets``) ahead.

    With q~ the scene's mean query as complex channel pairs [B, H, D/2], per pair m:
    amp * cos(dt * w_m + arg(q~ conj k)) with amp = |q~||k| (w_m: the pair's temporal RoPE frequency, 0 for the
    spatial pairs, i.e. the same spatial position), plus ``gate`` [B] * (E|q| - |q~|) |k|, which compensates the
    amplitude a mean of rotating queries loses when the scene has drifted; summed over pairs, averaged over heads
    and offsets. Returns [B, N] float32."""
    k = _pairs(keys)  # [B, N, H, P]
    q = mean_query[:, None]  # [B, 1, H, P]
    amplitude = q.abs() * k.abs()
    phase = torch.angle(q * k.conj())
    frequencies = torch.zeros(k.shape[-1], dtype=torch.float32, device=keys.device)
    frequencies[: len(temporal_frequencies)] = temporal_frequencies.to(frequencies)
    dt = distances.float()[:, None] + torch.tensor(offsets, dtype=torch.float32, device=keys.device)  # [N, O]
    angles = dt[None, :, None, :, None] * frequencies + phase[:, :, :, None, :]  # [B, N, H, O, P]
    aligned = (amplitude[:, :, :, None, :] * torch.cos(angles)).sum(-1).mean(dim=(2, 3))  # [B, N]
    compensation = ((mean_query_abs[:, None] - q.abs()) * k.abs()).sum(-1).mean(-1)  # [B, N]
    return aligned + gate[:, None] * compensation


def drift_gate(chunk_query: torch.Tensor, mean_query: torch.Tensor, strength: float) -> torch.Tensor:
    """exp(-strength * (1 - cos(q_chunk, q~))) [B]: near 1 while the chunk's mean query still looks like the scene's
    start, smaller as it drifts (complex [B, H, P] inputs, compared as one real vector each)."""
    a, b = torch.view_as_real(chunk_query).flatten(1), torch.view_as_real(mean_query).flatten(1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-6).clamp(-1, 1)
    return torch.exp(-strength * (1 - cos))


@register_memory("hierarchical")
@dataclass
class HierarchicalMemory(BetweenSwitchMemory):
    """Echo-Forcing's between-switch memory (see the module docstring)."""

    anchor_region: str = "anchors"
    compressed_region: str = "compressed"
    window_region: str = "window"
    history_frames: int = 21  # candidate ring for the compressed history
    exclude_recent: int = 3  # newest frames of the ring never compressed (the window holds them)
    offsets: tuple[int, ...] = (1, 2, 4, 8, 16)
    max_reuse: int = 8
    drift_strength: float = 3.0

    def __post_init__(self):
        self.offsets = tuple(self.offsets)  # YAML gives a list
        if self.history_frames <= self.exclude_recent or self.exclude_recent < 0:
            raise ValueError(f"temporal memory: history_frames ({self.history_frames}) must exceed exclude_recent "
                             f"({self.exclude_recent}) >= 0")
        if self.max_reuse < 1 or not self.offsets:
            raise ValueError("temporal memory: max_reuse must be >= 1 and offsets non-empty")

    def check(self, plan) -> None:
        layout = plan.layout
        names = [r.name for r in layout.regions]
        for name in (self.anchor_region, self.compressed_region):
            if name not in names or not layout.region(name).external:
                raise ValueError(f"temporal memory: region {name!r} must be an external region ({{name: {name}, "
                                 f"frames: N, external: true}}); regions are {names}")
        if self.window_region not in names or not layout.region(self.window_region).evict:
            raise ValueError(f"temporal memory: region {self.window_region!r} must be the evicting window; "
                             f"regions are {names}")
        anchors, recorded = layout.region(self.anchor_region).frames, plan.switch.recorded_scene_frames()
        if recorded < anchors:
            raise ValueError(f"temporal memory: the scene recorder keeps {recorded} frames, the anchors need "
                             f"{anchors} (the switch strategy records each scene's first frames: scene-memory's "
                             "recall_frames)")

    # ---- one stream ------------------------------------------------------------------------------------------------
    def attach(self, ctx) -> None:
        cache = ctx.cache
        layout = cache.layout
        anchors, window = layout.region(self.anchor_region).frames, layout.region(self.window_region).frames
        if anchors % ctx.chunk_frames or window < 2 * ctx.chunk_frames:
            raise ValueError(f"temporal memory: the anchors ({anchors} frames) must be whole chunks of "
                             f"{ctx.chunk_frames} and the window ({window}) must hold the recent chunk and the "
                             "current one")
        self.chunk_frames = ctx.chunk_frames
        self.anchors = layout.region(self.anchor_region).frames
        self.compressed = layout.region(self.compressed_region).frames
        self.scene_budget = self.anchors + self.compressed + layout.region(self.window_region).frames
        layers, batch, _, heads, dim = cache.k.shape
        tpf = cache.tokens_per_frame
        shape = (layers, batch, self.history_frames * tpf, heads, dim)
        self.ring_k = torch.zeros(shape, dtype=cache.k.dtype, device=cache.k.device)
        self.ring_v = torch.zeros(shape, dtype=cache.v.dtype, device=cache.v.device)
        self.ring_frame = [-1] * self.history_frames
        self.uses = torch.zeros(layers, batch, self.history_frames * tpf, dtype=torch.int32, device=cache.k.device)
        pairs = dim // 2
        self.query_sum = torch.zeros(layers, batch, heads, pairs, dtype=torch.complex64, device=cache.k.device)
        self.query_abs_sum = torch.zeros(layers, batch, heads, pairs, dtype=torch.float32, device=cache.k.device)
        self.query_tokens = torch.zeros(layers, dtype=torch.float32, device=cache.k.device)
        self.temporal_frequencies = ctx.temporal_frequencies.float().to(cache.k.device)
        self.ctx = ctx
        self.reset(ctx)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.ring_k, self.ring_v, self.uses, self.query_sum, self.query_abs_sum))

    def reset(self, ctx) -> None:
        """A new scene: nothing of the old one is a candidate, the scene's mean query is measured again."""
        self.scene_start: int | None = None  # the scene's first generated frame, set by its first chunk
        self.ring_frame = [-1] * self.history_frames
        self.uses.zero_()
        self.query_sum.zero_()
        self.query_abs_sum.zero_()
        self.query_tokens.zero_()
        ctx.cache.clear(self.anchor_region)
        ctx.cache.clear(self.compressed_region)
        self._steady = False

    # ---- hooks ---------------------------------------------------------------------------------------------------
    def on_switch(self, ctx, transition) -> None:
        self.reset(ctx)

    def observe_query(self, layer: int, q: torch.Tensor) -> None:
        """Clean-pass queries [B, n, H, D]: the scene's mean query over its first ``scene_budget`` frames."""
        start = self.ctx.frame if self.scene_start is None else self.scene_start
        if self.ctx.frame - start + self.chunk_frames > self.scene_budget:
            return
        c = _pairs(q)
        self.query_sum[layer] += c.sum(dim=1)
        self.query_abs_sum[layer] += c.abs().sum(dim=1)
        self.query_tokens[layer] += q.shape[1]

    def after_chunk(self, ctx) -> None:
        """Keep the clean chunk as a candidate, then lay out the anchors and compressed slots of the next chunk."""
        k, v = ctx.cache.chunk_kv()
        tpf = ctx.cache.tokens_per_frame
        first = ctx.frame - self.chunk_frames
        if self.scene_start is None:
            self.scene_start = first
        for i in range(self.chunk_frames):
            slot = (first + i) % self.history_frames
            span = slice(slot * tpf, (slot + 1) * tpf)
            self.ring_k[:, :, span] = k[:, :, i * tpf : (i + 1) * tpf]
            self.ring_v[:, :, span] = v[:, :, i * tpf : (i + 1) * tpf]
            self.uses[:, :, span] = 0
            self.ring_frame[slot] = first + i
        next_chunk = (ctx.frame - self.scene_start) // self.chunk_frames
        if (next_chunk + 1) * self.chunk_frames <= self.scene_budget:
            self._fill(ctx)
        else:
            self._roll(ctx, next_chunk)

    def _fill(self, ctx) -> None:
        """Before the budget is full: the scene's frames that left the window, in order, anchors first."""
        window = self.scene_budget - self.anchors - self.compressed
        window_start = ctx.frame + self.chunk_frames - window  # what the next chunk's window starts with
        left = list(range(self.scene_start, max(self.scene_start, window_start)))
        anchored, compressed = left[: self.anchors], left[self.anchors : self.anchors + self.compressed]
        self._hold_anchors(ctx, anchored)
        if compressed:
            index = self._ring_tokens(compressed)
            ctx.cache.hold(self.compressed_region, compressed, self.ring_k.index_select(2, index),
                              self.ring_v.index_select(2, index))
        self._steady = False

    def _roll(self, ctx, chunk: int) -> None:
        local = anchor_frames_at(chunk, self.chunk_frames, self.anchors, self.scene_budget)
        self._hold_anchors(ctx, [self.scene_start + f for f in local])
        # Slots named after the newest candidates; each layer writes its tokens at the chunk's first pass.
        newest = ctx.frame - self.exclude_recent
        ctx.cache.reserve(self.compressed_region, list(range(newest - self.compressed, newest)))
        self._steady = True

    def _hold_anchors(self, ctx, frames: list[int]) -> None:
        if not frames:
            ctx.cache.clear(self.anchor_region)
            return
        k, v = ctx.switch.scene_frames_kv([f - self.scene_start for f in frames])
        ctx.cache.hold(self.anchor_region, frames, k, v)

    def _ring_tokens(self, frames: list[int]) -> torch.Tensor:
        slots = [self.ring_frame.index(f) for f in frames]
        return _token_index(slots, self.ctx.cache.tokens_per_frame).to(self.ring_k.device)

    def observe_first_query(self, layer: int, q: torch.Tensor) -> None:
        """First denoising pass of a steady chunk, layer ``layer`` (queries [B, n, H, D]): write the compressed
        history this layer attends to."""
        if not self._steady:
            return
        cache = self.ctx.cache
        tpf = cache.tokens_per_frame
        mean = self.query_sum[layer] / self.query_tokens[layer].clamp(min=1)
        mean_abs = self.query_abs_sum[layer] / self.query_tokens[layer].clamp(min=1)
        gate = drift_gate(_pairs(q).mean(dim=1), mean, self.drift_strength)
        frames = torch.tensor(self.ring_frame, device=q.device).repeat_interleave(tpf)  # [N]
        distances = self.ctx.frame - frames
        scores = phase_scores(self.ring_k[layer], distances, mean, mean_abs, self.temporal_frequencies,
                              self.offsets, gate)
        newest = self.ctx.frame - self.exclude_recent
        # The window's frames only if nothing else is left; spent or empty slots never.
        scores = torch.where((frames >= newest)[None], torch.full_like(scores, -1e30), scores)
        spent = (self.uses[layer] >= self.max_reuse) | (frames < 0)[None]
        scores = scores.masked_fill(spent, float("-inf"))
        picked = scores.topk(self.compressed * tpf, dim=1).indices  # [B, C]
        when = frames * tpf + torch.arange(len(frames), device=q.device) % tpf  # time, then raster order
        picked = picked.gather(1, when[picked].argsort(dim=1))
        self.uses[layer].scatter_add_(1, picked, torch.ones_like(picked, dtype=self.uses.dtype))
        gather = picked[:, :, None, None].expand(-1, -1, *self.ring_k.shape[3:])
        index = cache.token_index(self.compressed_region).to(q.device)
        cache.k[layer].index_copy_(1, index, self.ring_k[layer].gather(1, gather))
        cache.v[layer].index_copy_(1, index, self.ring_v[layer].gather(1, gather))
