"""Streaming (chunk-by-chunk) decoding of latents to video, plus the inverse direction.

An autoregressive video model produces its latent video a chunk of latent frames at a time. To show or save frames
as soon as a chunk is denoised we decode each chunk immediately, instead of decoding the whole latent video at the
end. For a causal 3D VAE (``AutoencoderKLWan``) this is exact: its decoder only ever looks at the current and
earlier latent frames, through a per-layer cache of the last input frames of every causal convolution (the "feat
cache"). ``AutoencoderKLWan._decode`` already decodes one latent frame at a time with such a cache; the streaming
decoder here does the same loop, but keeps the cache on the decoder object between calls instead of clearing it.
The concatenation of all chunk outputs therefore equals ``vae.decode`` of the whole latent sequence.

Latent convention: latents passed to :meth:`StreamingDecoder.decode` and returned by :func:`encode_video` are
*normalized* the way diffusers' Wan pipelines feed them to the transformer,
``normalized = (raw - latents_mean) / latents_std`` with the statistics from the VAE config. Both VAE kinds
(``AutoencoderKLWan`` and :class:`streamgen.vae.PixelSpaceVAE`) carry those statistics, so the same code handles
both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan, WanCausalConv3d, unpatchify

from .vae import PixelSpaceVAE

__all__ = [
    "StreamingDecoder",
    "IdentityStreamingDecoder",
    "WanStreamingDecoder",
    "streaming_decoder_for",
    "normalize_latents",
    "denormalize_latents",
    "encode_video",
    "to_uint8_frames",
]


# --------------------------------------------------------------------------------------------------------------
# latent (de-)normalization
# --------------------------------------------------------------------------------------------------------------


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents_mean, 1 / latents_std)`` shaped ``[1, z_dim, 1, 1, 1]`` on ``like``'s device and dtype.

    Built exactly as in ``diffusers/pipelines/wan/pipeline_wan.py`` (float32 tensors from the config lists, the
    reciprocal taken in float32, then cast), so results match the pipeline bit for bit.
    """
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents (what the transformer sees) -> raw latents (what ``vae.decode`` takes).

    Same arithmetic as ``WanPipeline.__call__``: ``latents / (1 / std) + mean``.
    """
    mean, inv_std = _latent_stats(vae, latents)
    return latents / inv_std + mean


def normalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents (``vae.encode`` output) -> normalized latents; inverse of :func:`denormalize_latents`.

    Same arithmetic as ``WanImageToVideoPipeline.prepare_latents``: ``(latents - mean) * (1 / std)``.
    """
    mean, inv_std = _latent_stats(vae, latents)
    return (latents - mean) * inv_std


def _execution_device(vae) -> torch.device:
    """The device the VAE's inputs must be on: the onload device under CPU/group offloading, else its own."""
    try:  # diffusers >= 0.36 has a helper that understands every offloading flavour
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # pragma: no cover - older diffusers
        return vae.device
    return get_module_execution_device(vae)


def _onload(vae) -> None:
    """Run the accelerate offload hook the way ``@apply_forward_hook`` does for ``vae.decode``/``vae.encode``.

    We call the VAE's submodules directly, which bypasses that decorator; with ``enable_model_cpu_offload`` the VAE
    would otherwise stay on the CPU while its inputs are on the accelerator.
    """
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)


def _check_latents(latents: torch.Tensor, z_dim: int) -> None:
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != z_dim:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"expected latents of shape [B, {z_dim}, f, h, w], got {shape}")


# --------------------------------------------------------------------------------------------------------------
# streaming decoders
# --------------------------------------------------------------------------------------------------------------


class StreamingDecoder(ABC):
    """Decodes a latent video chunk by chunk, in order, to video in [-1, 1].

    Usage::

        decoder = streaming_decoder_for(vae)
        for chunk_latents in generate():          # normalized latents [B, C, f, h, w]
            frames = decoder.decode(chunk_latents)  # [B, 3, F, H, W] in [-1, 1]
        decoder.reset()                             # before starting an unrelated video

    The concatenation (along dim 2) of all outputs since the last :meth:`reset` equals decoding the concatenated
    latents in one go.
    """

    def __init__(self, vae) -> None:
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        """Forget all previous chunks; the next :meth:`decode` call starts a new video."""
        self.latent_frames_seen = 0

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk of normalized latents ``[B, C, f, h, w]`` to video ``[B, 3, F, H, W]`` in [-1, 1]."""

    def num_output_frames(self, num_latent_frames: int) -> int:
        """How many video frames the next :meth:`decode` call returns for a chunk of ``num_latent_frames``.

        A causal VAE with temporal factor ``t`` maps the very first latent frame to 1 video frame and every later one
        to ``t`` frames; for a pixel-space VAE ``t`` is 1.
        """
        if num_latent_frames <= 0:
            return 0
        t = self.vae.config.scale_factor_temporal
        if self.latent_frames_seen == 0:
            return 1 + t * (num_latent_frames - 1)
        return t * num_latent_frames

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`decode`, so a decoder can be passed where a callable is expected."""
        return self.decode(latents)


