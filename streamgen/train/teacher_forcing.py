"""Dense teacher forcing: every chunk of a clip trained against the clean chunks before it, in one forward.

The sequence is ``[clean clip | noisy clip]`` (2F frames):

- clean frames attend block-causally among themselves: they are what a stream's cache holds, each chunk written once,
  clean, after seeing the chunks before it;
- noisy chunk k attends to the clean chunks before it and to itself, so each of the F / chunk_frames noisy chunks is a
  query in exactly the situation of inference after k chunks, and all of them are supervised in one step;
- both copies of a frame take the same RoPE position, as a frame's cached K/V and its query while it was denoised do.

Each segment of a clip plays under its own caption (prompts side by side along the text axis, a cross-attention mask
per token), as a live stream computed the frames before a switch; the loss then covers every noisy frame of every
segment except smooth cross-fade frames, which belong to neither caption.
"""

from __future__ import annotations

from typing import Any

import torch


def dense_mask(frames: int, chunk_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean [1, 1, 2N, 2N] self-attention mask (True = may attend) of ``[clean | noisy]`` with N = frames x
    tokens_per_frame: clean -> clean block-causal; noisy chunk k -> clean chunks < k and its own noisy chunk."""
    chunk = torch.arange(frames, device=device) // chunk_frames
    clean_to_clean = chunk[None, :] <= chunk[:, None]
    noisy_to_clean = chunk[None, :] < chunk[:, None]
    noisy_to_noisy = chunk[None, :] == chunk[:, None]
    none = torch.zeros(frames, frames, dtype=torch.bool, device=device)
    frame_mask = torch.cat((torch.cat((clean_to_clean, none), 1), torch.cat((noisy_to_clean, noisy_to_noisy), 1)), 0)
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)[None, None]


def segment_prompts(batch: dict[str, Any], dropout: float, generator: torch.Generator,
                    shard: tuple[int, int] = (0, 1)) -> tuple[list[list[str]], torch.Tensor]:
    """(prompts per clip, one per segment, "" where the caption is dropped for guidance; prompt slot of each frame
    [B, F] int64). A dropped clip loses every caption (the unconditional branch sees no prompt at all). ``shard``:
    (rank, processes) when ``batch`` is one rank's share (the dropout is drawn for the whole batch)."""
    rank, world = shard
    mine = len(batch["captions"])
    drop = (torch.rand(mine * world, generator=generator) < dropout)[rank * mine : (rank + 1) * mine]
    prompts = [[""] * len(c) if d else list(c) for c, d in zip(batch["captions"], drop.tolist())]
    return prompts, batch["frame_segment"].long()


def text_inputs(prompts: list[list[str]], frame_slot: torch.Tensor, encode, tokens_per_frame: int,
                copies: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(text states [B, S * L, D]: each clip's segment prompts side by side, zero-padded to the batch's most segments;
    cross-attention mask [B, 1, copies * F * tokens_per_frame, S * L]: a token reads only its own segment's prompt).
    ``encode(list of str) -> [n, L, D]`` is the frozen caption encoder; ``copies``: the sequence holds the clip this
    many times over (clean, noisy)."""
    slots = max(len(p) for p in prompts)
    flat = [p for clip in prompts for p in clip]
    states = encode(flat)  # [sum of segments, L, D]
    length, dim = states.shape[1:]
    batch = len(prompts)
    out = states.new_zeros(batch, slots * length, dim)
    i = 0
    for b, clip in enumerate(prompts):
        out[b, : len(clip) * length] = states[i : i + len(clip)].reshape(-1, dim)
        i += len(clip)
    key_slot = torch.arange(slots * length) // length  # [S * L]
    token_slot = frame_slot.repeat(1, copies).repeat_interleave(tokens_per_frame, dim=1)  # [B, copies * F * tpf]
    mask = token_slot[:, :, None] == key_slot[None, None, :]
    return out, mask[:, None]


def scene_start_chunks(batch: dict[str, Any], chunk_frames: int) -> torch.Tensor:
    """bool [B, chunks]: chunks whose scene shows nowhere earlier in the clip (drawn from the prompt alone: the first
    chunk, and the first chunk after a cut to a new scene; a recall's scene was shown before)."""
    segment = batch["frame_segment"].long()
    out = []
    for b, seeds in enumerate(batch["scene_seeds"]):
        scene = [seeds[int(s)] for s in segment[b]]
        out.append([scene[k] not in scene[:k] for k in range(0, len(scene), chunk_frames)])
    return torch.tensor(out, dtype=torch.bool)
