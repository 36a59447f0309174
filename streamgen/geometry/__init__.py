"""Camera geometry for camera-controlled streams: pinhole cameras, poses, Plücker rays, z-buffered reprojection of a
frame with depth into another camera, and local geometric memory (a bounded pool of posed frames with
coverage-driven retrieval). General pinhole geometry, so the same code serves the camera world's exact depth and
estimated depth of real footage (whose errors :class:`DepthError` models)."""

from .depth_error import DepthError
from .estimators import TransformersDepth
from .memory import RETRIEVAL_METHODS, Anchors, GeometricMemory, MemoryFrame
from .pinhole import Intrinsics, in_view, invert_pose, pixel_centres, plucker_rays, project, ray_directions, unproject
from .retrieval import best_coverage, greedy_coverage, most_recent, top_k, union_size
from .splat import Splat, psnr, reproject, splat, token_holes

__all__ = ["Intrinsics", "invert_pose", "pixel_centres", "unproject", "project", "in_view", "ray_directions",
           "plucker_rays",
           "Splat", "splat", "reproject", "token_holes", "psnr",
           "greedy_coverage", "best_coverage", "top_k", "most_recent", "union_size",
           "MemoryFrame", "GeometricMemory", "Anchors", "RETRIEVAL_METHODS", "DepthError",
           "TransformersDepth"]
