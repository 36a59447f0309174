"""AnchorWeave's weaving controller: a side transformer that reads the retrieved memory frames (anchors) rendered at
the chunk's cameras and injects what it finds into every block of a frozen base transformer.

Per chunk (one chunk at a time, as a stream generates it):

1. Each anchor ``n`` of ``K``: the chunk's noisy latent, the anchor rendered at the chunk's cameras and its hole mask
   are concatenated along channels and patch-embedded with the base's patch size.
2. All anchors' tokens and the projected text states attend jointly (a few pre-norm blocks); every anchor segment
   gets the same 3D RoPE (frame, row, column), so token ``i`` of every anchor sits at the same place. A sinusoidal
   embedding of the noise level is added to every token.
3. Pose confidence ``c_n`` per anchor and frame from the anchor's source camera relative to the target camera
   (3 x 4 = 12 numbers): an MLP 12 -> 256 -> 128 -> 64 -> 1 with a sigmoid. With ``m_n`` the anchor's token
   visibility (0 where the anchor is a hole: more than half of the token's latent pixels uncovered), the anchors are
   mixed per token with ``w_n = m_n c_n / max(sum_k m_k c_k, 1e-8)``.
4. The mixture goes through a zero-initialised projection into each base block (one slice of the output per block).
5. A target-camera branch: the chunk's camera poses relative to the chunk's reference (12 numbers per frame) through
   a Conv1d over frames, an MLP and a zero-initialised projection per block, added to every token of that frame.

The output is ``block_residuals`` [num_base_layers, B, tokens, base_dim] for
``CausalWanTransformer3DModel.forward_chunk``. Both projections start at zero, so an untrained controller leaves the
base exactly as it was. Only the controller trains (``streamgen.train.weave``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["AnchorWeaveController", "pose_features", "token_visibility", "POSE_FEATURES"]

POSE_FEATURES = 12  # the top 3 x 4 of a relative camera_to_camera transform


def pose_features(relative: torch.Tensor, translation_unit: float) -> torch.Tensor:
    """[..., 4, 4] relative poses -> [..., 12]: rotation rows and the translation in ``translation_unit``s."""
    relative = relative.to(torch.float64).clone()
    relative[..., :3, 3] /= translation_unit
    return relative[..., :3, :].flatten(-2).to(torch.float32)


def token_visibility(holes: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """holes [..., 1, f, h, w] (1 = uncovered latent pixel) -> visibility [..., tokens]: 0 where more than half of a
    token's pixels are holes (AnchorWeave's mask pooling), else 1."""
    lead = holes.shape[:-4]
    pooled = F.avg_pool3d(holes.reshape(-1, *holes.shape[-4:]).float(), patch_size, patch_size)
    return (pooled <= 0.5).float().flatten(1).reshape(*lead, -1)


def _rope_tables(frames: int, rows: int, cols: int, head_dim: int, theta: float, device) -> tuple:
    """cos, sin [tokens, head_dim / 2] of a 3D RoPE: the head dimension split into frame, row and column parts."""
    part = (head_dim // 6) * 2
    sizes = (head_dim - 2 * part, part, part)
    grids = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
    angles = []
    for size, grid in zip(sizes, grids):
        freqs = theta ** (-torch.arange(0, size, 2, dtype=torch.float64) / size)
        angles.append(grid.reshape(-1, 1).double() * freqs)
    angles = torch.cat(angles, 1).to(device)
    return angles.cos().float(), angles.sin().float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, n, D] rotated pairwise (even, odd) by tables [n, D / 2]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)


class _Block(nn.Module):
    """Pre-norm joint attention (text tokens un-roped, anchor tokens roped) and MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, text: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q = torch.cat((q[:, :, :text], _rotate(q[:, :, text:], cos, sin)), 2)
        k = torch.cat((k[:, :, :text], _rotate(k[:, :, text:], cos, sin)), 2)
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, dim))
        return x + self.mlp(self.norm2(x))


