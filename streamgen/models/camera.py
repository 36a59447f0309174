"""Camera conditioning for the causal Wan transformer: per-token Plücker rays in, an addition to the patch tokens
out, through a zero-initialised last layer.

It is a separate diffusers model (its own folder and config beside the transformer's, as a ControlNet is), so every
existing Wan checkpoint loads unchanged and, with a fresh encoder, streams exactly as before: the encoder adds
zeros until it is trained. ``forward_chunk(..., camera_tokens=encoder(rays))`` is the one hook in the transformer.

Rays are taken at the latent grid: :func:`latent_plucker` scales the pixel camera to the latent's size, and the
encoder patchifies them with the transformer's own patch size, so one token gets the rays of the latent pixels it
covers (6 x p_h x p_w values).

Which frame the rays are relative to (:func:`chunk_relative_rays`): each chunk's frames in the camera frame of the
last frame the stream showed before the chunk (the chunk's first frame for chunk 0), translations in
``translation_unit``s. So a chunk's rays say how the camera moves on from what the model last saw, whatever the
absolute place, and a cached frame keeps the tokens it was generated with.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..geometry import Intrinsics, plucker_rays

__all__ = ["CameraEncoder", "latent_plucker", "chunk_relative_poses", "chunk_relative_rays", "RAY_CHANNELS"]

RAY_CHANNELS = 6  # Plücker (direction, moment)


def latent_plucker(intrinsics: Intrinsics, poses: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Plücker rays [6, F, h, w] (channels first, like latents) of cameras ``poses`` [F, 4, 4] (camera_to_world) at
    each latent pixel of a latent ``latent_height`` x ``latent_width`` of frames taken with ``intrinsics``."""
    factor = latent_width / intrinsics.width
    if abs(latent_height / intrinsics.height - factor) > 1e-9:
        raise ValueError(f"a {latent_height}x{latent_width} latent is not a uniform scaling of "
                         f"{intrinsics.height}x{intrinsics.width} frames")
    rays = plucker_rays(intrinsics.scaled(factor), poses)  # [F, h, w, 6]
    return rays.permute(3, 0, 1, 2).contiguous()


def chunk_relative_poses(poses: torch.Tensor, first_frame: int, chunk_frames: int,
                         reference: torch.Tensor | None = None) -> torch.Tensor:
    """Poses [F, 4, 4] of frames ``poses`` (stream frames first_frame, first_frame + 1, ...), each relative to its
    chunk's reference: the pose of the frame just before the chunk (``reference`` for the first chunk when the poses
    start mid-chunk-sequence and the frame before is not among them), else the chunk's own first frame."""
    from ..geometry import invert_pose

    poses = poses.to(torch.float64)
    relative = torch.empty_like(poses)
    for i in range(len(poses)):
        frame = first_frame + i
        start = frame - frame % chunk_frames
        if start == 0:
            ref = poses[i - frame] if i - frame >= 0 else reference
        elif start - 1 - first_frame >= 0:
            ref = poses[start - 1 - first_frame]
        else:
            ref = reference
        if ref is None:
            raise ValueError(f"frame {frame}'s chunk reference (frame {max(start - 1, 0)}) is not among the poses: "
                             "pass reference=")
        relative[i] = invert_pose(ref.to(torch.float64)) @ poses[i]
    return relative


