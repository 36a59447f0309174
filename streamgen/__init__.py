"""streamgen: interactive streaming video generation on diffusers.

The public classes are importable from the top level, lazily, so that ``import streamgen.cache`` (or the CLI's
``--help``) does not pull in the whole stack.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CausalWanTransformer3DModel": "streamgen.models.causal_wan",
    "PixelSpaceVAE": "streamgen.vae",
    "StreamChunk": "streamgen.pipeline",
    "StreamingVideoPipeline": "streamgen.pipeline",
    "StreamingVideoPipelineOutput": "streamgen.pipeline",
    "VideoStream": "streamgen.pipeline",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'streamgen' has no attribute {name!r}")
