"""A live stream's state as plain data: a JSON tree plus named tensors, and back again into a freshly built stream.

:func:`capture` walks the objects of one stream (its engine, cache, slot tables, latent history, every cache
mechanism, RNG, schedule position, decoder state) the way ``copy.deepcopy`` would, and writes what it finds as a
JSON-able tree in which every tensor is replaced by a name in a tensor table. :func:`restore` walks that tree over
a *template*, the same stream built afresh from the same arguments, and puts the values back.

Why a walk over every attribute instead of a hand-written ``state_dict`` per class: a mechanism's state is whatever
it keeps between chunks, and a hand-written list is exactly what a new mechanism forgets. Here a plug-in mechanism
declares its state by keeping it in attributes of plain types (numbers, strings, lists, dicts, tuples, sets,
deques, tensors, dataclasses and other streamgen objects of such attributes); anything else makes :func:`capture`
fail, naming the attribute. What a stream only *uses* is not state and is never written: the models (``nn.Module``),
the pipeline, callables, locks. Those stay as the template has them.

Restoring never runs code from the file: objects are rebuilt only as instances of classes already imported from
the ``streamgen`` package (without calling their ``__init__``), attributes are set plainly, and tensors come from
safetensors. Tensors are copied *into* the template's tensors where shape and dtype match (so preallocated buffers,
and any views of them, stay the same objects); the same object reached twice is written once and restored as one.
"""

from __future__ import annotations

import enum
import functools
import sys
import threading
import types
from collections import deque
from typing import Any

import torch
from torch import nn

# Kinds of objects a stream uses but does not own: left out of the tree, kept as the template has them.
_NOT_STATE = (nn.Module, type(threading.Lock()), type(threading.RLock()))
_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.BuiltinMethodType,
              functools.partial)
_PACKAGE = "streamgen"
MAX_DEPTH = 64  # levels of nesting a restored state may have (a stream's is under 15)


class StateError(ValueError):
    """A stream's state cannot be captured, or a captured state does not fit the stream it is restored into."""