class AnchorWeaveController(ModelMixin, ConfigMixin):
    """Side network for a frozen :class:`~streamgen.models.causal_wan.CausalWanTransformer3DModel` (see the module
    doc). ``for_transformer(base)`` reads the base's patch size, width and depth."""

    @register_to_config
    def __init__(self, latent_channels: int = 3, patch_size: tuple[int, int, int] = (1, 8, 8), base_dim: int = 256,
                 base_layers: int = 4, text_dim: int = 384, dim: int = 128, num_layers: int = 2, num_heads: int = 2,
                 freq_dim: int = 64, confidence_hidden: tuple[int, ...] = (256, 128, 64),
                 translation_unit: float = 8.0, rope_theta: float = 10000.0):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of an even size")
        patch = tuple(patch_size)
        self.patch = nn.Conv3d(2 * latent_channels + 1, dim, patch, stride=patch)
        self.time = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(_Block(dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        widths = (POSE_FEATURES, *confidence_hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.confidence = nn.Sequential(*layers, nn.Linear(widths[-1], 1), nn.Sigmoid())
        self.inject = nn.Linear(dim, base_layers * base_dim)
        self.camera = nn.Sequential(nn.Conv1d(POSE_FEATURES, dim, 3, padding=1), nn.SiLU())
        self.camera_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())
        self.camera_inject = nn.Linear(dim, base_layers * base_dim)
        for zero in (self.inject, self.camera_inject):  # an untrained controller changes nothing
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    @classmethod
    def for_transformer(cls, transformer, **kwargs) -> "AnchorWeaveController":
        c = transformer.config
        return cls(latent_channels=c.in_channels, patch_size=tuple(c.patch_size),
                   base_dim=c.num_attention_heads * c.attention_head_dim, base_layers=c.num_layers,
                   text_dim=c.text_dim, **kwargs)

    def _time_embedding(self, timestep: torch.Tensor) -> torch.Tensor:
        half = self.config.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timestep.device) / half)
        angles = timestep.float()[:, None] * freqs[None]
        return self.time(torch.cat((angles.cos(), angles.sin()), 1))

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor | float, anchors: torch.Tensor,
                holes: torch.Tensor, anchor_poses: torch.Tensor, target_poses: torch.Tensor,
                text_states: torch.Tensor | None = None) -> torch.Tensor:
        """Block residuals [base_layers, B, f * tokens per frame, base_dim] for one chunk.

        ``latents`` [B, C, f, h, w] (what the base gets), ``timestep`` a number or [B] (0..1000, the base's),
        ``anchors`` [B, K, C, f, h, w] (zeros in holes), ``holes`` [B, K, 1, f, h, w] (1 = uncovered),
        ``anchor_poses`` [B, K, f, 12] (:func:`pose_features` of each anchor's source camera relative to each target
        camera), ``target_poses`` [B, f, 12] (each frame's camera relative to the chunk's reference), ``text_states``
        [B, L, text_dim] or None."""
        cfg = self.config
        b, c, f, h, w = latents.shape
        k = anchors.shape[1]
        if anchors.shape != (b, k, c, f, h, w) or holes.shape != (b, k, 1, f, h, w):
            raise ValueError(f"anchors must be [{b}, K, {c}, {f}, {h}, {w}] and holes [{b}, K, 1, {f}, {h}, {w}], got "
                             f"{tuple(anchors.shape)} and {tuple(holes.shape)}")
        if anchor_poses.shape != (b, k, f, POSE_FEATURES) or target_poses.shape != (b, f, POSE_FEATURES):
            raise ValueError(f"anchor_poses must be [{b}, {k}, {f}, {POSE_FEATURES}] and target_poses "
                             f"[{b}, {f}, {POSE_FEATURES}], got {tuple(anchor_poses.shape)} and "
                             f"{tuple(target_poses.shape)}")
        dtype = self.patch.weight.dtype
        p_t, p_h, p_w = cfg.patch_size
        grid = (f // p_t, h // p_h, w // p_w)
        per_frame = grid[1] * grid[2]
        tokens = grid[0] * per_frame

        # 1. anchors' tokens, K segments side by side
        stacked = torch.cat((latents[:, None].expand(b, k, -1, -1, -1, -1), anchors, holes), 2).to(dtype)
        x = self.patch(stacked.flatten(0, 1)).flatten(2).transpose(1, 2).reshape(b, k * tokens, -1)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=latents.device).reshape(-1).expand(b)
        x = x + self._time_embedding(t).to(dtype)[:, None]
        # 2. joint attention with the text
        text = 0
        if text_states is not None:
            text_tokens = self.text(text_states.to(dtype))
            text = text_tokens.shape[1]
            x = torch.cat((text_tokens, x), 1)
        cos, sin = _rope_tables(*grid, cfg.dim // cfg.num_heads, cfg.rope_theta, x.device)
        cos, sin = cos.repeat(k, 1), sin.repeat(k, 1)
        for block in self.blocks:
            x = block(x, text, cos, sin)
        x = self.norm(x[:, text:]).view(b, k, tokens, -1)
        # 3. pose-confidence weighted mixture over anchors, per token
        confidence = self.confidence(anchor_poses.to(dtype)).squeeze(-1)  # [B, K, f]
        confidence = confidence[:, :, ::p_t].repeat_interleave(per_frame, 2)
        weight = token_visibility(holes, cfg.patch_size).to(dtype) * confidence
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-8)
        mixed = (weight[..., None] * x).sum(1)  # [B, tokens, dim]
        # 4. + 5. zero-initialised injections: the anchors' per token, the target camera's per frame
        camera = self.camera(target_poses.to(dtype).transpose(1, 2)).transpose(1, 2)  # [B, f, dim]
        camera = self.camera_mlp(camera)[:, ::p_t].repeat_interleave(per_frame, 1)
        out = self.inject(mixed) + self.camera_inject(camera)
        return out.view(b, tokens, cfg.base_layers, cfg.base_dim).permute(2, 0, 1, 3)


def anchor_inputs(memory, indices: list[int], poses: torch.Tensor, camera, k: int, translation_unit: float):
    """The controller's per-anchor inputs for target cameras ``poses`` [f, 4, 4] from pool frames ``indices`` of a
    :class:`~streamgen.geometry.GeometricMemory` (at most ``k``; empty slots are all holes with weight 0):
    (anchors [K, C, f, h, w], holes [K, 1, f, h, w], anchor_poses [K, f, 12])."""
    from ..geometry import invert_pose

    f, h, w = len(poses), camera.height, camera.width
    channels = memory.frames[0].image.shape[-1] if len(memory) else 3
    anchors, holes = torch.zeros(k, channels, f, h, w), torch.ones(k, 1, f, h, w)
    features = torch.zeros(k, f, POSE_FEATURES)
    features[:, :, [0, 5, 10]] = 1.0  # empty slots: the identity
    if indices:
        rendered = memory.anchors(indices[:k], poses, camera)
        n = len(rendered.frames)
        anchors[:n] = rendered.images.permute(0, 4, 1, 2, 3)
        holes[:n] = (~rendered.covered).float()[:, None]
        targets = torch.stack([invert_pose(p.to(torch.float64)) for p in poses])  # world_to_camera of each target
        for a, frame in enumerate(rendered.frames):
            features[a] = pose_features(targets @ frame.pose.to(torch.float64), translation_unit)
    return anchors, holes, features
