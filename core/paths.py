"""Where the checkout is: the one definition every default path (MLflow store, caches, runs) uses.

A module that moves deeper in the tree must not silently re-root its defaults (`parents[1]` of a
moved file pointed the corpus cache at trainer/.cache once); tests/test_paths.py pins them.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root (core/ is a top-level package)."""
