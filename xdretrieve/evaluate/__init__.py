"""Evaluation of cold-start cross-domain recommendation under shared/EVALUATION.md.

``protocol`` (test users, queries, truth, the train view), ``metrics``, the methods
(``popularity``, ``itemknn``, ``userknn``, ``emcdr``; ``RetrieverMethod`` adapts the retriever),
``registry`` (names -> factories), ``runner`` (``evaluate``), ``report`` and ``leakcheck``.

Example:
    >>> from xdretrieve.evaluate import evaluate, write_report           # doctest: +SKIP
    >>> results = evaluate(Dataset.from_dir("data/arts-office"), methods=["popularity"])
    >>> write_report(results, "results/")

Names are imported lazily: ``xdretrieve evaluate --help`` needs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "evaluate": "xdretrieve.evaluate.runner",
    "Results": "xdretrieve.evaluate.runner",
    "MethodResult": "xdretrieve.evaluate.runner",
    "Protocol": "xdretrieve.evaluate.protocol",
    "Direction": "xdretrieve.evaluate.protocol",
    "TrainView": "xdretrieve.evaluate.protocol",
    "EvalTask": "xdretrieve.evaluate.protocol",
    "Method": "xdretrieve.evaluate.methods",
    "ScoringMethod": "xdretrieve.evaluate.methods",
    "RetrieverMethod": "xdretrieve.evaluate.methods",
    "METHODS": "xdretrieve.evaluate.registry",
    "BASELINES": "xdretrieve.evaluate.registry",
    "register_method": "xdretrieve.evaluate.registry",
    "make_method": "xdretrieve.evaluate.registry",
    "check_no_leak": "xdretrieve.evaluate.leakcheck",
    "LeakError": "xdretrieve.evaluate.leakcheck",
    "write_report": "xdretrieve.evaluate.report",
    "format_table": "xdretrieve.evaluate.report",
}

__all__ = [
    "BASELINES", "METHODS", "Direction", "EvalTask", "LeakError", "Method", "MethodResult",
    "Protocol", "Results", "RetrieverMethod", "ScoringMethod", "TrainView", "check_no_leak",
    "evaluate", "format_table", "make_method", "register_method", "write_report",
]

if TYPE_CHECKING:
    from xdretrieve.evaluate.leakcheck import LeakError, check_no_leak
    from xdretrieve.evaluate.methods import Method, RetrieverMethod, ScoringMethod
    from xdretrieve.evaluate.protocol import Direction, EvalTask, Protocol, TrainView
    from xdretrieve.evaluate.registry import BASELINES, METHODS, make_method, register_method
    from xdretrieve.evaluate.report import format_table, write_report
    from xdretrieve.evaluate.runner import MethodResult, Results, evaluate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xdretrieve.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
