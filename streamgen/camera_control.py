"""A stream's camera: the pose of every frame, given up front (a track) or steered live, turned into the camera
tokens each chunk is generated with.

Poses are camera_to_world [4, 4] per latent frame of the stream, counted as the engine counts them (an init clip's
frames first). Past the given track the camera keeps moving by the last ``move()`` (a rigid step per frame in the
camera's own axes, identity at first: it holds still). Only the poses a chunk can still need are kept (the
clean-latent history's frames and the next chunk's), so memory does not grow with stream length.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .geometry import RETRIEVAL_METHODS, GeometricMemory, Intrinsics
from .models.anchor_weave import AnchorWeaveController, anchor_inputs, pose_features
from .models.camera import CameraEncoder, chunk_relative_poses, chunk_relative_rays

__all__ = ["CameraTrack", "StreamCamera", "camera_step", "steering_step", "STEERING", "check_poses",
           "MAX_TRACK_BYTES", "TRACK_RETRIEVALS", "WEAVES", "RETRIEVED_REGION"]

MAX_TRACK_BYTES = 64 * 1024 * 1024  # a camera file larger than this is refused before it is parsed
# a track's anchor sources: the memory's retrieval methods (K frames composited), or "fused" (the baseline AnchorWeave
# argues against: every pool frame's points fused into one global cloud, rendered at the chunk's cameras)
TRACK_RETRIEVALS = (*RETRIEVAL_METHODS, "fused")
WEAVES = ("encoder", "controller", "context")  # how a stream's memory reaches the model (CameraTrack.weave)
RETRIEVED_REGION = "retrieved"  # the cache region weave="context" holds the retrieved frames' K/V in


def camera_step(*, right: float = 0.0, down: float = 0.0, forward: float = 0.0, turn: float = 0.0) -> torch.Tensor:
    """A rigid step [4, 4] in the camera's own axes (x right, y down the image, z along the view), applied per
    frame: translate by (right, down, forward) world units, then turn ``turn`` radians about the view axis."""
    c, s = math.cos(turn), math.sin(turn)
    step = torch.eye(4, dtype=torch.float64)
    step[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    step[:3, 3] = torch.tensor([right, down, forward], dtype=torch.float64)
    return step


# A user's steering keys as directions in the view (x right, y down the image); "stop" holds the camera still.
STEERING: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                            "down": (0.0, 1.0), "stop": (0.0, 0.0)}


def steering_step(key: str, speed: float) -> torch.Tensor:
    """The per-frame step of a steering key (left / right / up / down / stop) at ``speed`` world units per frame:
    the camera flies that way across the view, so the picture slides the other way."""
    if key not in STEERING:
        raise ValueError(f"steering key must be one of {', '.join(STEERING)}, got {key!r}")
    dx, dy = STEERING[key]
    return camera_step(right=dx * speed, down=dy * speed)


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
        orthonormal = torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-4)
        if not torch.allclose(pose[3], bottom) or not orthonormal or torch.det(rotation) < 0:
            raise ValueError(f"{what}: pose {i} is not a rigid camera_to_world transform (rotation orthonormal with "
                             "determinant 1, last row 0 0 0 1)")
    return poses


DepthFn = Callable[[torch.Tensor, Intrinsics], torch.Tensor]  # (pose [4, 4], camera) -> depth [H, W]


@dataclass
class CameraTrack:
    """The camera of a stream: one pinhole camera and a camera_to_world pose per latent frame, from the stream's
    first frame (an init clip's first) on. ``pipe.stream(prompt, camera=CameraTrack(...))``.

    For an encoder that takes anchors, the stream keeps a local geometric memory of its frames, each with its depth:
    ``depth_fn(pose, camera)`` where the scene's depth is known from the pose (the camera world's exact ground), or
    ``depth_estimator(image, camera)`` where it must be estimated from the frame (real footage: ``image`` the decoded
    frame, uint8 [H, W, 3], ``camera`` the track's intrinsics; it returns depth [H, W]), ``memory_frames``
    bounds the pool, and each frame's anchor is the composite of the ``anchors`` frames ``retrieval`` picks
    (``coverage``, ``greedy``, ``fov`` or ``recency``; see :class:`~streamgen.geometry.GeometricMemory`), or with
    ``retrieval="fused"`` the whole pool fused into one point cloud and rendered there (``anchors`` unused).

    ``weave`` says how the memory reaches the model: ``"encoder"``, the camera encoder's own anchor input (one
    composite per frame), ``"controller"``, AnchorWeave's weaving controller (the pipeline's ``controller``: the
    retrieved frames one by one, pose-confidence weighted, into every block; the encoder then gets rays only), or
    ``"context"``, context-as-memory: the retrieved frames' own K/V, as they were written under their own cameras,
    held in the cache's ``retrieved`` region for the chunk to attend to (a preset with that external region, e.g.
    ``camera-context``; the encoder gets rays only)."""

    intrinsics: Intrinsics
    poses: torch.Tensor
    depth_fn: DepthFn | None = None
    memory_frames: int = 32
    anchors: int = 4
    retrieval: str = "coverage"
    keep_first: bool = True  # the stream's first frame stays in the memory and is always an anchor
    coverage_scale: int = 4  # retrieval's coverage grid, this many times coarser than the latent (1: exact)
    eviction: str = "redundancy"  # which frame a full pool drops: the one its neighbours cover best, or the oldest
    weave: str = "encoder"
    controller_every: int = 1  # weave="controller": run it every this many passes of a chunk, reusing it between
    depth_estimator: Callable[[torch.Tensor, Intrinsics], torch.Tensor] | None = None
    align_depth: bool = False  # rescale each remembered frame's depth to the pool's (GeometricMemory.align_depth)

    def __post_init__(self):
        self.poses = check_poses(self.poses, "camera poses")
        if self.depth_fn is not None and self.depth_estimator is not None:
            raise ValueError("give a CameraTrack depth_fn (depth from the pose) or depth_estimator (from the frame), "
                             "not both")
        if self.weave not in WEAVES:
            raise ValueError(f"weave must be one of {', '.join(WEAVES)}, got {self.weave!r}")
        if not 1 <= self.controller_every <= 1000:
            raise ValueError(f"controller_every must be 1..1000, got {self.controller_every}")
        if self.weave != "encoder" and self.retrieval == "fused":
            raise ValueError(f"retrieval='fused' makes one composite, but weave={self.weave!r} takes the retrieved "
                             "frames one by one: choose coverage, greedy, fov or recency")
        if self.retrieval not in TRACK_RETRIEVALS:
            raise ValueError(f"retrieval must be one of {', '.join(TRACK_RETRIEVALS)}, got {self.retrieval!r}")
        if not 2 <= self.memory_frames <= 100_000 or not 1 <= self.anchors <= 64:
            raise ValueError(f"memory_frames must be 2..100000 and anchors 1..64, got {self.memory_frames} and "
                             f"{self.anchors}")

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
            raise ValueError(f"--camera {path}: intrinsics need fx, fy, cx, cy, width, height; {err} is "
                             "missing") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"--camera {path}: bad intrinsics ({err})") from None
        poses = data["poses"]
        if isinstance(poses, list) and poses and all(isinstance(p, list) and len(p) == 16 for p in poses):
            poses = [[p[0:4], p[4:8], p[8:12], p[12:16]] for p in poses]
        try:
            return cls(intrinsics, poses)
        except ValueError as err:
            raise ValueError(f"--camera {path}: {err}") from None

    def settings(self) -> dict:
        """This track as plain data (its poses by checksum, its depth by kind): what a snapshot of its stream
        records, so that the stream resumes only with the same track."""
        k = self.intrinsics
        poses = self.poses.detach().cpu().contiguous()
        depth = ("depth_fn" if self.depth_fn is not None else
                 "depth_estimator" if self.depth_estimator is not None else None)
        return {"intrinsics": [k.fx, k.fy, k.cx, k.cy, k.width, k.height], "frames": len(poses),
                "poses": hashlib.sha256(poses.numpy().tobytes()).hexdigest()[:16], "depth": depth,
                "memory_frames": self.memory_frames, "anchors": self.anchors, "retrieval": self.retrieval,
                "keep_first": self.keep_first, "coverage_scale": self.coverage_scale, "eviction": self.eviction,
                "weave": self.weave, "controller_every": self.controller_every, "align_depth": self.align_depth}

    def to_json(self, path: str | Path) -> None:
        k = self.intrinsics
        Path(path).write_text(json.dumps({
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height},
            "poses": self.poses.tolist()}))


class StreamCamera:
    """Per stream: poses by frame, the geometric memory (when the encoder takes anchors, or the memory is woven in by
    the controller or the cache) and each run of frames' camera tokens and controller inputs. ``latents_of(frames)`` reads the stream's clean latents [B, C, n, h, w] of earlier frames."""

    def __init__(self, encoder: CameraEncoder | None, track: CameraTrack, *, chunk_frames: int, latent_height: int,
                 latent_width: int, keep: int, latents_of: Callable[[list[int]], torch.Tensor] | None = None,
                 controller: AnchorWeaveController | None = None, cache=None, temporal_compression: int = 1):
        self.encoder, self.controller, self.intrinsics = encoder, controller, track.intrinsics
        self.weave, self.cache = track.weave, cache
        self.chunk_frames, self.latent_hw = chunk_frames, (latent_height, latent_width)
        self.keep = max(keep, 2 * chunk_frames) + 1
        self.track = track.poses
        self._poses: dict[int, torch.Tensor] = {}
        self._step = torch.eye(4, dtype=torch.float64)
        self._tokens: dict[int, torch.Tensor] = {}  # each frame's tokens as it was generated (re-encoding reuses them)
        self._weave: dict[tuple[int, ...], tuple] = {}  # each run of frames' controller inputs, likewise
        self.weave_inputs: tuple | None = None  # the controller inputs of the run of frames being computed
        self.controller_every = track.controller_every
        self._passes, self._last_residuals = 0, None
        # The depth sources are behaviour the stream uses, not its state: as partials a snapshot leaves them to the
        # stream it is resumed into (pipe.resume(path, camera=the same track)), whatever object they are.
        self.memory, self.latents_of = None, latents_of
        self.depth_fn = None if track.depth_fn is None else functools.partial(track.depth_fn)
        self.depth_estimator = None if track.depth_estimator is None else functools.partial(track.depth_estimator)
        self.temporal_compression = temporal_compression
        self.track_settings = track.settings()  # what a snapshot records, so it resumes only with this track
        self._pictures: dict[int, torch.Tensor] = {}  # decoded frames awaiting the memory (for depth_estimator)
        if self.weave == "context" and (cache is None or RETRIEVED_REGION not in
                                        [r.name for r in cache.layout.regions if r.external] or cache.keys_roped):
            raise ValueError(f"weave='context' needs a cache preset with an external {RETRIEVED_REGION!r} region and "
                             "un-roped keys (camera-context)")
        if self.weave != "encoder" or (encoder is not None and encoder.takes_anchors):
            if (track.depth_fn is None and track.depth_estimator is None) or latents_of is None:
                raise ValueError("this camera model weaves in a geometric memory: give the CameraTrack a depth_fn "
                                 "(pose, intrinsics) -> depth or a depth_estimator (image, intrinsics) -> depth")
            self.memory = GeometricMemory(track.memory_frames, keep_first=track.keep_first,
                                          coverage_scale=track.coverage_scale, eviction=track.eviction,
                                          align_depth=track.align_depth)
            self.retrieval, self.k = track.retrieval, track.anchors
            self.latent_camera = track.intrinsics.scaled(latent_width / track.intrinsics.width)
            self._remembered = -1  # frames up to this one are in the memory
        self.retrieved: list[int] = []  # the stream frames the latest retrieval picked (none for a fused cloud)

    def observe(self, first: int, count: int, video: torch.Tensor) -> None:
        """The decoded video [B, 3, F, H, W] in [-1, 1] of latent frames first .. first + count - 1: with a
        ``depth_estimator``, each frame's picture (the last video frame its latent decodes to) is kept until the
        memory takes the frame in and estimates its depth."""
        if self.memory is None or self.depth_estimator is None:
            return
        from .decoding import to_uint8_frames

        frames = video.shape[2]
        for i in range(count):
            picture = video[:1, :, frames - (count - 1 - i) * self.temporal_compression - 1, None]
            self._pictures[first + i] = torch.from_numpy(to_uint8_frames(picture)[0, 0])

    def _depth(self, frame: int, pose: torch.Tensor) -> torch.Tensor:
        """Frame ``frame``'s depth at the memory's grid: from its pose (``depth_fn``), or estimated from its decoded
        picture (``depth_estimator``, at the track's resolution, area-averaged to the grid)."""
        if self.depth_estimator is None:
            return self.depth_fn(pose, self.latent_camera)
        picture = self._pictures.pop(frame, None)
        if picture is None:
            raise RuntimeError(f"frame {frame}: no decoded picture to estimate its depth from")
        depth = torch.as_tensor(self.depth_estimator(picture, self.intrinsics))
        size = (self.intrinsics.height, self.intrinsics.width)
        if tuple(depth.shape) != size or not bool((depth > 0).all()):  # NaN fails too; inf: nothing there (sky)
            raise ValueError(f"depth_estimator: frame {frame}'s depth must be positive (inf where nothing is hit), "
                             f"{size[0]}x{size[1]} (H, W); got {tuple(depth.shape)}")
        return F.interpolate(depth[None, None].float(), size=self.latent_hw, mode="area")[0, 0]

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

    def tokens(self, frames: list[int], batch: int) -> torch.Tensor | None:
        """Camera tokens [batch, len(frames) * tokens per frame, dim] of ``frames`` (consecutive; None without a
        camera encoder): those a frame was generated with when it is re-encoded, else new ones. With a controller,
        also sets :attr:`weave_inputs` for the run (reused likewise)."""
        key = tuple(frames)
        reused = all(f in self._tokens for f in frames) and (self.controller is None or key in self._weave)
        if self.weave == "context" and not reused:
            self._hold_retrieved(frames)
        if self.controller is not None:
            if key not in self._weave:
                self._weave[key] = self._weave_run(frames)
                for old in [k for k in self._weave if k[-1] < frames[-1] - self.keep]:
                    del self._weave[old]
            self.weave_inputs = self._weave[key]
            self._passes, self._last_residuals = 0, None
        if self.encoder is None:
            return None
        if reused:
            return torch.cat([self._tokens[f] for f in frames], 1).expand(batch, -1, -1)
        poses = self._run_poses(frames)
        rays = chunk_relative_rays(self.intrinsics, poses, frames[0], self.chunk_frames, *self.latent_hw,
                                   float(self.encoder.config.translation_unit), reference=self._reference(frames[0]))
        weight = self.encoder.proj.weight
        inputs = [rays[None].to(weight.device, torch.float32)]
        if self.weave != "encoder":  # the controller or the cache brings the memory; the encoder gets none
            inputs += self.encoder.empty_memory(inputs[0])
        elif self.encoder.takes_anchors:
            inputs += [t[None].to(weight.device, torch.float32) for t in self.anchors(frames[0], poses)]
        with torch.no_grad():
            tokens = self.encoder(*inputs)
        per_frame = tokens.shape[1] // len(frames)
        for i, f in enumerate(frames):
            self._tokens[f] = tokens[:, i * per_frame:(i + 1) * per_frame]
        for old in [f for f in self._tokens if f < frames[-1] - self.keep]:
            del self._tokens[old]
        return tokens.expand(batch, -1, -1)

    def residuals(self, latents: torch.Tensor, timestep: float, prompt_kv) -> torch.Tensor | None:
        """The controller's block residuals for ``latents`` [B, C, f, h, w] at ``timestep`` under ``prompt_kv`` (of
        the run :meth:`tokens` last prepared); None without a controller."""
        if self.controller is None:
            return None
        self._passes += 1
        if self._last_residuals is not None and (self._passes - 1) % self.controller_every:
            return self._last_residuals  # between the passes that run it, a pass reuses the last injections
        anchors, holes, anchor_poses, target_poses = self.weave_inputs
        b = latents.shape[0]
        text = prompt_kv.states
        with torch.no_grad():
            self._last_residuals = self.controller(
                latents, timestep, anchors.expand(b, *anchors.shape[1:]), holes.expand(b, *holes.shape[1:]),
                anchor_poses.expand(b, *anchor_poses.shape[1:]), target_poses.expand(b, *target_poses.shape[1:]),
                None if text is None else text.to(anchors.device))
        return self._last_residuals

    def _run_poses(self, frames: list[int]) -> torch.Tensor:
        for f in range(frames[0], frames[-1] + 1):
            self.pose(f)
        return torch.stack([self.pose(f) for f in frames])

    def _reference(self, first: int) -> torch.Tensor:
        """The pose the chunk of frame ``first`` is relative to: the frame before the chunk, or its first frame."""
        start = first - first % self.chunk_frames
        return self.pose(start - 1) if start > 0 else self.pose(start)

    def _weave_run(self, frames: list[int]) -> tuple:
        """The controller's inputs for ``frames`` ([1, ...], on its device): anchors retrieved from the memory of
        earlier frames."""
        poses = self._run_poses(frames)
        self._remember(frames[0])
        picked = self._retrieve(poses)
        unit = float(self.controller.config.translation_unit)
        anchors, holes, anchor_poses = anchor_inputs(self.memory, picked, poses, self.latent_camera, self.k, unit)
        relative = chunk_relative_poses(poses, frames[0], self.chunk_frames, reference=self._reference(frames[0]))
        device = self.controller.patch.weight.device  # moved once here, read at every pass of the run
        return tuple(t[None].to(device) for t in (anchors, holes, anchor_poses, pose_features(relative, unit)))

    def _retrieve(self, poses: torch.Tensor) -> list[int]:
        """Pool indices of the frames the track's retrieval picks for target cameras ``poses`` (their stream frames
        are kept in :attr:`retrieved`)."""
        picked = self.memory.retrieve(poses, self.latent_camera, self.k, self.retrieval) if len(self.memory) else []
        self.retrieved = [self.memory.frames[i].time for i in picked]
        return picked

    def _hold_retrieved(self, frames: list[int]) -> None:
        """Context-as-memory: hold the K/V of the memory frames that best cover ``frames``' cameras in the cache's
        retrieved region (those the stream's window still holds are attended there already)."""
        self._remember(frames[0])
        poses = self._run_poses(frames)
        picked = self._retrieve(poses)
        window = {f for region in self.cache.layout.regions if not region.external
                  for f in self.cache.frames_in(region.name)}
        chosen = [self.memory.frames[i] for i in picked]
        chosen = [m for m in chosen if m.payload is not None and m.time not in window]
        if not chosen:
            self.cache.clear(RETRIEVED_REGION)
            return
        kv = torch.cat([m.payload for m in chosen], 3)  # [2, layers, B, n * tokens, H, D]
        self.cache.hold(RETRIEVED_REGION, [m.time for m in chosen], kv[0], kv[1])

    def _remember(self, first: int) -> None:
        """Take every frame before ``first`` not yet in the memory in from the stream's latents."""
        missing = list(range(self._remembered + 1, first))
        if missing:
            latents = self.latents_of(missing)[0]  # [C, n, h, w] of the stream's first video
            for i, frame in enumerate(missing):
                pose = self.pose(frame)
                depth = self._depth(frame, pose)
                payload = None
                if self.weave == "context":  # the frame's K/V as written, kept with it while the pool keeps it
                    kv = self.cache.frame_kv(frame)
                    payload = None if kv is None else torch.stack(kv)
                self.memory.add(latents[:, i].permute(1, 2, 0).float().cpu(), pose, self.latent_camera, frame,
                                depth=depth, payload=payload)
            self._remembered = first - 1

    def anchors(self, first: int, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors [C, f, h, w], holes [1, f, h, w]) for frames first.. at ``poses``, from the memory of every
        frame before ``first`` (which it takes in from the stream's latents first)."""
        self._remember(first)
        if self.retrieval == "fused" and len(self.memory):
            renders = self.memory.fused(poses, self.latent_camera)
            image = torch.stack([r.image for r in renders]).float()
            covered = torch.stack([r.covered for r in renders])
        else:
            picked = self._retrieve(poses) if self.retrieval != "fused" else []
            image, covered = self.memory.composite(picked, poses, self.latent_camera)
        return image.permute(3, 0, 1, 2), (~covered).float()[None]
