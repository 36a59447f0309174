"""Reading PyTorch pickle files (``.pt`` / ``.pth`` / ``.bin``) without ever running code from them.

A pickle is a program: it may name any importable callable (``os.system``) and call it while loading. Every
``torch.load`` in streamgen goes through :func:`torch_load`, which uses ``weights_only=True`` (tensors, plain
containers and the exact extra types a caller allows, nothing else) and turns torch's refusal into one
:class:`UnsafeFileError` line.

A refusal is told apart from a damaged file without relying on torch's wording, which changes between releases
("Unsupported global: GLOBAL x was not an allowed global", "unsupported GLOBAL x whose module y is blocked",
"Unsupported operand 149" for a newer pickle protocol, the same words as for random bytes): when the weights-only
unpickler stops, the file's pickles are read with :mod:`pickletools` (which only parses, never imports or calls) for
the callables and classes they name; a name torch does not allow by itself is a refusal. The torch message is only
a fallback for the name shown.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

REFUSED = "refused: this file would run code"


class UnsafeFileError(ValueError):
    """A pickle that asks for more than tensors and plain containers: loading it could run code, so it is not
    loaded."""

    def __init__(self, path: str | Path, detail: str):
        super().__init__(
            f"{REFUSED} when loaded ({path}: {detail}); streamgen reads PyTorch files with weights_only=True, "
            "which allows only tensors and plain containers: re-save the state dict alone with torch.save or "
            "safetensors"
        )


def short_reason(err: BaseException, limit: int = 200) -> str:
    """``err`` in one short line: torch's weights-only messages lose their preamble and documentation link."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split()) or type(err).__name__
    text = text.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def pickled_globals(path: str | Path) -> list[str]:
    """The ``module.name`` of every callable / class the pickles in ``path`` name (a torch zip file's
    ``data.pkl``, else the file's successive pickles up to the first bytes that are not one), parsed, not run."""
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return names
                with archive.open(member) as f:
                    _scan(f, names)
        else:
            with open(path, "rb") as f:
                while f.peek(1) if hasattr(f, "peek") else True:
                    _scan(f, names)
    except Exception:  # the first bytes that are not a pickle (a legacy file's raw storages, or damage) end the scan
        pass
    return names


# Opcodes that push nothing; every other one leaves something on the stack (a string: tracked, else None).
_NO_PUSH = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO", "STOP"}


def _scan(f, names: list[str]) -> None:
    """Append the globals the next pickle in ``f`` names to ``names``."""
    pushed: list[object] = [None, None]  # the values of the last two pushes, as far as a parser can know them
    memo: dict[int, object] = {}
    for op, arg, _ in pickletools.genops(f):
        name = op.name
        if name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":  # module and name are the two values pushed before it (strings or memo gets)
            module, attr = pushed[-2:]
            names.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "a global")
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name not in _NO_PUSH:
            pushed.append(arg if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name) else None)
        del pushed[:-2]


def refused_names(path: str | Path, allowed: Iterable[str] = ()) -> list[str]:
    """The globals named by ``path``'s pickles that a weights-only load does not allow (torch's own list plus
    ``allowed``)."""
    from torch import _weights_only_unpickler

    safe = set(_weights_only_unpickler._get_allowed_globals()) | set(allowed)
    return list(dict.fromkeys(n for n in pickled_globals(path) if n not in safe))


def torch_load(path: str | Path, *, allow: Iterable[Any] = (), mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with the extra globals ``allow`` (objects, or
    ``(object, "module.name")`` pairs for names an older library wrote); :class:`UnsafeFileError` if the file asks
    for anything else. Other read errors (truncated, corrupted) propagate as torch raises them."""
    import torch

    allow = list(allow)
    with torch.serialization.safe_globals(allow), warnings.catch_warnings():
        # A pickle protocol newer than torch.save's: the refusal below says what matters.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            allowed = [a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in allow]
            names = refused_names(path, allowed)
            text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
            named = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"unrecognized function (.+?)(?: which|$)", text)
            if names:
                raise UnsafeFileError(path, f"its pickle calls {', '.join(names[:5])}") from None
            if named:
                raise UnsafeFileError(path, f"its pickle calls {named.group(1)}") from None
            raise