def chunk_relative_rays(intrinsics: Intrinsics, poses: torch.Tensor, first_frame: int, chunk_frames: int,
                        latent_height: int, latent_width: int, translation_unit: float = 1.0,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
    """Rays [6, F, h, w] of :func:`chunk_relative_poses`, translations in ``translation_unit``s."""
    relative = chunk_relative_poses(poses, first_frame, chunk_frames, reference)
    relative[:, :3, 3] /= translation_unit
    return latent_plucker(intrinsics, relative, latent_height, latent_width)


class CameraEncoder(ModelMixin, ConfigMixin):
    """Plücker rays [B, 6, f, h, w] -> camera tokens [B, f * (h / p_h) * (w / p_w), inner_dim].

    ``inner_dim`` and ``patch_size`` must be the transformer's (``CameraEncoder.for_transformer`` reads them);
    ``hidden_dim`` > 0 adds a patch convolution and SiLU before the zero-initialised projection;
    ``translation_unit``: the world length one unit of ray translation stands for (see :func:`chunk_relative_rays`).

    ``anchor_channels`` > 0 (the latent's channels) also takes an **anchor** per frame: what the stream's geometric
    memory shows at that frame's camera (its retrieved frames reprojected there, :mod:`streamgen.geometry.memory`)
    plus a hole mask, concatenated to the rays before the patch embedding. AnchorWeave's controller, reduced to one
    composited anchor per frame and one zero-initialised injection at the input (no side transformer, no
    pose-confidence weighting): the model learns to keep what the anchor covers and to draw the holes."""

    @register_to_config
    def __init__(self, inner_dim: int, patch_size: tuple[int, int, int] = (1, 2, 2), hidden_dim: int = 0,
                 in_channels: int = RAY_CHANNELS, translation_unit: float = 1.0, anchor_channels: int = 0):
        super().__init__()
        patch_size = tuple(patch_size)
        in_channels = in_channels + (anchor_channels + 1 if anchor_channels else 0)
        if hidden_dim > 0:
            self.embed = nn.Conv3d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
            self.act = nn.SiLU()
            self.proj = nn.Linear(hidden_dim, inner_dim)
        else:
            self.embed, self.act = None, None
            self.proj = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @classmethod
    def for_transformer(cls, transformer, hidden_dim: int = 0, translation_unit: float = 1.0,
                        anchors: bool = False) -> "CameraEncoder":
        config = transformer.config
        return cls(config.num_attention_heads * config.attention_head_dim, tuple(config.patch_size), hidden_dim,
                   translation_unit=translation_unit, anchor_channels=config.in_channels if anchors else 0)

    @property
    def takes_anchors(self) -> bool:
        return self.config.anchor_channels > 0

    def empty_memory(self, rays: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The anchor inputs that say "no memory" beside ``rays`` [B, 6, f, h, w]: zero anchors, all holes (what the
        first chunk of a clip is trained with); () for an encoder that takes none."""
        if not self.takes_anchors:
            return ()
        b, _, f, h, w = rays.shape
        return rays.new_zeros(b, self.config.anchor_channels, f, h, w), rays.new_ones(b, 1, f, h, w)

    def forward(self, rays: torch.Tensor, anchors: torch.Tensor | None = None,
                holes: torch.Tensor | None = None) -> torch.Tensor:
        """``rays`` [B, 6, f, h, w]; with anchors: ``anchors`` [B, C, f, h, w] (zeros in holes) and ``holes``
        [B, 1, f, h, w] (1 where no memory frame covers)."""
        if rays.dim() != 5 or rays.shape[1] != self.config.in_channels:
            raise ValueError(f"camera rays must be [batch, {self.config.in_channels}, frames, height, width], "
                             f"got {tuple(rays.shape)}")
        if self.takes_anchors:
            want = (rays.shape[0], self.config.anchor_channels, *rays.shape[2:])
            if anchors is None or holes is None or tuple(anchors.shape) != want or tuple(holes.shape) != (
                    want[0], 1, *want[2:]):
                raise ValueError(f"this camera encoder takes anchors {list(want)} and holes [{want[0]}, 1, "
                                 f"{', '.join(map(str, want[2:]))}] with its rays")
            rays = torch.cat((rays, anchors.to(rays.dtype), holes.to(rays.dtype)), 1)
        elif anchors is not None:
            raise ValueError("this camera encoder takes no anchors (anchor_channels is 0)")
        rays = rays.to(self.proj.weight.dtype)
        if self.embed is not None:
            tokens = self.act(self.embed(rays).flatten(2).transpose(1, 2))
            return self.proj(tokens)
        return self.proj(rays).flatten(2).transpose(1, 2)
