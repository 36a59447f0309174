"""Preallocated per-layer self-attention K/V for one stream.

Keys are stored UN-roped: a position policy decides, at read time, which temporal index every cached frame has
(absolute, block-relative, tri-region ...), so the same stored keys can be re-positioned without recomputation.
The one exception, ``keys_roped``: a stream whose position policy never moves a key (``stable_key_positions``) and
whose mechanisms never read keys (``reads_keys``) stores each key rotated once, when it is written, so no read
rotates the whole cache again (the engine decides, see :meth:`streamgen.engine.StreamEngine`).

All tensors are allocated once, ``[num_layers, B, num_slots * tokens_per_frame, H, D]``; a chunk's writes are
in-place copies into the slots the :class:`SlotTable` assigned to its frames (and, when an evicted frame is promoted
into another region, one slot-to-slot copy), so memory never grows with stream length.
"""

from __future__ import annotations

import torch

from .regions import RegionLayout, SlotTable


def _token_index(slots: list[int], tokens_per_frame: int) -> torch.Tensor:
    """Token positions of ``slots``, in the given order."""
    return torch.tensor([s * tokens_per_frame + i for s in slots for i in range(tokens_per_frame)], dtype=torch.long)


def _token_selection(slots: list[int], tokens_per_frame: int) -> slice | torch.Tensor:
    """Token positions of ``slots`` (in the given order): a slice when they are consecutive, else an index."""
    if slots and slots == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0] * tokens_per_frame, (slots[-1] + 1) * tokens_per_frame)
    return _token_index(slots, tokens_per_frame)


