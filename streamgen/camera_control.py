"""A stream's camera: the pose of every frame, given up front (a track) or steered live, turned into the camera
tokens each chunk is generated with.

Poses are camera_to_world [4, 4] per latent frame of the stream, counted as the engine counts them (an init clip's
frames first). Past the given track the camera keeps moving by the last ``move()`` (a rigid step per frame in the
camera's own axes, identity at first: it holds still). Only the poses a chunk can still need are kept (the
clean-latent history's frames and the next chunk's), so memory does not grow with stream length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .geometry import Intrinsics
from .models.camera import CameraEncoder, chunk_relative_rays

__all__ = ["CameraTrack", "StreamCamera", "camera_step", "check_poses", "MAX_TRACK_BYTES"]

MAX_TRACK_BYTES = 64 * 1024 * 1024  # a camera file larger than this is refused before it is parsed


def camera_step(*, right: float = 0.0, down: float = 0.0, forward: float = 0.0, turn: float = 0.0) -> torch.Tensor:
    """A rigid step [4, 4] in the camera's own axes (x right, y down the image, z along the view), applied per
    frame: translate by (right, down, forward) world units, then turn ``turn`` radians about the view axis."""
    c, s = math.cos(turn), math.sin(turn)
    step = torch.eye(4, dtype=torch.float64)
    step[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    step[:3, 3] = torch.tensor([right, down, forward], dtype=torch.float64)
    return step


def check_poses(poses, what: str = "camera poses", limit: int = 1_000_000) -> torch.Tensor:
    """Poses as float64 [N, 4, 4]; ValueError (one line, naming the first bad pose) unless each is finite and rigid
    (an orthonormal rotation with determinant 1, bottom row 0 0 0 1)."""
    try:
        poses = torch.as_tensor(poses, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what} must be numbers shaped [N, 4, 4] ({err})") from None
    if poses.dim() != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"{what} must be shaped [N, 4, 4], got {list(poses.shape)}")
    if not 1 <= len(poses) <= limit:
        raise ValueError(f"{what}: {len(poses)} poses, expected 1 to {limit:,}")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    for i, pose in enumerate(poses):
        rotation = pose[:3, :3]
        if not torch.isfinite(pose).all():
            raise ValueError(f"{what}: pose {i} has a NaN or infinite value")
        if not torch.allclose(pose[3], bottom) or not torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64),
                                                                     atol=1e-4) or torch.det(rotation) < 0:
            raise ValueError(f"{what}: pose {i} is not a rigid camera_to_world transform (rotation orthonormal with "
                             "determinant 1, last row 0 0 0 1)")
    return poses


@dataclass
class CameraTrack:
    """The camera of a stream: one pinhole camera and a camera_to_world pose per latent frame, from the stream's
    first frame (an init clip's first) on. ``pipe.stream(prompt, camera=CameraTrack(...))``."""

    intrinsics: Intrinsics
    poses: torch.Tensor

    def __post_init__(self):
        self.poses = check_poses(self.poses, "camera poses")

    @classmethod
    def from_json(cls, path: str | Path) -> "CameraTrack":
        """Read ``{"intrinsics": {"fx", "fy", "cx", "cy", "width", "height"}, "poses": [4x4 camera_to_world, ...]}``
        (each pose as 4 rows of 4 numbers or 16 numbers, row by row); ValueError naming the file and the problem."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as err:
            raise ValueError(f"--camera {path}: cannot read it ({err.strerror})") from None
        if size > MAX_TRACK_BYTES:
            raise ValueError(f"--camera {path}: {size:,} bytes, more than the {MAX_TRACK_BYTES:,} a camera file may be")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"--camera {path}: not JSON ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("intrinsics"), dict) or "poses" not in data:
            raise ValueError(f"--camera {path}: expected an object with 'intrinsics' and 'poses'")
        k = data["intrinsics"]
        try:
            intrinsics = Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]), int(k["width"]),
                                    int(k["height"]))
        except KeyError as err:
            raise ValueError(f"--camera {path}: intrinsics need fx, fy, cx, cy, width, height; {err} is missing") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"--camera {path}: bad intrinsics ({err})") from None
        poses = data["poses"]
        if isinstance(poses, list) and poses and all(isinstance(p, list) and len(p) == 16 for p in poses):
            poses = [[p[0:4], p[4:8], p[8:12], p[12:16]] for p in poses]
        try:
            return cls(intrinsics, poses)
        except ValueError as err:
            raise ValueError(f"--camera {path}: {err}") from None

    def to_json(self, path: str | Path) -> None:
        k = self.intrinsics
        Path(path).write_text(json.dumps({
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height},
            "poses": self.poses.tolist()}))


class StreamCamera:
    def __init__(self, encoder: CameraEncoder, intrinsics: Intrinsics, track: torch.Tensor, *, chunk_frames: int,
                 latent_height: int, latent_width: int, keep: int):
        self.encoder, self.intrinsics = encoder, intrinsics
        self.chunk_frames, self.latent_hw = chunk_frames, (latent_height, latent_width)
        self.keep = max(keep, 2 * chunk_frames) + 1
        self.track = check_poses(track, "camera track")
        self._poses: dict[int, torch.Tensor] = {}
        self._step = torch.eye(4, dtype=torch.float64)

    def move(self, step: torch.Tensor) -> None:
        """Move by ``step`` [4, 4] (see :func:`camera_step`) per frame from the next chunk on, past the track."""
        self._step = check_poses(step[None], "camera step")[0]

    def pose(self, frame: int) -> torch.Tensor:
        """The pose of ``frame``: the track's, else the frame before's moved by the current step (frames are asked
        for in order, so the frame before is known)."""
        if frame in self._poses:
            return self._poses[frame]
        if frame < len(self.track):
            pose = self.track[frame]
        elif frame - 1 in self._poses:
            pose = self._poses[frame - 1] @ self._step
        else:
            raise KeyError(f"the camera pose of frame {frame} is no longer kept (it keeps {self.keep} frames)")
        self._poses[frame] = pose
        for old in [f for f in self._poses if f < frame - self.keep]:
            del self._poses[old]
        return pose

    def tokens(self, frames: list[int], batch: int) -> torch.Tensor:
        """Camera tokens [batch, len(frames) * tokens per frame, dim] of ``frames`` (consecutive)."""
        for f in range(frames[0], frames[-1] + 1):
            self.pose(f)
        first = frames[0]
        start = first - first % self.chunk_frames
        reference = self.pose(start - 1) if start > 0 else self.pose(start)
        poses = torch.stack([self.pose(f) for f in frames])
        rays = chunk_relative_rays(self.intrinsics, poses, first, self.chunk_frames, *self.latent_hw,
                                   float(self.encoder.config.translation_unit), reference=reference)
        weight = self.encoder.proj.weight
        with torch.no_grad():
            tokens = self.encoder(rays[None].to(weight.device, torch.float32))
        return tokens.expand(batch, -1, -1)
