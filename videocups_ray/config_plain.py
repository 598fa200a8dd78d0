"""Config sections as plain objects, for machines without pydantic (the lent GPU machine).

``benchmarks/gpu_check.py`` must run where only torch, CuPy, Numba, OpenCV and pyarrow are
installed. The pure modules it drives (kernels, cues, labeling, model) only read attributes of
their config section, so a plain namespace holding the same defaults serves them. The defaults
are read from ``config.py``'s source with ``ast`` (no import of pydantic), so ``config.py`` stays
the one place they are written; ``tests/test_gpu_check.py`` checks both agree field by field.
No validation happens here: overrides are checked only for unknown keys.
"""

from __future__ import annotations

import ast
import operator
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_CONFIG_SOURCE = Path(__file__).with_name("config.py")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv}


_FACTORIES = {"dict": dict, "list": list, "set": set}


@lru_cache(maxsize=1)
def _classes() -> dict[str, ast.ClassDef]:
    tree = ast.parse(_CONFIG_SOURCE.read_text(), str(_CONFIG_SOURCE))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _value(node: ast.expr, where: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, where) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, where)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_value(node.left, where), _value(node.right, where))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "Field":  # Field(default, ge=..., ...): the default is the first argument
            if node.args:
                return _value(node.args[0], where)
            factory = next((k.value for k in node.keywords if k.arg == "default_factory"), None)
            if isinstance(factory, ast.Name) and factory.id in _FACTORIES:  # a fresh container per call
                return _FACTORIES[factory.id]()
            raise ValueError(f"{where}: Field() without a positional default or a dict/list/set factory")
        if node.func.id in _classes():  # a nested section, e.g. ActorResources(num_cpus=0.25)
            kwargs = {k.arg: _value(k.value, where) for k in node.keywords}
            return plain_section(node.func.id, **kwargs)
    raise ValueError(f"{where}: cannot read the default {ast.unparse(node)!r} without pydantic")


def _defaults(name: str) -> dict[str, Any]:
    classes = _classes()
    if name not in classes:
        raise KeyError(f"no config section {name!r} in {_CONFIG_SOURCE}; known: {', '.join(sorted(classes))}")
    out: dict[str, Any] = {}
    for base in classes[name].bases:  # fields of section base classes come first
        if isinstance(base, ast.Name) and base.id in classes:
            out.update(_defaults(base.id))
    for stmt in classes[name].body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out[stmt.target.id] = _value(stmt.value, f"{name}.{stmt.target.id}")
    return out


def plain_section(name: str, **overrides: Any) -> SimpleNamespace:
    """The defaults of config section ``name`` (e.g. ``"LabelingConfig"``) with ``overrides``.

    An override of a field the section does not have is an error naming it.
    """
    values = _defaults(name)
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"{name} has no field(s) {', '.join(unknown)}")
    values.update(overrides)
    return SimpleNamespace(**values)
