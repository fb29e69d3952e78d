"""The MLflow schema has one owner (core/schema.py): no other module of the packages spells a
``dlm.*`` name, no writer imports its reader, and the schema imports no heavy dependency."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from core import schema as M

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "trainer", "orchestrator", "sweeps", "analysis", "bench")
OWNER = REPO / "core" / "schema.py"
# A dlm.* tag name anywhere inside a string constant: a plain literal, a piece of an f-string, a
# search filter ("tags.`dlm.role` = ...") or a message ("its dlm.weights tag") all count, since
# any of them goes stale when the name changes.
NAME = re.compile(r"dlm\.[A-Za-z_]")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are documentation: a bare string statement (module, class
    and function docstrings, and the attribute docstrings under dataclass fields). Prose may name
    a tag; code may not."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def hand_typed_names(source: str) -> list[tuple[int, str]]:
    """(line, text) of every non-docstring string constant of `source` that contains a dlm.* name.
    Comments are not in the AST, so they are free too."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docs and NAME.search(node.value))


def _modules():
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg).rglob("*.py"))


def test_the_scanner_sees_literals_fstrings_and_filters_but_not_docstrings():
    src = ('"""Module doc naming dlm.role is prose."""\n'
           'A = "dlm.family"\n'
           'def f(x):\n'
           '    """dlm.size in a docstring."""\n'
           '    # dlm.knob in a comment\n'
           '    return f"dlm.summary.{x}", "tags.`dlm.run_id` = \'1\'", "no tag here", "dlm/members.json"\n'
           'class C:\n'
           '    x: int = 0\n'
           '    """dlm.sweep in an attribute docstring."""\n')
    assert [line for line, _ in hand_typed_names(src)] == [2, 6, 6]


def test_no_dlm_name_is_typed_outside_core_schema():
    found = [f"{path.relative_to(REPO)}:{line}: {text[:60]!r}"
             for path in _modules() if path != OWNER
             for line, text in hand_typed_names(path.read_text())]
    assert not found, ("dlm.* names typed outside core/schema.py (import them from core.schema):\n"
                       + "\n".join(found))


def test_every_schema_name_is_defined_once():
    names = {k: v for k, v in vars(M).items() if k.isupper() and isinstance(v, str)
             and k.startswith(("TAG_", "PARAM_", "METRIC_"))}
    by_value: dict[str, list[str]] = {}
    for k, v in names.items():
        by_value.setdefault(v, []).append(k)
    assert not [ks for ks in by_value.values() if len(ks) > 1]
    assert all(v.startswith("dlm.") for k, v in names.items() if k.startswith("TAG_")
               and k != "TAG_PARENT")
    assert set(M.SAMPLING_METRICS) <= set(names.values())
    assert M.flop_step(3.4e9) == 3 and M.STEP_UNIT_FLOPS[M.STEP_UNIT] == M.STEP_FLOPS


def test_role_filter_is_the_search_clause_mlflow_takes():
    assert M.role_filter(M.ROLE_TRIAL, M.STATUS_FINISHED) == (
        "tags.`dlm.role` = 'trial' and attributes.status = 'FINISHED'")
    assert M.role_filter(M.ROLE_PARENT) == "tags.`dlm.role` = 'parent'"


def test_writers_never_import_their_reader():
    """The trainer, the orchestrator and core write (or define) what analysis/ reads: none of them
    imports analysis, at module level or inside a function."""
    bad = []
    for pkg in ("core", "trainer", "orchestrator", "sweeps"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.relative_to(REPO)}: {n}" for n in names
                        if n == "analysis" or n.startswith("analysis.")]
    assert not bad, bad


def test_schema_imports_no_heavy_dependency():
    code = ("import sys, core.schema, core.search, trainer.sampling.job; "
            "bad = [m for m in ('torch', 'mlflow', 'ray', 'deepspeed', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
