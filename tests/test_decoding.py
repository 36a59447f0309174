"""Streaming decode must reproduce a full ``vae.decode``; the pixel-space VAE must behave like a diffusers VAE.

The Wan VAEs here are tiny and randomly initialised (a few thousand parameters), which is enough: exactness of
chunked decoding depends on the cache bookkeeping, not on trained weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

from streamgen.decoding import (
    IdentityStreamingDecoder,
    WanStreamingDecoder,
    denormalize_latents,
    encode_video,
    normalize_latents,
    streaming_decoder_for,
    to_uint8_frames,
)
from streamgen.vae import PixelSpaceVAE

Z_DIM = 4
# Non-trivial statistics so that a wrong (or missing) de-normalization shows up as a mismatch.
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]
LATENTS_STD = [1.5, 0.7, 2.0, 1.0]

TINY_WAN = {
    # Wan 2.1 layout: 8x spatial, 4x temporal compression (temperal_downsample=[False, True, True] default).
    "wan2.1": dict(base_dim=4, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=0),
    # Wan 2.2 layout: residual up blocks (DupUp3D shortcut, which uses `first_chunk`) and 2x2 patchify.
    "wan2.2": dict(
        base_dim=4, decoder_base_dim=4, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=0, is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(TINY_WAN))
def wan_vae(request) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD, **TINY_WAN[request.param])
    return vae.eval()


VIDEO_SIZE = 64  # 64x64 pixels: 8x8 latents for the Wan 2.1 layout, 4x4 for Wan 2.2 (16x spatial compression)


@pytest.fixture(scope="module")
def latents(wan_vae) -> torch.Tensor:
    """Normalized latents, 7 latent frames (25 video frames)."""
    size = VIDEO_SIZE // wan_vae.config.scale_factor_spatial
    return torch.randn(1, Z_DIM, 7, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full_decode(wan_vae, latents) -> torch.Tensor:
    with torch.no_grad():
        return wan_vae.decode(denormalize_latents(wan_vae, latents)).sample


def _stream(decoder, latents: torch.Tensor, split: list[int]) -> list[torch.Tensor]:
    outs = []
    for chunk in latents.split(split, dim=2):
        expected = decoder.num_output_frames(chunk.shape[2])
        out = decoder.decode(chunk)
        assert out.shape[2] == expected
        outs.append(out)
    return outs


@pytest.mark.parametrize("split", [[3, 3, 1], [1, 2, 4]])
def test_wan_streaming_matches_full_decode(wan_vae, latents, full_decode, split):
    decoder = streaming_decoder_for(wan_vae)
    assert isinstance(decoder, WanStreamingDecoder)
    outs = _stream(decoder, latents, split)

    # first chunk: 1 + 4 (f - 1) frames, later chunks 4 f
    assert [o.shape[2] for o in outs] == [1 + 4 * (split[0] - 1)] + [4 * f for f in split[1:]]
    streamed = torch.cat(outs, dim=2)
    assert streamed.shape == full_decode.shape == (1, 3, 25, VIDEO_SIZE, VIDEO_SIZE)
    assert (streamed - full_decode).abs().max().item() <= 1e-4
    # the comparison is meaningful only if the output is not all clamped / constant
    assert full_decode.std() > 0.05 and (full_decode.abs() < 1).float().mean() > 0.5


def test_wan_reset_and_interleaved_full_decode(wan_vae, latents, full_decode):
    decoder = streaming_decoder_for(wan_vae)
    first = torch.cat(_stream(decoder, latents, [3, 4]), dim=2)

    # A second stream after reset() is identical to the first, even with ordinary vae.decode calls in between:
    # the streaming decoder keeps its cache to itself and vae.decode clears only the VAE's own.
    decoder.reset()
    outs = []
    for chunk in latents.split([3, 4], dim=2):
        outs.append(decoder.decode(chunk))
        with torch.no_grad():
            wan_vae.decode(denormalize_latents(wan_vae, chunk[:, :, :1]))
    assert torch.equal(torch.cat(outs, dim=2), first)
    assert (first - full_decode).abs().max().item() <= 1e-4


def test_wan_streaming_with_tiling(wan_vae):
    """With vae.enable_tiling() (and latents larger than a tile) vae.decode is tiled; streaming must follow."""
    z = torch.randn(1, Z_DIM, 3, 3, 4, generator=torch.Generator().manual_seed(2))
    ratio = wan_vae.spatial_compression_ratio
    # tiles of 3x3 latents every 2 latents: a 2x2 grid of overlapping tiles, blended over one latent's width
    wan_vae.enable_tiling(
        tile_sample_min_height=3 * ratio, tile_sample_min_width=3 * ratio,
        tile_sample_stride_height=2 * ratio, tile_sample_stride_width=2 * ratio,
    )  # fmt: skip
    try:
        with torch.no_grad():
            full = wan_vae.decode(denormalize_latents(wan_vae, z)).sample
        decoder = streaming_decoder_for(wan_vae)
        streamed = torch.cat([decoder.decode(c) for c in z.split([1, 2], dim=2)], dim=2)
        assert len(decoder._caches) == 4  # really took the tiled path
    finally:
        wan_vae.disable_tiling()
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max().item() <= 1e-4


def test_wan_rejects_size_change(wan_vae, latents):
    decoder = streaming_decoder_for(wan_vae)
    decoder.decode(latents[:, :, :1])
    with pytest.raises(ValueError, match="latent size changed"):
        decoder.decode(latents[:, :, 1:2, :2, :2])
    with pytest.raises(ValueError, match=r"\[B, 4, f, h, w\]"):
        decoder.decode(latents[:, :2])


def test_encode_video_wan(wan_vae):
    scale = wan_vae.config.scale_factor_spatial
    video = torch.rand(1, 3, 9, 2 * scale, 2 * scale, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = encode_video(wan_vae, video)
    assert z.shape == (1, Z_DIM, 3, 2, 2)
    with torch.no_grad():
        raw = wan_vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(denormalize_latents(wan_vae, z), raw, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        encode_video(wan_vae, video[:, :, :8])


# ---------------------------------------------------------------------------------------------------------------
# pixel-space VAE
# ---------------------------------------------------------------------------------------------------------------


def test_pixel_vae_config_matches_wan_names():
    vae = PixelSpaceVAE(channels=3)
    assert vae.config.scale_factor_temporal == 1
    assert vae.config.scale_factor_spatial == 1
    assert vae.config.z_dim == 3
    assert vae.config.latents_mean == [0.0] * 3 and vae.config.latents_std == [1.0] * 3
    assert list(vae.parameters()) == []
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    with pytest.raises(ValueError, match="z_dim"):
        PixelSpaceVAE(channels=3, z_dim=4)
    with pytest.raises(ValueError, match="scale_factor"):
        PixelSpaceVAE(scale_factor_spatial=8)


def test_pixel_vae_identity_roundtrip():
    vae = PixelSpaceVAE(channels=3)
    video = torch.rand(2, 3, 5, 8, 6, generator=torch.Generator().manual_seed(4)) * 2 - 1
    assert torch.equal(vae.decode(vae.encode(video)), video)
    assert vae.encode(video) is not video  # a copy: in-place edits of latents never touch the video
    assert torch.equal(vae.decode(video * 3), (video * 3).clamp(-1, 1))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        vae.decode(video[:, :2])

    # streaming: chunks are frame-local, one output frame per latent frame, and encode_video is the inverse
    decoder = streaming_decoder_for(vae)
    assert isinstance(decoder, IdentityStreamingDecoder)
    latents = encode_video(vae, video)
    outs = [decoder.decode(c) for c in latents.split([2, 3], dim=2)]
    assert [o.shape[2] for o in outs] == [2, 3]
    assert torch.equal(torch.cat(outs, dim=2), video)


def test_pixel_vae_normalization_stats_are_honoured():
    vae = PixelSpaceVAE(channels=3, latents_mean=[0.5, 0.0, -0.5], latents_std=[2.0, 1.0, 0.5])
    video = torch.rand(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    latents = encode_video(vae, video)
    torch.testing.assert_close(latents, normalize_latents(vae, video))
    torch.testing.assert_close(latents[:, 0], (video[:, 0] - 0.5) / 2.0)
    torch.testing.assert_close(streaming_decoder_for(vae).decode(latents), video)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_pixel_vae_save_load_roundtrip(tmp_path, dtype):
    vae = PixelSpaceVAE(channels=3, latents_mean=[0.1, 0.2, 0.3], latents_std=[1.0, 2.0, 3.0])
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()
    loaded = PixelSpaceVAE.from_pretrained(tmp_path, torch_dtype=dtype)
    assert isinstance(loaded, PixelSpaceVAE)
    for key in ("channels", "z_dim", "scale_factor_temporal", "scale_factor_spatial", "latents_mean", "latents_std"):
        assert loaded.config[key] == vae.config[key], key
    assert loaded.dtype == (dtype or torch.float32)
    video = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    assert torch.equal(loaded.decode(video.to(loaded.dtype)), video.to(loaded.dtype))


def test_pixel_vae_as_diffusers_pipeline_component(tmp_path):
    """A pipeline holding a PixelSpaceVAE saves and loads through model_index.json like any diffusers component."""
    from diffusers import DiffusionPipeline

    class ToyPipeline(DiffusionPipeline):
        def __init__(self, vae):
            super().__init__()
            self.register_modules(vae=vae)

    ToyPipeline(vae=PixelSpaceVAE(channels=3)).save_pretrained(tmp_path)
    # diffusers records custom components by module path: ["streamgen.vae", "PixelSpaceVAE"]
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == ["streamgen.vae", "PixelSpaceVAE"]
    pipe = ToyPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert isinstance(pipe.vae, PixelSpaceVAE)
    assert pipe.vae.dtype == torch.bfloat16 and pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"


def test_streaming_decoder_for_rejects_other_vaes():
    with pytest.raises(TypeError, match="no streaming decoder"):
        streaming_decoder_for(torch.nn.Identity())


# ---------------------------------------------------------------------------------------------------------------
# frame conversion
# ---------------------------------------------------------------------------------------------------------------


def test_to_uint8_frames():
    video = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 5, 1, 1).repeat(2, 3, 1, 2, 3)
    frames = to_uint8_frames(video)
    assert frames.dtype == np.uint8 and frames.shape == (2, 5, 2, 3, 3)
    assert frames[0, :, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]  # round(0.5 * 255) = 128
    # channel order: [B, 3, F, H, W] channel c -> last axis c
    video = torch.zeros(1, 3, 1, 1, 1)
    video[0, 1] = 1.0
    assert to_uint8_frames(video)[0, 0, 0, 0].tolist() == [128, 255, 128]
    assert to_uint8_frames(video.to(torch.bfloat16))[0, 0, 0, 0].tolist() == [128, 255, 128]
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        to_uint8_frames(torch.zeros(1, 4, 1, 1, 1))
