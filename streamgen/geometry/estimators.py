"""Depth for real footage: a camera stream's ``depth_estimator`` (``CameraTrack(depth_estimator=...)``) from a
transformers depth-estimation model in a local folder (Depth Anything, DPT, ZoeDepth, ...: whatever
``AutoModelForDepthEstimation`` loads), read from safetensors only and never fetched.

Such a model predicts either depth in scene units (``output="metric"``) or relative inverse depth, up to an unknown
scale (``output="disparity"``, Depth Anything's default): depth = ``scale`` / prediction. A relative model's scale
is its own for every frame, which is the per-frame scale error the revisit bench's ``--depth-error`` measures (local
anchors degrade gracefully under it, one fused cloud does not). A prediction of 0 or less is no surface (inf depth:
nothing of it is rendered), as a disparity model says of the sky.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..safe_load import short_reason
from .pinhole import Intrinsics

__all__ = ["TransformersDepth", "DEPTH_OUTPUTS"]

DEPTH_OUTPUTS = ("metric", "disparity")


class TransformersDepth:
    """``depth_estimator(image uint8 [H, W, 3], intrinsics) -> depth [H, W]`` from the model in ``folder``; its
    prediction is resized to the frame (bilinear) and read as ``output`` times ``scale``."""

    def __init__(self, folder: str | Path, *, output: str = "metric", scale: float = 1.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        if output not in DEPTH_OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(DEPTH_OUTPUTS)}, got {output!r}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such model folder (a depth-estimation model saved with save_pretrained)")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(folder, use_safetensors=True, local_files_only=True)
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{folder}: not a depth-estimation model with safetensors weights "
                             f"({short_reason(err)})") from None
        self.model = model.to(device, dtype).eval()
        self.output, self.scale, self.device, self.dtype = output, float(scale), torch.device(device), dtype

    def __call__(self, image: torch.Tensor, intrinsics: Intrinsics) -> torch.Tensor:
        height, width = intrinsics.height, intrinsics.width
        pixels = np.asarray(image)
        if pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"depth estimator: expected a uint8 image {height}x{width}x3, got {pixels.dtype} "
                             f"{pixels.shape}")
        inputs = self.processor(images=pixels, return_tensors="pt")
        with torch.no_grad():
            predicted = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.dtype)).predicted_depth
        predicted = F.interpolate(predicted[:, None].float(), size=(height, width), mode="bilinear",
                                  align_corners=False)[0, 0].cpu()
        depth = self.scale / predicted if self.output == "disparity" else predicted * self.scale
        return torch.where(predicted > 0, depth, torch.full_like(depth, math.inf))
