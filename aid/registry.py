"""Name -> class registries filled by decorators where each class is defined (the timm pattern)."""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from collections.abc import Callable
from functools import cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named registry. ``@registry.register("name")`` adds a class; ``registry.get(name)`` finds it.

    Unknown names raise a ``KeyError`` whose message gives a close match and lists the allowed names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers the class under ``name`` (lower case)."""

        def deco(cls: type[T]) -> type[T]:
            key = name.lower()
            if key in self._items and self._items[key] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[key] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; ``KeyError`` naming the allowed ones otherwise."""
        key = str(name).lower()
        if key not in self._items:
            allowed = self.names()
            raise KeyError(f"unknown {self.kind} {name!r}{suggest(key, allowed)}; allowed: {', '.join(allowed)}")
        return self._items[key]

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``name``."""
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items


# ---------------------------------------------------------------------------------------------------------
# Which keyword arguments a constructor accepts (config checks of attacks, interpreters and callbacks)


@cache
def accepted_arguments(target: Callable[..., Any] | type) -> frozenset[str] | None:
    """Names a class's constructor (or a function) accepts as keyword arguments, ``None`` when unknown.

    ``**kwargs`` are followed into the call that receives them in the function's source:
    ``super().__init__(a, **kwargs)`` (the next constructor of the class's MRO), ``cls(a, **kwargs)`` in a
    classmethod, or ``Name(...)`` / ``Name.attr(...)`` of the function's module; the callee's parameters that
    the call fills by position are not counted. When the receiver cannot be found the answer is ``None``
    (callers then accept every name rather than refuse a valid one). Answers are cached per target.

    Example:
        >>> accepted_arguments(ADV2Adaptive) >= {"squeezer", "eps", "warm_steps"}
        True
    """
    if isinstance(target, type):
        return _accepted(*_constructor(target, 0))
    return _accepted(target, None, 0, 0)


def _constructor(cls: type, start: int) -> tuple[Callable[..., Any], type, int, int]:
    """(``__init__`` of the first class from ``cls.__mro__[start:]`` that defines one, cls, its MRO index, 1)."""
    for i, klass in enumerate(cls.__mro__[start:], start):
        if "__init__" in vars(klass):
            return vars(klass)["__init__"], cls, i, 1
    return object.__init__, cls, len(cls.__mro__) - 1, 1


def _accepted(fn: Callable[..., Any], cls: type | None, mro_index: int, skip: int) -> frozenset[str] | None:
    """Keyword names of ``fn`` minus its first ``skip`` positional parameters (self and those given by position)."""
    if fn is object.__init__:
        return frozenset()
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names, dropped = set(), 0
    var_kw: str | None = None
    for p in params:
        if p.kind in positional and dropped < skip:
            dropped += 1
            continue
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = p.name
    if var_kw is None:
        return frozenset(names)
    forwarded = _forwarded(fn, var_kw, cls, mro_index)
    return None if forwarded is None else frozenset(names | forwarded)


def _forwarded(fn: Callable[..., Any], var_kw: str, cls: type | None, mro_index: int) -> frozenset[str] | None:
    """Keyword names accepted by the call of ``fn``'s body that receives ``**var_kw``; None if not found."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if not any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == var_kw for k in node.keywords):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args):
            return None
        given = {k.arg for k in node.keywords if k.arg is not None}
        n_pos = len(node.args)
        func = node.func
        if (  # super().__init__(...): the next constructor of the MRO
            isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "super" and cls is not None
        ):
            init, _, index, skip = _constructor(cls, mro_index + 1)
            names = _accepted(init, cls, index, skip + n_pos)
        else:
            callee = _resolve(func, fn)
            if callee is None:
                return None
            if isinstance(callee, type):
                init, owner, index, skip = _constructor(callee, 0)
                names = _accepted(init, owner, index, skip + n_pos)
            else:
                names = _accepted(callee, None, 0, n_pos)
        return None if names is None else frozenset(names - given)
    return None


def _resolve(func: Any, fn: Callable[..., Any]) -> Any:
    """The object a call's ``func`` node names: ``cls`` of a classmethod, a module global or its attribute."""
    scope = dict(getattr(inspect.unwrap(getattr(fn, "__func__", fn)), "__globals__", {}))
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        scope["cls"] = owner
    if isinstance(func, ast.Name):
        return scope.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in scope:
        return getattr(scope[func.value.id], func.attr, None)
    return None


def check_arguments(
    what: str, target: Callable[..., Any] | type, kwargs: dict[str, Any], exclude: tuple[str, ...] = (), path: str = ""
) -> None:
    """ValueError when a name of ``kwargs`` is not an argument of ``target`` (see :func:`accepted_arguments`).

    The message names ``path`` + the argument, ``what`` it was given to, a close match and the accepted names;
    ``exclude``: names the caller passes itself (not the user's to give).
    """
    accepted = accepted_arguments(target)
    if accepted is None:
        return
    allowed = sorted(accepted - set(exclude))
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"{path}{key}: {what} has no argument {key!r}{suggest(key, allowed)}; accepted: "
                             f"{', '.join(allowed) or 'none'}")


def suggest(name: str, allowed: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` to ``name`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
