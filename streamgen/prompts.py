"""Prompt text limits: how long a prompt may be, and how a prompt is shown in logs and readouts.

The tokenizer reads the whole string before cutting it to ``max_sequence_length`` tokens, so a 10 MB prompt costs
seconds of CPU and gigabytes of memory for 32 tokens of effect. Every entry point (the Python API, the CLI, the demo)
refuses a prompt longer than the pipeline config's ``max_prompt_chars`` before tokenizing it; a few hundred words of
English are ~2,000 characters, far more than any text encoder here reads (MiniLM: 32 tokens, UMT5: 512).
"""

from __future__ import annotations

MAX_PROMPT_CHARS = 2000  # the pipeline config's default ``max_prompt_chars``
SHOWN_PROMPT_CHARS = 80  # how much of a prompt a progress line or a readout shows


def check_prompt_length(prompt: str, limit: int, what: str = "prompt") -> None:
    """ValueError (one line, naming the limit) if ``prompt`` is longer than ``limit`` characters."""
    if isinstance(prompt, str) and len(prompt) > limit:
        raise ValueError(
            f"{what} is {len(prompt):,} characters, more than the {limit:,} allowed (pipeline config "
            "max_prompt_chars)"
        )


def shorten(prompt: str | None, width: int = SHOWN_PROMPT_CHARS) -> str:
    """``prompt`` on one line (whitespace collapsed), cut to ``width`` characters and its length said when longer;
    only its start is read, so a huge prompt costs nothing here."""
    prompt = prompt or ""
    head = " ".join(prompt[: 4 * width].split())
    if len(head) <= width and len(prompt) <= 4 * width:
        return head
    return f"{head[:width].rstrip()}... ({len(prompt):,} chars)"
