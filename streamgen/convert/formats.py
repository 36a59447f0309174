"""Checkpoint formats ``streamgen convert`` reads (no heavy imports: the CLI's ``--help`` imports this)."""

FORMATS = ("self-forcing", "longlive", "anchor-forcing", "wan")
FORMAT_NAMES = {
    "self-forcing": "Self-Forcing", "longlive": "LongLive", "anchor-forcing": "Anchor Forcing", "wan": "Wan",
}
# Which entry of a training checkpoint holds the generator, best first (see ``checkpoints`` for the sources).
WEIGHT_KEYS = {
    "self-forcing": ("generator_ema", "generator"),
    "longlive": ("generator", "generator_ema", "model"),
    "anchor-forcing": ("generator", "generator_ema", "model"),
}
# The cache preset a converted pipeline streams with by default (``configs/cache/<name>.yaml``).
DEFAULT_CACHE = {
    "self-forcing": "self-forcing", "longlive": "longlive", "anchor-forcing": "longlive", "wan": "self-forcing",
}
DTYPES = ("float32", "bfloat16", "float16")