class KVCache:
    def __init__(
        self,
        layout: RegionLayout,
        *,
        num_layers: int,
        batch_size: int,
        tokens_per_frame: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        keys_roped: bool = False,
    ):
        self.layout = layout
        self.keys_roped = keys_roped  # keys are stored rotated (at their fixed positions), read as they are
        self.tokens_per_frame = tokens_per_frame
        shape = (num_layers, batch_size, layout.num_slots * tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = SlotTable(layout)
        self._write: slice | torch.Tensor = slice(0, 0)
        self._read: slice | torch.Tensor = slice(0, 0)
        self._read_slots: list[int] = []
        self._chunk_slots: list[int] = []
        self._muted: set[str] = set()  # regions that hold frames but are not attended

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    # ---- bookkeeping (once per chunk) -------------------------------------------------------------------------
    def begin_chunk(self, frames: list[int]) -> list[int]:
        """Place the frames of the chunk about to be denoised; its K/V are (over)written by every forward."""
        placed = [self.slots.place(f) for f in frames]
        for _, promotion in placed:
            if promotion is not None:
                self._copy_slot(*promotion)  # before any forward overwrites the evicted slot
        return self._begin([slot for slot, _ in placed])

    def begin_rewrite(self, frames: list[int]) -> list[int]:
        """Like :meth:`begin_chunk` for ``frames`` the cache already holds: their K/V are rewritten in their slots
        (wherever they are, external regions included) while they attend to everything held."""
        held = {f: s for s, f in enumerate(self.slots.frame_of_slot) if f >= 0}
        missing = [f for f in frames if f not in held]
        if missing:
            raise ValueError(f"frames {missing} are not in the cache; only held frames can be rewritten in place")
        return self._begin([held[f] for f in frames])

    def _begin(self, slots: list[int]) -> list[int]:
        """Forwards from now on write ``slots`` and read every occupied slot."""
        self._chunk_slots = slots
        self._write = self._on_device(_token_selection(slots, self.tokens_per_frame))
        self._read_slots = [s for s in self.slots.occupied() if self.slots.region_of_slot[s] not in self._muted]
        self._read = self._on_device(_token_selection(self._read_slots, self.tokens_per_frame))
        return slots

    def clear(self, region: str) -> None:
        """Drop every frame held by ``region`` (its tensors are simply overwritten later)."""
        self.slots.clear(region)

    def retain(self, region: str, frames: list[int]) -> None:
        """Drop every frame of ``region`` except ``frames``, whose K/V stay where they are."""
        self.slots.retain(region, frames)

    def mark(self, region: str, frames: list[int]) -> None:
        """Move ``frames`` into the promoted ``region`` when they are evicted (see :class:`SlotTable`)."""
        self.slots.mark(region, frames)

    def mute(self, region: str, muted: bool = True) -> None:
        """Stop (``muted``) or resume attending to ``region`` from the next forward on; what it holds is kept, and
        frames still arrive in it."""
        if muted:
            self._muted.add(self.layout.region(region).name)
        else:
            self._muted.discard(region)

    def copy_into(self, region: str, frames: list[int]) -> None:
        """Make the promoted ``region`` hold a copy of the K/V of ``frames``, which the regions the stream fills hold
        and keep (see :meth:`SlotTable.fill`)."""
        source = {f: s for s, f in enumerate(self.slots.frame_of_slot)
                  if f in frames and self.slots.region_of_slot[s] != region}
        missing = [f for f in frames if f not in source]
        if missing:
            raise ValueError(f"frames {missing} are not in the cache; only held frames can be copied into {region!r}")
        for frame, target in zip(frames, self.slots.fill(region, frames)):
            self._copy_slot(source[frame], target)

    def hold(self, region: str, frames: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Put ``frames`` with K/V ``k``, ``v`` [layers, B, len(frames) * tokens_per_frame, H, D] into the external
        ``region``, replacing what it held; attended from the next chunk on."""
        index = self._on_device(self._tokens(self.reserve(region, frames)))
        self.k.index_copy_(2, index, k.to(self.k))
        self.v.index_copy_(2, index, v.to(self.v))

    def reserve(self, region: str, frames: list[int]) -> list[int]:
        """Make the external ``region`` hold ``frames`` (replacing what it held) without writing their K/V: the
        caller fills the returned slots before anything reads them."""
        return self.slots.hold(region, frames)

    def carry(self, frames: list[int], region: str) -> None:
        """Move ``frames`` (as computed) from the regions the stream fills into the external ``region``; their old
        slots are the caller's to free."""
        source = sorted((s for s, f in enumerate(self.slots.frame_of_slot)
                         if f in frames and not self.layout.region(self.slots.region_of_slot[s]).external),
                        key=self.slots.frame_of_slot.__getitem__)
        index = self._on_device(self._tokens(source))
        self.hold(region, [self.slots.frame_of_slot[s] for s in source],
                  self.k.index_select(2, index), self.v.index_select(2, index))

    def region_kv(self, region: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the K/V [layers, B, n * tokens_per_frame, H, D] of the frames ``region`` holds, oldest first."""
        index = self._on_device(self._tokens(self.slots.slots_of(region)))
        return self.k.index_select(2, index), self.v.index_select(2, index)

    def frame_kv(self, frame: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Copies of the K/V [layers, B, tokens_per_frame, H, D] of ``frame`` as a region the stream fills holds it,
        or None if none does (any more)."""
        for slot, held in enumerate(self.slots.frame_of_slot):
            if held == frame and not self.layout.region(self.slots.region_of_slot[slot]).external:
                index = self._on_device(self._tokens([slot]))
                return self.k.index_select(2, index), self.v.index_select(2, index)
        return None

    def chunk_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the K/V [layers, B, f * tokens_per_frame, H, D] of the chunk placed by the latest begin_chunk."""
        index = self._on_device(self._tokens(self._chunk_slots))
        return self.k.index_select(2, index), self.v.index_select(2, index)

    def token_index(self, region: str) -> torch.Tensor:
        """Token positions (on the cache's device) of the frames ``region`` holds, oldest first."""
        return self._on_device(self._tokens(self.slots.slots_of(region)))

    def scale_region(self, region: str, weights: torch.Tensor) -> None:
        """Multiply the K and V of every frame ``region`` holds by per-layer, per-spatial-token ``weights``
        [layers, tokens_per_frame] (scaling the token's attention logits and its value)."""
        slots = self.slots.slots_of(region)
        if not slots:
            return
        index = self._on_device(self._tokens(slots))
        factor = weights.to(self.k).repeat(1, len(slots))[:, None, :, None, None]
        self.k.index_copy_(2, index, self.k.index_select(2, index) * factor)
        self.v.index_copy_(2, index, self.v.index_select(2, index) * factor)

    def _tokens(self, slots: list[int]) -> torch.Tensor:
        return _token_index(slots, self.tokens_per_frame)

    def _copy_slot(self, source: int, target: int) -> None:
        tpf = self.tokens_per_frame
        src, dst = slice(source * tpf, (source + 1) * tpf), slice(target * tpf, (target + 1) * tpf)
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]

    def attention_frames(self) -> list[tuple[int, str]]:
        """(latent frame index, region name) of every key frame the current chunk attends to, in read order."""
        return [(self.slots.frame_of_slot[s], self.slots.region_of_slot[s]) for s in self._read_slots]

    def frames_in(self, region: str) -> list[int]:
        """Latent frame indices held by ``region``, oldest first."""
        return [self.slots.frame_of_slot[s] for s in self.slots.slots_of(region)]

    def _on_device(self, sel):
        return sel if isinstance(sel, slice) else sel.to(self.k.device)

    # ---- tensor traffic (once per layer per forward) ----------------------------------------------------------
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the current chunk's ``k``, ``v`` [B, n_tokens, H, D] in its slots (``k`` roped iff ``keys_roped``)."""
        if isinstance(self._write, slice):
            self.k[layer, :, self._write] = k
            self.v[layer, :, self._write] = v
        else:
            self.k[layer].index_copy_(1, self._write, k)
            self.v[layer].index_copy_(1, self._write, v)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [B, N_keys, H, D] of every attended frame (current chunk included), in read order; keys un-roped unless
        ``keys_roped``.

        Read order is slot order, so consecutive attended slots (a wrapped ring too) are a view of the buffers; slots
        with holes between them are gathered: attending to the span in place under a mask for the holes measured
        slower (docs/architecture.md, cache reads)."""
        if isinstance(self._read, slice):
            return self.k[layer, :, self._read], self.v[layer, :, self._read]
        return self.k[layer].index_select(1, self._read), self.v[layer].index_select(1, self._read)
