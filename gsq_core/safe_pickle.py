"""Read upstream config pickles without running their code.

Upstream checkpoints store `pickle.dumps(constructor_kwargs)`. Those kwargs may hold OmegaConf
DictConfig / ListConfig objects. This unpickler resolves only an explicit allow-list of globals:
plain builtin containers and numbers, and stand-ins for OmegaConf's containers and nodes that merely
record their state. Anything else (os.system, eval, any class of any other module) is refused
before it is called. omegaconf itself is never imported.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

from .errors import CheckpointError


class _Recorded:
    """Stand-in for an OmegaConf object: keeps the state that pickle hands to BUILD."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DictConfig(_Recorded):
    pass


class _ListConfig(_Recorded):
    pass


class _ValueNode(_Recorded):
    pass


class _Metadata(_Recorded):
    pass


class _TypeMarker:
    """Stands for a typing construct (typing.Any) referenced by OmegaConf metadata."""

    def __init__(self, name: str) -> None:
        self.name = name


_VALUE_NODES = ("AnyNode", "IntegerNode", "FloatNode", "BooleanNode", "StringNode", "BytesNode")

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("collections", "defaultdict"): collections.defaultdict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("typing", "Any"): _TypeMarker("Any"),
    ("omegaconf.dictconfig", "DictConfig"): _DictConfig,
    ("omegaconf.listconfig", "ListConfig"): _ListConfig,
    ("omegaconf.base", "Metadata"): _Metadata,
    ("omegaconf.base", "ContainerMetadata"): _Metadata,
    **{("omegaconf.nodes", name): _ValueNode for name in _VALUE_NODES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"the checkpoint's config pickle references {module}.{name}, which is not a plain "
                "config value; refusing to load it (it could run arbitrary code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("the checkpoint's config pickle references external objects; refusing to load it")


# Budgets: a flex_gen config pickle is a few KB, a few levels deep, with a few hundred values.
MAX_PICKLE_BYTES = 4 * 2**20
MAX_DEPTH = 64  # containers inside containers (OmegaConf nodes count as one level each)
MAX_VALUES = 100_000  # values once shared references are expanded, as to_plain would copy them


def load_config_pickle(data: bytes) -> Any:
    """Decode a config pickle into plain dicts, lists and scalars, or raise CheckpointError.

    Within budgets: at most MAX_PICKLE_BYTES, MAX_DEPTH levels of nesting and MAX_VALUES values
    after shared references are expanded ("billion laughs"); reference cycles are refused."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"the checkpoint's config must be pickled bytes, got {type(data).__name__}")
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"the checkpoint's config pickle is {len(data):,} bytes, more than a config needs ({MAX_PICKLE_BYTES:,} at most)"
        )
    try:
        raw = _RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("the checkpoint's config pickle is nested too deeply to be a config") from None
    except Exception as error:  # any malformed pickle: truncated, wrong opcodes, bad calls
        raise CheckpointError(f"the checkpoint's config pickle is corrupt: {type(error).__name__}: {error}") from None
    check_budget(raw)
    return to_plain(raw)


def _children(value: Any) -> list[Any]:
    """What to_plain copies out of value: container items, an OmegaConf node's _content / _val
    (never its _parent or metadata, which point back up the tree)."""
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (_DictConfig, _ListConfig, _ValueNode)):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        name = "_val" if isinstance(value, _ValueNode) else "_content"
        return [state[name]] if isinstance(state, dict) and name in state else []
    return []


def check_budget(root: Any) -> None:
    """CheckpointError unless the unpickled object graph is acyclic, at most MAX_DEPTH deep and at most
    MAX_VALUES values when expanded. Iterative, and each shared container is measured once."""
    expanded: dict[int, int] = {}  # id -> values in its expansion (itself included)
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        value, children_done = stack.pop()
        key = id(value)
        children = _children(value)
        if not children:
            continue
        if children_done:
            on_path.discard(key)
            inner = [c for c in children if _children(c)]
            expanded[key] = 1 + len(children) - len(inner) + sum(expanded[id(c)] for c in inner)
            depth[key] = 1 + max((depth[id(c)] for c in inner), default=0)
            if depth[key] > MAX_DEPTH:
                raise CheckpointError(f"the checkpoint's config pickle nests more than {MAX_DEPTH} levels deep; not a config")
            if expanded[key] > MAX_VALUES:
                raise CheckpointError(
                    f"the checkpoint's config pickle expands to more than {MAX_VALUES:,} values (shared references "
                    "repeated over and over, a 'billion laughs'); not a config"
                )
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise CheckpointError("the checkpoint's config pickle refers to itself (a reference cycle); not a config")
        if len(on_path) >= MAX_DEPTH:
            raise CheckpointError(f"the checkpoint's config pickle nests more than {MAX_DEPTH} levels deep; not a config")
        on_path.add(key)
        stack.append((value, True))
        stack.extend((child, False) for child in children if id(child) not in expanded)


def to_plain(value: Any) -> Any:
    """Replace recorded OmegaConf objects by the plain values they hold."""
    if isinstance(value, _DictConfig):
        content = _state_field(value, "_content")
        return _plain_leaf(content) if not isinstance(content, dict) else {k: to_plain(v) for k, v in content.items()}
    if isinstance(value, _ListConfig):
        content = _state_field(value, "_content")
        return _plain_leaf(content) if not isinstance(content, (list, tuple)) else [to_plain(v) for v in content]
    if isinstance(value, _ValueNode):
        return _plain_leaf(_state_field(value, "_val"))
    if isinstance(value, (_Metadata, _TypeMarker, _Recorded)):
        raise CheckpointError("the checkpoint's config holds an OmegaConf object outside a config value")
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return _plain_leaf(value)


def _state_field(obj: _Recorded, name: str) -> Any:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}
    if not isinstance(state, dict) or name not in state:
        raise CheckpointError(f"the checkpoint's config holds an OmegaConf object without {name!r}")
    return to_plain(state[name]) if isinstance(state[name], _Recorded) else state[name]


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, _Recorded):
        return to_plain(value)
    if isinstance(value, (dict, list, tuple)):
        return to_plain(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, str) and value.startswith("${"):
            raise CheckpointError(
                f"the checkpoint's config holds the unresolved OmegaConf interpolation {value!r}; "
                "resolve the config before saving the checkpoint"
            )
        return value
    raise CheckpointError(f"the checkpoint's config holds an unsupported value of type {type(value).__name__}")
