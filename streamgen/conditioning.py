"""Continuation inputs: an existing picture or clip, fitted to the model's size, for the stream to continue.

The frames are VAE-encoded and written into the KV cache as clean context (t = context timestep) before the first
generated chunk, exactly as if the stream had generated them itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [1, H, W, 3] RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"--init-image {path}: not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]


def load_video(path: str | Path) -> np.ndarray:
    """uint8 [F, H, W, 3] RGB (decord, with an imageio fallback)."""
    from .video_io import read_video

    if not Path(path).is_file():
        raise ValueError(f"--init-video {path}: no such file")
    try:
        frames = read_video(path)
    except Exception as err:  # decoders raise many types; the user needs one message
        # imageio's message carries ffmpeg's whole log (banner, build flags): its last line says what was wrong.
        reason = next((line.strip() for line in reversed(str(err).splitlines()) if line.strip()), type(err).__name__)
        raise ValueError(f"--init-video {path}: not a readable video ({reason[:300]})") from err
    if len(frames) == 0:
        raise ValueError(f"--init-video {path}: the video has no frames")
    return frames


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to cover (height, width) keeping the aspect ratio, then centre-crop: uint8 [F, height, width, 3]."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = [cv2.resize(f, (new_w, new_h), interpolation=interpolation)[top : top + height, left : left + width] for f in frames]
    return np.stack(out)


def frames_to_video_tensor(frames: np.ndarray, temporal_compression: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [1, 3, F', H, W] in [-1, 1], keeping the last 1 + t*k frames a causal VAE with
    temporal compression t can encode (all frames when t = 1)."""
    if temporal_compression > 1:
        keep = 1 + (len(frames) - 1) // temporal_compression * temporal_compression
        frames = frames[-keep:]
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    return video[None]
