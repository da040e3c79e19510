"""Method names -> factories, for the runner and the command line.

A factory is called as ``factory(seed=seed)`` once per direction and returns a fresh
:class:`~xdretrieve.evaluate.methods.Method`. Other parts of the project add theirs with
:func:`register_method` (or by assigning to :data:`METHODS`), e.g. the retriever-based methods::

    def xdretrieve_method(seed: int = 0) -> Method:
        return RetrieverMethod("xdretrieve", build=lambda view: ...)

    register_method("xdretrieve", xdretrieve_method)

Factories import their module lazily, so that importing the registry (and ``--help``) stays light.
"""

from __future__ import annotations

from collections.abc import Callable

from xdretrieve.errors import XDRetrieveError
from xdretrieve.evaluate.methods import Method

MethodFactory = Callable[..., Method]  # factory(seed=int) -> a fresh Method


def _popularity(seed: int = 0) -> Method:
    from xdretrieve.evaluate.popularity import Popularity

    return Popularity()


def _itemknn(seed: int = 0) -> Method:
    from xdretrieve.evaluate.itemknn import ItemKNN

    return ItemKNN()


def _userknn(seed: int = 0) -> Method:
    from xdretrieve.evaluate.userknn import UserKNN

    return UserKNN()


def _emcdr(seed: int = 0) -> Method:
    from xdretrieve.evaluate.emcdr import EMCDR

    return EMCDR(seed=seed)


BASELINES = ("popularity", "itemknn", "userknn", "emcdr")  # run when no method is named

METHODS: dict[str, MethodFactory] = {
    "popularity": _popularity,
    "itemknn": _itemknn,
    "userknn": _userknn,
    "emcdr": _emcdr,
}


def register_method(name: str, factory: MethodFactory, *, replace: bool = False) -> None:
    """Make ``name`` available to :func:`make_method`, the runner and ``--method``.

    Raises:
        XDRetrieveError: the name is taken (unless ``replace``).
    """
    if name in METHODS and not replace:
        raise XDRetrieveError(f"method '{name}' is already registered")
    METHODS[name] = factory


def check_known(name: str) -> None:
    """Raise :class:`XDRetrieveError` listing the known methods when ``name`` is not one."""
    if name not in METHODS:
        raise XDRetrieveError(f"unknown method '{name}'; known methods: {', '.join(METHODS)}")


def make_method(name: str, seed: int = 0) -> Method:
    """A fresh method by name.

    Raises:
        XDRetrieveError: unknown name; the message lists the known ones.
    """
    check_known(name)
    method = METHODS[name](seed=seed)
    method.name = name
    return method