def _is_not_state(value: Any) -> bool:
    # Functions and bound methods (a callback, the engine's reencode) are behaviour; an object with __call__ (a
    # streaming decoder) is not excluded for that.
    if isinstance(value, _NOT_STATE) or isinstance(value, _CALLABLES):
        return True
    # The pipeline (a DiffusionPipeline) is checked by name: this module does not import diffusers.
    return any(cls.__name__ == "DiffusionPipeline" for cls in type(value).__mro__)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _streamgen_class(name: str, where: str) -> type:
    """The class ``module:qualname`` if it belongs to streamgen and is already imported; never imports anything."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None or not (module_name == _PACKAGE or module_name.startswith(_PACKAGE + ".")):
        raise StateError(f"{where}: class {name!r} is not one of streamgen's loaded classes")
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    # Defined in streamgen, not merely reachable from it (streamgen.cli:subprocess.Popen is not streamgen's).
    if not isinstance(obj, type) or obj.__module__.split(".")[0] != _PACKAGE:
        raise StateError(f"{where}: class {name!r} is not one of streamgen's loaded classes")
    return obj


# ---- capture ---------------------------------------------------------------------------------------------------
class _Capture:
    def __init__(self, copy: bool = True):
        self.copy = copy
        self.tensors: dict[str, torch.Tensor] = {}
        self.seen: dict[int, str] = {}  # id of an object or tensor -> the path where it was first written
        self.keep_alive: list[Any] = []  # ids stay unique only while their objects live

    def node(self, value: Any, path: str) -> Any:
        if isinstance(value, enum.Enum):  # before str / int: a str or int enum must come back as its member
            return {"enum": _class_name(type(value)), "value": value.value}
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, slice):
            return {"slice": [value.start, value.stop, value.step]}
        if id(value) in self.seen:
            return {"ref": self.seen[id(value)]}
        self.seen[id(value)] = path
        self.keep_alive.append(value)
        if isinstance(value, torch.Tensor):
            # A copy: the file must not change with the stream, and views of one buffer must not share memory.
            self.tensors[path] = value.detach().to("cpu", copy=True).contiguous() if self.copy else value
            return {"tensor": path, "device": str(value.device)}
        if isinstance(value, torch.Generator):
            return {"generator": str(value.device), "state": self.node(value.get_state(), path + ".state")}
        if isinstance(value, list):
            return [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"tuple": [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, deque):
            return {"deque": [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)], "maxlen": value.maxlen}
        if isinstance(value, (set, frozenset)):
            items = sorted(value, key=repr)  # a stable order: the same state gives the same file
            return {"set" if isinstance(value, set) else "frozenset": [self.node(v, f"{path}[{i}]")
                                                                        for i, v in enumerate(items)]}
        if isinstance(value, dict):
            return {"items": [[self.node(k, f"{path}.key{i}"), self.node(v, f"{path}[{k!r}]")]
                              for i, (k, v) in enumerate(value.items())]}
        cls = type(value)
        if cls.__module__.split(".")[0] != _PACKAGE or not hasattr(value, "__dict__"):
            raise StateError(f"{path}: a {cls.__module__}.{cls.__qualname__} cannot be part of a stream's state "
                             "(keep numbers, strings, containers, tensors or streamgen objects of them)")
        fields = {}
        for name, attr in vars(value).items():
            if not _is_not_state(attr):
                fields[name] = self.node(attr, f"{path}.{name}")
        return {"object": _class_name(cls), "fields": fields}


def capture(root: Any, path: str = "stream", *, copy: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """(the JSON-able tree of ``root``'s state, its tensors by name: copies on the CPU, or with ``copy=False`` the
    stream's own tensors, e.g. to count their bytes). StateError if an attribute holds something that is neither
    state nor a thing a stream merely uses."""
    walk = _Capture(copy)
    tree = walk.node(root, path)
    return tree, walk.tensors


# ---- restore ---------------------------------------------------------------------------------------------------
class _Restore:
    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device):
        self.tensors = tensors
        self.device = device
        self.objects: dict[str, Any] = {}  # path of a first occurrence -> the restored object

    def _target_device(self, saved: str) -> torch.device:
        """Where a tensor without a template goes: its own device on this machine, else the stream's."""
        device = torch.device(saved)
        if device.type == "cpu" or device.type == self.device.type:
            return device
        return self.device

    def value(self, node: Any, template: Any, path: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if path.count(".") + path.count("[") > MAX_DEPTH:  # a stream is a few levels deep; a crafted file may not be
            raise StateError(f"{path[:80]}...: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, list):
            old = template if isinstance(template, list) else []
            items = [self.value(n, old[i] if i < len(old) else None, f"{path}[{i}]") for i, n in enumerate(node)]
            if isinstance(template, list):  # the same list object: others may hold it
                template[:] = items
                items = template
            return self._remember(node, path, items)
        if not isinstance(node, dict) or len(node) == 0:
            raise StateError(f"{path}: unreadable entry {str(node)[:80]!r}")
        kind = next(iter(node))
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise StateError(f"{path}: unknown entry kind {kind!r}")
        return handler(node, template, path)

    def _remember(self, node: Any, path: str, value: Any) -> Any:
        self.objects[path] = value
        return value

    def _ref(self, node, template, path):
        target = node["ref"]
        if target not in self.objects:
            raise StateError(f"{path}: refers to {target!r}, which the state does not hold before it")
        return self.objects[target]

    def _enum(self, node, template, path):
        cls = _streamgen_class(node["enum"], path)
        if not issubclass(cls, enum.Enum):
            raise StateError(f"{path}: {node['enum']!r} is not an enum")
        try:
            return cls(node["value"])
        except ValueError as err:
            raise StateError(f"{path}: {err}") from None

    def _dtype(self, node, template, path):
        dtype = getattr(torch, str(node["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise StateError(f"{path}: unknown dtype {node['dtype']!r}")
        return dtype

    def _device(self, node, template, path):
        return template if isinstance(template, torch.device) else self._target_device(str(node["device"]))

    def _slice(self, node, template, path):
        start, stop, step = node["slice"]
        return slice(start, stop, step)

    def _tensor(self, node, template, path):
        saved = self.tensors.get(node["tensor"])
        if saved is None:
            raise StateError(f"{path}: tensor {node['tensor']!r} is missing from the snapshot's tensors")
        if isinstance(template, torch.Tensor) and template.shape == saved.shape and template.dtype == saved.dtype:
            template.copy_(saved)
            return self._remember(node, path, template)
        device = template.device if isinstance(template, torch.Tensor) else self._target_device(node["device"])
        return self._remember(node, path, saved.to(device))

    def _generator(self, node, template, path):
        generator = template if isinstance(template, torch.Generator) else torch.Generator(
            self._target_device(node["generator"]))
        self._remember(node, path, generator)
        state = self.value(node["state"], None, path + ".state")
        try:
            generator.set_state(state)
        except (RuntimeError, TypeError) as err:
            raise StateError(f"{path}: the RNG state does not fit ({err})") from None
        return generator

    def _tuple(self, node, template, path):
        old = template if isinstance(template, tuple) else ()
        return self._remember(node, path, tuple(self.value(n, old[i] if i < len(old) else None, f"{path}[{i}]")
                                                for i, n in enumerate(node["tuple"])))

    def _deque(self, node, template, path):
        items = [self.value(n, None, f"{path}[{i}]") for i, n in enumerate(node["deque"])]
        if isinstance(template, deque) and template.maxlen == node["maxlen"]:
            template.clear()
            template.extend(items)
            return self._remember(node, path, template)
        return self._remember(node, path, deque(items, maxlen=node["maxlen"]))

    def _set(self, node, template, path):
        items = {self.value(n, None, f"{path}[{i}]") for i, n in enumerate(node["set"])}
        if isinstance(template, set):
            template.clear()
            template.update(items)
            return self._remember(node, path, template)
        return self._remember(node, path, items)

    def _frozenset(self, node, template, path):
        return self._remember(node, path, frozenset(self.value(n, None, f"{path}[{i}]")
                                                    for i, n in enumerate(node["frozenset"])))

    def _items(self, node, template, path):
        old = template if isinstance(template, dict) else {}
        restored = {}
        for i, pair in enumerate(node["items"]):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise StateError(f"{path}: entry {i} is not a key and a value")
            key = self.value(pair[0], None, f"{path}.key{i}")
            restored[key] = self.value(pair[1], old.get(key) if _hashable(key) else None, f"{path}[{key!r}]")
        if isinstance(template, dict):
            template.clear()
            template.update(restored)
            return self._remember(node, path, template)
        return self._remember(node, path, restored)

    def _object(self, node, template, path):
        cls = _streamgen_class(node["object"], path)
        if type(template) is cls:
            obj = template
        else:
            obj = cls.__new__(cls)  # never __init__: the fields below are the whole object
        self._remember(node, path, obj)
        fields = node.get("fields")
        if not isinstance(fields, dict):
            raise StateError(f"{path}: object without fields")
        for name, child in fields.items():
            old = getattr(obj, name, None) if obj is template else None
            object.__setattr__(obj, name, self.value(child, old, f"{path}.{name}"))  # frozen dataclasses too
        return obj


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def restore(tree: Any, tensors: dict[str, torch.Tensor], template: Any, *, device: torch.device,
            path: str = "stream") -> Any:
    """Put the state ``tree`` (with its ``tensors``) back into ``template``, a stream built afresh from the same
    arguments; returns the restored root (``template`` itself when the tree's root is of its class). Tensors without a
    template counterpart go to their saved device, or to ``device`` if this machine has none of that kind."""
    return _Restore(tensors, torch.device(device)).value(tree, template, path)


__all__ = ["StateError", "capture", "restore"]
