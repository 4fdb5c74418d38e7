"""pytest configuration beside test_mcp_docker.py.

Marks every test that needs a container engine with the ``engine`` marker (declared in pyproject.toml),
so that ``pytest -m "not engine"`` runs exactly the tests that need none and ``-m engine`` the others.
A test needs an engine when it (or a fixture it uses) reaches ``require_engine()``, directly or through
the suite's helpers; that is worked out from the code, so a new test is marked without anyone
remembering to.
"""

from __future__ import annotations

import types
from typing import Any

import pytest


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _code_of(value: Any) -> list[types.CodeType]:
    value = getattr(value, "__wrapped__", value)  # a fixture: the function it wraps
    if isinstance(value, types.FunctionType):
        return [value.__code__]
    if isinstance(value, type):
        return [member.__code__ for member in vars(value).values() if isinstance(member, types.FunctionType)]
    return []


def _needs_engine(module: types.ModuleType) -> set[str]:
    """Module-level names whose code reaches require_engine(), transitively."""
    uses = {name: set().union(*map(_names_used, _code_of(value)))
            for name, value in vars(module).items() if _code_of(value)}
    needing = {"require_engine"}
    while True:
        more = {name for name, used in uses.items() if name not in needing and used & needing}
        if not more:
            return needing
        needing |= more


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[str, set[str]] = {}
    for item in items:
        module = getattr(item, "module", None)
        function = getattr(item, "function", None)
        if module is None or function is None:
            continue
        needing = cache.setdefault(module.__name__, _needs_engine(module))
        used = _names_used(function.__code__) | set(getattr(item, "fixturenames", ()))
        if used & needing:
            item.add_marker(pytest.mark.engine)
