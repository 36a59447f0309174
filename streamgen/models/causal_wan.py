"""CausalWanTransformer3DModel: diffusers' Wan transformer, run one chunk of latent frames at a time.

It *is* a ``WanTransformer3DModel`` (same modules, same state-dict keys, same config), so ``from_pretrained`` on any
diffusers Wan transformer folder just works, and the inherited ``forward`` is still the full bidirectional one.
``forward_chunk`` adds the streaming path:

- self-attention: the chunk's tokens attend to every frame the KV cache exposes plus themselves (bidirectional
  inside the chunk); the chunk's own K/V are written into the cache un-roped, and RoPE is applied at read time
  from temporal positions chosen by a position policy (see :mod:`streamgen.cache.positions`), or, for a cache
  with ``keys_roped`` (positions that never move), rotated once as they are written;
- cross-attention: text K/V are computed once per prompt (:meth:`encode_prompt_kv`) and reused by every chunk.

Every size (tokens per frame, heads, head dim, layers) comes from the config and the input shape, so the tiny test
model and Wan2.1-T2V-1.3B take the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks the base class up here)
from diffusers.models.transformers.transformer_wan import WanAttention, WanTransformer3DModel

from ..cache.kv_cache import KVCache
from .rope import Rotary, WanRope


@dataclass
class PromptKV:
    """Cross-attention K/V of one prompt, per layer: ``k[layer]``, ``v[layer]`` are [B, L_text, H, D].

    ``mask`` (optional, bool [B, 1, N_query_tokens, L_text], True = may attend) lets different tokens of one forward
    read different prompts laid side by side along L_text: training uses it to run the frames of each segment of a
    clip under that segment's own caption, as a live stream computed them before a switch."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor | None = None
    states: torch.Tensor | None = None  # the text states [B, L_text, text_dim] they came from (a side network's input)


@dataclass
class ChunkRotary:
    """RoPE tables for one chunk: its query tokens and the key tokens it reads from the cache.

    ``key`` is None when the cache stores keys already rotated (``KVCache.keys_roped``): the chunk's own keys are
    then rotated once, with the query table (they sit at their queries' positions), as they are written."""

    query: Rotary
    key: Rotary | None


def _heads(attn: WanAttention, *tensors: torch.Tensor):
    return tuple(t.unflatten(2, (attn.heads, -1)) for t in tensors)