class IdentityStreamingDecoder(StreamingDecoder):
    """Streaming decoder for :class:`~streamgen.vae.PixelSpaceVAE`: de-normalize, then the identity (clamped).

    Pixel-space decoding is frame-local, so there is no state to carry between chunks.
    """

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.vae.config.z_dim)
        vae = self.vae
        latents = latents.to(_execution_device(vae), dtype=vae.dtype)
        video = vae.decode(denormalize_latents(vae, latents))
        self.latent_frames_seen += latents.shape[2]
        return video


class WanStreamingDecoder(StreamingDecoder):
    """Streaming decoder for diffusers' causal 3D VAE ``AutoencoderKLWan`` (Wan 2.1 and Wan 2.2 VAEs).

    Mirrors ``AutoencoderKLWan._decode`` (and ``tiled_decode`` when ``vae.use_tiling`` is on and the latents are
    larger than a tile), except that the causal-convolution feature cache lives on this object and survives between
    :meth:`decode` calls. The VAE itself is only read: its own ``_feat_map`` / ``_conv_idx`` (used by
    ``vae.decode``) are left alone, so normal ``vae.decode`` calls can be interleaved with streaming.

    Frame counts: the first chunk of ``f`` latent frames after :meth:`reset` yields ``1 + 4 (f - 1)`` video frames,
    every later chunk ``4 f`` (4 = ``vae.config.scale_factor_temporal``).

    Memory: the cache holds the last (up to) two input frames of every causal conv at that conv's resolution, the
    same state ``vae.decode`` keeps while it decodes. With tiling there is one such cache per tile, all kept at once
    (``vae.decode`` finishes one tile before starting the next).
    """

    def __init__(self, vae: AutoencoderKLWan) -> None:
        # Same count AutoencoderKLWan.clear_cache() uses to size its own cache.
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        if vae.post_quant_conv.kernel_size[0] != 1:
            # _decode applies post_quant_conv to the whole latent video without a cache; that equals applying it
            # per chunk only because its temporal kernel is 1 (true for every released Wan VAE).
            raise NotImplementedError("streaming decode needs a post_quant_conv with temporal kernel size 1")
        super().__init__(vae)

    def reset(self) -> None:
        super().reset()
        # One feat cache per spatial tile, keyed by the tile's latent-space offset ((0, 0) when not tiling).
        self._caches: dict[tuple[int, int], list] = {}
        self._latent_hw: tuple[int, int] | None = None
        self._tiled: bool | None = None

    def _decode_frames(self, x: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
        """Run the decoder one latent frame at a time, continuing the feat cache of tile ``key``.

        One frame per decoder call matters, not just for memory: the decoder's temporal upsamplers treat the first
        frame it ever sees specially ("Rep" cache marker: no time conv, one output frame instead of two), so calling
        it on several frames at once would not reproduce ``vae.decode``.
        """
        vae = self.vae
        cache = self._caches.setdefault(key, [None] * self._num_convs)
        outs = []
        for i in range(x.shape[2]):
            first = self.latent_frames_seen + i == 0
            tile = vae.post_quant_conv(x[:, :, i : i + 1])
            # feat_idx is a one-element list the decoder advances as it walks its convs; fresh per frame, as in _decode.
            outs.append(vae.decoder(tile, feat_cache=cache, feat_idx=[0], first_chunk=first))
        return torch.cat(outs, dim=2)

    def _decode_tiled(self, z: torch.Tensor) -> torch.Tensor:
        """Chunk version of ``AutoencoderKLWan.tiled_decode``: same tiles, same blending, one cache per tile.

        Blending is purely spatial (per frame), so blending each chunk equals blending the whole video.
        """
        vae = self.vae
        _, _, _, height, width = z.shape
        ratio = vae.spatial_compression_ratio
        patch = vae.config.patch_size
        sample_height, sample_width = height * ratio, width * ratio
        tile_latent_min_height = vae.tile_sample_min_height // ratio
        tile_latent_min_width = vae.tile_sample_min_width // ratio
        tile_latent_stride_height = vae.tile_sample_stride_height // ratio
        tile_latent_stride_width = vae.tile_sample_stride_width // ratio
        tile_sample_stride_height = vae.tile_sample_stride_height
        tile_sample_stride_width = vae.tile_sample_stride_width
        if patch is not None:
            sample_height //= patch
            sample_width //= patch
            tile_sample_stride_height //= patch
            tile_sample_stride_width //= patch
            blend_height = vae.tile_sample_min_height // patch - tile_sample_stride_height
            blend_width = vae.tile_sample_min_width // patch - tile_sample_stride_width
        else:
            blend_height = vae.tile_sample_min_height - tile_sample_stride_height
            blend_width = vae.tile_sample_min_width - tile_sample_stride_width

        rows = []
        for i in range(0, height, tile_latent_stride_height):
            row = []
            for j in range(0, width, tile_latent_stride_width):
                tile = z[:, :, :, i : i + tile_latent_min_height, j : j + tile_latent_min_width]
                row.append(self._decode_frames(tile, (i, j)))
            rows.append(row)

        # Same loop as tiled_decode, including its in-place blending order (blend_v/blend_h write into the tile).
        result_rows = []
        for i, row in enumerate(rows):
            result_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = vae.blend_v(rows[i - 1][j], tile, blend_height)
                if j > 0:
                    tile = vae.blend_h(row[j - 1], tile, blend_width)
                result_row.append(tile[:, :, :, :tile_sample_stride_height, :tile_sample_stride_width])
            result_rows.append(torch.cat(result_row, dim=-1))
        return torch.cat(result_rows, dim=3)[:, :, :, :sample_height, :sample_width]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        _check_latents(latents, vae.config.z_dim)
        _, _, num_frames, height, width = latents.shape
        if num_frames == 0:
            raise ValueError("decode() got a chunk with 0 latent frames")
        if self._latent_hw is not None and (height, width) != self._latent_hw:
            raise ValueError(
                f"latent size changed within a stream: {self._latent_hw} before, {(height, width)} now; call reset() "
                "before decoding a different video"
            )

        # Decide tiling once per stream with vae.decode's rule, so every chunk uses the same tiles (and caches).
        if self._tiled is None:
            ratio = vae.spatial_compression_ratio
            self._tiled = bool(vae.use_tiling) and (
                width > vae.tile_sample_min_width // ratio or height > vae.tile_sample_min_height // ratio
            )
        self._latent_hw = (height, width)

        _onload(vae)
        z = denormalize_latents(vae, latents.to(_execution_device(vae), dtype=vae.dtype))
        if self._tiled:
            out = self._decode_tiled(z)
        else:
            out = self._decode_frames(z, (0, 0))
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        self.latent_frames_seen += num_frames
        return torch.clamp(out, min=-1.0, max=1.0)


def streaming_decoder_for(vae) -> StreamingDecoder:
    """Return a fresh streaming decoder suited to ``vae``.

    - :class:`~streamgen.vae.PixelSpaceVAE` -> :class:`IdentityStreamingDecoder`
    - ``diffusers.AutoencoderKLWan`` -> :class:`WanStreamingDecoder`

    Raises ``TypeError`` for any other VAE: a non-causal VAE cannot be decoded chunk by chunk exactly.
    """
    if isinstance(vae, PixelSpaceVAE):
        return IdentityStreamingDecoder(vae)
    if isinstance(vae, AutoencoderKLWan):
        return WanStreamingDecoder(vae)
    raise TypeError(
        f"no streaming decoder for {type(vae).__name__}; supported: PixelSpaceVAE, AutoencoderKLWan (causal 3D VAE)"
    )


# --------------------------------------------------------------------------------------------------------------
# encoding and frame conversion
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_video(
    vae, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode a whole clip ``[B, 3, F, H, W]`` in [-1, 1] to *normalized* latents ``[B, z_dim, f, h, w]``.

    The result is in the convention :meth:`StreamingDecoder.decode` expects (and the transformer sees), e.g. to
    continue generation from an existing clip.

    For ``AutoencoderKLWan``, ``F`` must be ``1 + 4 k`` (the encoder silently drops trailing frames otherwise, so we
    refuse) and ``f = 1 + k``. By default the posterior mode is used, as diffusers' Wan image-to-video pipeline does
    (``sample_mode="argmax"``); ``sample=True`` draws from the posterior with ``generator``.
    """
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"encode_video: expected video of shape [B, C, F, H, W], got {shape}")
    device = _execution_device(vae)
    if isinstance(vae, PixelSpaceVAE):
        latents = vae.encode(video.to(device, dtype=vae.dtype))
    elif isinstance(vae, AutoencoderKLWan):
        t = vae.config.scale_factor_temporal
        if (video.shape[2] - 1) % t != 0:
            raise ValueError(
                f"encode_video: AutoencoderKLWan needs 1 + {t}k frames, got {video.shape[2]} "
                f"(trim to {(video.shape[2] - 1) // t * t + 1})"
            )
        # vae.encode is wrapped by @apply_forward_hook itself, so no _onload() needed here.
        dist = vae.encode(video.to(device, dtype=vae.dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()
    else:
        raise TypeError(
            f"encode_video: unsupported VAE {type(vae).__name__}; supported: PixelSpaceVAE, AutoencoderKLWan"
        )
    return normalize_latents(vae, latents)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Video ``[B, 3, F, H, W]`` in [-1, 1] (any float dtype/device) -> ``np.uint8`` array ``[B, F, H, W, 3]``.

    Same mapping as diffusers' ``VideoProcessor.postprocess_video(output_type="np")`` followed by its uint8
    conversion: ``round(clamp(x / 2 + 0.5, 0, 1) * 255)``. Converted on the tensor's device so only uint8 (a quarter
    of the float32 bytes) crosses to the CPU.
    """
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"to_uint8_frames: expected video of shape [B, 3, F, H, W], got {shape}")
    frames = (video.detach().float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()
