"""streamgen: interactive streaming video generation on diffusers."""

__version__ = "0.1.0"