def _self_qkv(attn: WanAttention, x: torch.Tensor):
    """Projected, normalised q, k, v [B, n, H, D] of a self-attention layer."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    return _heads(attn, attn.norm_q(q), attn.norm_k(k), v)


def _cross_kv(attn: WanAttention, context: torch.Tensor):
    """Projected, normalised k, v [B, L, H, D] of a cross-attention layer for text states ``context``."""
    if getattr(attn, "fused_projections", False):
        k, v = attn.to_kv(context).chunk(2, dim=-1)
    else:
        k, v = attn.to_k(context), attn.to_v(context)
    return _heads(attn, attn.norm_k(k), v)


def _attend(attn: WanAttention, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    # The backend is whatever diffusers' dispatcher has for this processor (native SDPA, flash, xformers, ...).
    backend = getattr(attn.processor, "_attention_backend", None)
    out = dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, backend=backend)
    out = out.flatten(2, 3).type_as(q)
    return attn.to_out[1](attn.to_out[0](out))


def block_causal_mask(frames: int, chunk_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean [1, 1, N, N] mask (True = may attend): tokens see their own chunk and every earlier chunk."""
    chunk_of_token = (torch.arange(frames, device=device) // chunk_frames).repeat_interleave(tokens_per_frame)
    return (chunk_of_token[None, :] <= chunk_of_token[:, None])[None, None]


class CausalWanTransformer3DModel(WanTransformer3DModel):
    """Wan transformer with a chunk-causal, KV-cached forward (:meth:`forward_chunk`)."""

    @classmethod
    def from_wan(cls, model: WanTransformer3DModel) -> "CausalWanTransformer3DModel":
        """Reuse an already loaded diffusers Wan transformer (no copy: the class only adds methods)."""
        if not isinstance(model, WanTransformer3DModel):
            raise TypeError(f"expected a WanTransformer3DModel, got {type(model).__name__}")
        model.__class__ = cls
        return model

    def compile_blocks(self, **compile_kwargs) -> None:
        """``torch.compile`` every block's feed-forward in place (state-dict keys unchanged). The attention path
        stays eager: its cache reads change shape as the cache fills, which would recompile at every chunk."""
        for block in self.blocks:
            block.ffn.compile(**compile_kwargs)

    # ---- sizes derived from the config ------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.config.attention_head_dim

    def token_grid(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        p_t, p_h, p_w = self.config.patch_size
        if p_t != 1:
            raise NotImplementedError(f"streaming needs a temporal patch size of 1, this model has {p_t}")
        if latent_height % p_h or latent_width % p_w:
            raise ValueError(
                f"latent size {latent_height}x{latent_width} is not divisible by the patch size {p_h}x{p_w}"
            )
        return latent_height // p_h, latent_width // p_w

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        grid_h, grid_w = self.token_grid(latent_height, latent_width)
        return grid_h * grid_w

    def _compute_dtype(self) -> torch.dtype:
        """``self.dtype``, remembered while the patch embedding's weight stays the same tensor and dtype (``to()`` and
        diffusers' layerwise casting both replace it): diffusers walks every module for casting hooks on each call,
        a fifth of a tiny model's chunk-forward time."""
        weight = self.patch_embedding.weight
        key = (weight.data_ptr(), weight.dtype, weight.device)
        memo = getattr(self, "_streamgen_dtype", None)
        if memo is None or memo[0] != key:
            memo = self._streamgen_dtype = (key, self.dtype)
        return memo[1]

    def _rope(self) -> WanRope:
        if getattr(self, "_streamgen_rope", None) is None:
            self._streamgen_rope = WanRope(self.head_dim)
        return self._streamgen_rope

    def rotary(
        self, key_positions: torch.Tensor | None, query_positions: torch.Tensor, latent_height: int, latent_width: int
    ) -> ChunkRotary:
        """RoPE tables for a chunk whose query frames / cached key frames sit at the given temporal positions;
        ``key_positions`` None: the cache holds roped keys (no key table)."""
        grid = self.token_grid(latent_height, latent_width)
        device = self.proj_out.weight.device
        rope = self._rope()
        key = None if key_positions is None else rope.rotary(key_positions, *grid, device)
        return ChunkRotary(query=rope.rotary(query_positions, *grid, device), key=key)

    # ---- prompt ------------------------------------------------------------------------------------------------
    def encode_prompt_kv(self, encoder_hidden_states: torch.Tensor) -> PromptKV:
        """Cross-attention K/V of every layer for text states [B, L_text, text_dim]; computed once per prompt."""
        if self.config.added_kv_proj_dim is not None:
            raise NotImplementedError("image-conditioned Wan (added_kv_proj_dim) is not supported for streaming yet")
        context = self.condition_embedder.text_embedder(encoder_hidden_states.to(self.dtype))
        ks, vs = [], []
        for block in self.blocks:
            k, v = _cross_kv(block.attn2, context)
            ks.append(k)
            vs.append(v)
        return PromptKV(ks, vs, states=encoder_hidden_states)

    # ---- one chunk ----------------------------------------------------------------------------------------------
    def forward_chunk(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        prompt_kv: PromptKV,
        cache: KVCache | None,
        rotary: ChunkRotary,
        attention_mask: torch.Tensor | None = None,
        query_observer: Callable[[int, torch.Tensor], None] | None = None,
        camera_tokens: torch.Tensor | None = None,
        block_residuals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow prediction for a chunk of latents [B, C, f, h, w].

        ``timestep`` is one value for the whole chunk, or one per frame ([B, f]: training with a different noise
        level per frame, e.g. diffusion forcing). With a ``cache``, the chunk's self-attention K/V are written into
        the slots ``cache.begin_chunk`` assigned and attention reads ``cache.read``; ``rotary.key`` must describe
        those keys, or be None for a cache that stores keys roped (``KVCache.keys_roped``): the chunk's keys are then
        rotated with ``rotary.query`` as they are written and read back as they are. With ``cache=None`` the chunk attends to itself, under ``attention_mask`` if given (e.g.
        :func:`block_causal_mask` to train chunk-causally on whole clips); ``rotary.key`` is then ignored.
        ``query_observer(layer, q)``, if given, sees every layer's un-roped self-attention queries [B, n, H, D]
        (Echo-Forcing's mean scene query); it cannot change them. ``camera_tokens`` [B, f * tokens per frame, dim],
        if given, are added to the patch tokens (a :class:`~streamgen.models.camera.CameraEncoder`'s output);
        ``block_residuals`` [num_layers, B, f * tokens per frame, dim], if given, are added to the hidden states before
        each block (a side network's injections: :class:`~streamgen.models.anchor_weave.AnchorWeaveController`).
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid_h, grid_w = self.token_grid(height, width)

        x = self.patch_embedding(hidden_states.to(self._compute_dtype())).flatten(2).transpose(1, 2).contiguous()
        if camera_tokens is not None:
            if camera_tokens.shape != x.shape:
                raise ValueError(f"camera_tokens must be {tuple(x.shape)} (batch, tokens, dim) for this chunk, "
                                 f"got {tuple(camera_tokens.shape)}")
            x = x + camera_tokens.to(x.dtype)
        temb, timestep_proj = self._time_embedding(timestep, batch, frames, grid_h * grid_w, x)
        if block_residuals is not None and tuple(block_residuals.shape) != (len(self.blocks), *x.shape):
            raise ValueError(f"block_residuals must be {(len(self.blocks), *x.shape)} (layers, batch, tokens, dim), "
                             f"got {tuple(block_residuals.shape)}")

        for layer, block in enumerate(self.blocks):
            if block_residuals is not None:
                x = x + block_residuals[layer].to(x.dtype)
            x = self._block(block, layer, x, timestep_proj, prompt_kv, cache, rotary, attention_mask, query_observer)

        shift, scale = (self.scale_shift_table[None] + temb.unsqueeze(2)).unbind(2)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(batch, frames, grid_h, grid_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _time_embedding(self, timestep, batch, frames, tokens_per_frame, like):
        """(temb [B, T, dim], timestep_proj [B, T, 6, dim]) with T = 1 for one timestep, else one per token.

        A stream runs the same few timesteps every chunk: at inference, a timestep given as a number is embedded once
        and remembered (a handful of entries) while the embedder's weights stay the same tensors, unmodified."""
        if isinstance(timestep, (int, float)) and not torch.is_grad_enabled():
            weights = tuple((p.data_ptr(), p._version, p.dtype) for p in self.condition_embedder.parameters())
            key = (float(timestep), batch, like.dtype, like.device, weights)
            memo = self.__dict__.setdefault("_streamgen_time_embeddings", {})
            if key not in memo:
                if len(memo) >= 32:
                    memo.clear()
                memo[key] = self._embed_time(timestep, batch, frames, tokens_per_frame, like)
            return memo[key]
        return self._embed_time(timestep, batch, frames, tokens_per_frame, like)

    def _embed_time(self, timestep, batch, frames, tokens_per_frame, like):
        t = torch.as_tensor(timestep, dtype=torch.float32, device=like.device)
        per_frame = t.dim() == 2
        if per_frame and tuple(t.shape) != (batch, frames):
            raise ValueError(f"per-frame timesteps must be [batch, frames] = {(batch, frames)}, got {tuple(t.shape)}")
        t = t.reshape(-1) if per_frame else t.reshape(-1).expand(batch)
        emb = self.condition_embedder
        t_freq = emb.timesteps_proj(t).to(next(emb.time_embedder.parameters()).dtype)
        temb = emb.time_embedder(t_freq).type_as(like)
        timestep_proj = emb.time_proj(emb.act_fn(temb)).unflatten(-1, (6, -1))
        if per_frame:
            temb = temb.unflatten(0, (batch, frames)).repeat_interleave(tokens_per_frame, dim=1)
            timestep_proj = timestep_proj.unflatten(0, (batch, frames)).repeat_interleave(tokens_per_frame, dim=1)
            return temb, timestep_proj
        return temb[:, None], timestep_proj[:, None]

    def _block(self, block, layer, x, timestep_proj, prompt_kv, cache, rotary, attention_mask, query_observer=None):
        # Same arithmetic (and fp32 islands) as WanTransformerBlock.forward, with cached attention.
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table[None] + timestep_proj.float()).unbind(2)

        h = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        attended = self._self_attention(block.attn1, layer, h, cache, rotary, attention_mask, query_observer)
        x = (x.float() + attended * gate).type_as(x)

        h = block.norm2(x.float()).type_as(x)
        (q,) = _heads(block.attn2, block.attn2.norm_q(block.attn2.to_q(h)))
        x = x + _attend(block.attn2, q, prompt_kv.k[layer], prompt_kv.v[layer], prompt_kv.mask)

        h = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + block.ffn(h).float() * c_gate).type_as(x)

    def _self_attention(self, attn, layer, h, cache, rotary, attention_mask=None, query_observer=None):
        q, k, v = _self_qkv(attn, h)  # [B, n, H, D]
        if query_observer is not None:
            query_observer(layer, q.detach())
        if cache is None or rotary.key is None:  # q and k at the same positions: one rotation for both
            q, k = rotary.query.apply(torch.cat((q, k), dim=2)).chunk(2, dim=2)
            if cache is None:
                return _attend(attn, q, k, v, attention_mask)
            # A cache of roped keys (positions never move): the chunk's keys are rotated once, as they are written.
            cache.write(layer, k, v)
            k_all, v_all = cache.read(layer)
            return _attend(attn, q, k_all, v_all)
        # Keys are cached un-roped and rotated to the positions the policy gave them for this chunk.
        cache.write(layer, k, v)
        k_all, v_all = cache.read(layer)
        return _attend(attn, rotary.query.apply(q), rotary.key.apply(k_all), v_all)
