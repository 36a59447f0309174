"""Pixel-space "VAE": the identity autoencoder used by models that denoise pixels directly.

Our small CPU models run diffusion straight on RGB pixels, but the pipeline code is written against the
diffusers VAE interface (``AutoencoderKLWan``): it reads ``vae.config.scale_factor_temporal``,
``vae.config.scale_factor_spatial``, ``vae.config.z_dim``, ``vae.config.latents_mean`` /
``vae.config.latents_std`` and hands latents to the VAE to get video back.  :class:`PixelSpaceVAE` implements that
interface as the identity map, so a pixel-space model is just a pipeline whose ``model_index.json`` names
``["streamgen", "PixelSpaceVAE"]`` as its ``vae`` and no pipeline code needs a special case.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["PixelSpaceVAE"]


class PixelSpaceVAE(ModelMixin, ConfigMixin):
    r"""Identity autoencoder: latents *are* the video, in [-1, 1], shape ``[B, C, F, H, W]``.

    The config carries the same entries ``AutoencoderKLWan`` has, so ``vae.config.<name>`` reads the same way for
    both kinds of VAE:

    - ``z_dim`` = ``channels`` (latent channels equal pixel channels),
    - ``scale_factor_temporal`` = 1 and ``scale_factor_spatial`` = 1 (no compression),
    - ``latents_mean`` / ``latents_std``: per-channel statistics with which the pipeline normalizes latents for its
      transformer, exactly like the Wan pipelines do (``normalized = (latents - mean) / std``). They default to
      0 and 1, i.e. no normalization; :func:`streamgen.decoding.encode_video` and the streaming decoders apply them
      the same way for both VAE kinds.

    Those entries are ``__init__`` arguments (not only values pushed into the config afterwards) because diffusers'
    ``from_pretrained`` warns about, and drops, config keys that ``__init__`` does not accept. Only ``channels`` (and
    optionally the statistics) are meant to be chosen; the other arguments are validated against it.

    The model has no parameters, only one scalar buffer (``_device_anchor``, value 0, never used in the math). It
    exists because a module without any tensor breaks diffusers in two places: ``vae.device`` / ``vae.dtype`` are
    inferred from the first parameter or buffer (and pipelines call ``latents.to(vae.dtype)``), and
    ``save_pretrained`` writes no weights file for an empty state dict, after which ``from_pretrained`` fails with
    "no file named diffusion_pytorch_model.safetensors". Keeping the buffer *persistent* makes the checkpoint a
    normal (4-byte) one that every diffusers code path (variants, pipelines, ``torch_dtype``) saves and loads.

    Args:
        channels: number of pixel channels (3 for RGB).
        z_dim: must be ``None`` or equal to ``channels``; stored as ``channels``.
        scale_factor_temporal: must be 1.
        scale_factor_spatial: must be 1.
        latents_mean: per-channel mean for latent normalization (default: zeros).
        latents_std: per-channel std for latent normalization, all > 0 (default: ones).
    """

    @register_to_config
    def __init__(
        self,
        channels: int = 3,
        z_dim: int | None = None,
        scale_factor_temporal: int = 1,
        scale_factor_spatial: int = 1,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"PixelSpaceVAE: channels must be >= 1, got {channels}")
        if z_dim is not None and z_dim != channels:
            raise ValueError(f"PixelSpaceVAE: z_dim must equal channels ({channels}) for an identity VAE, got {z_dim}")
        if scale_factor_temporal != 1 or scale_factor_spatial != 1:
            raise ValueError(
                "PixelSpaceVAE: scale_factor_temporal and scale_factor_spatial must be 1 for an identity VAE, got "
                f"{scale_factor_temporal} and {scale_factor_spatial}"
            )
        latents_mean = [0.0] * channels if latents_mean is None else [float(v) for v in latents_mean]
        latents_std = [1.0] * channels if latents_std is None else [float(v) for v in latents_std]
        if len(latents_mean) != channels or len(latents_std) != channels:
            raise ValueError(
                f"PixelSpaceVAE: latents_mean and latents_std need {channels} entries (one per channel), got "
                f"{len(latents_mean)} and {len(latents_std)}"
            )
        if any(s <= 0 for s in latents_std):
            raise ValueError(f"PixelSpaceVAE: latents_std entries must be > 0, got {latents_std}")
        # The decorator registered the raw arguments (None defaults); store the resolved values instead so that
        # vae.config.z_dim / latents_mean / latents_std are always concrete, as they are for AutoencoderKLWan.
        self.register_to_config(z_dim=channels, latents_mean=latents_mean, latents_std=latents_std)

        # Device / dtype anchor and checkpoint placeholder (see class docstring).
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=True)

    def _check(self, x: torch.Tensor, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != self.config.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"PixelSpaceVAE.{what}: expected a tensor of shape [B, {self.config.channels}, F, H, W], got {shape}"
            )

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, C, F, H, W]`` in [-1, 1] -> latents (a copy of the video; NOT normalized).

        Like ``AutoencoderKLWan.encode`` this returns raw latents; normalization with ``latents_mean`` /
        ``latents_std`` is the caller's job (see :func:`streamgen.decoding.encode_video`). Unlike diffusers VAEs it
        returns the tensor itself, not an output object with a ``latent_dist``.
        """
        self._check(video, "encode")
        # A copy, so that in-place edits of the latents (e.g. by a sampler) never write into the caller's video.
        return video.clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw (de-normalized) latents ``[B, C, F, H, W]`` -> video in [-1, 1] (clamped), same shape.

        Returns the tensor itself, not a ``DecoderOutput``: code written for diffusers VAEs
        (``vae.decode(z).sample`` or ``vae.decode(z, return_dict=False)[0]``) fails loudly here instead of silently
        indexing the batch; use :func:`streamgen.decoding.streaming_decoder_for` to handle both kinds.
        """
        self._check(latents, "decode")
        # Denoised pixels overshoot [-1, 1] a little; clamp like AutoencoderKLWan._decode does.
        return latents.clamp(-1.0, 1.0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Encode then decode (the identity, clamped), mirroring ``AutoencoderKLWan.forward``."""
        return self.decode(self.encode(video))
