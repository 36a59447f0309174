"""The loading progress bars of diffusers ("Loading pipeline components") and transformers ("Loading weights"),
switched off for a block and put back as they were after it.

The commands are quiet unless ``-v`` (:mod:`streamgen.cli`); a packaged text encoder always loads quietly, since
it loads at a stream's first prompt, where its bar would land inside the pipeline's own.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_loading(quiet: bool = True):
    """No diffusers / transformers / huggingface_hub progress bars inside the block (``quiet=False``: no change)."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_on = diffusers_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_off = are_progress_bars_disabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # also turns off huggingface_hub's bars
    try:
        yield
    finally:
        if diffusers_on:
            diffusers_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if are_progress_bars_disabled() != hub_off:  # transformers switches the hub's bars along with its own
            (disable_progress_bars if hub_off else enable_progress_bars)()
