"""Default locations stay at the repository root wherever the module defining them sits."""
from __future__ import annotations

from pathlib import Path

from core import schema
from core.paths import REPO_ROOT
from trainer.data.loader import DataConfig

REPO = Path(__file__).resolve().parents[1]


def test_repo_root_is_the_checkout():
    assert REPO_ROOT == REPO
    assert (REPO_ROOT / "pyproject.toml").is_file()


def test_default_store_and_caches_sit_at_the_repo_root(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DLM_CACHE_DIR", raising=False)
    assert schema.default_tracking_uri() == f"sqlite:///{REPO / 'mlflow.db'}"
    assert DataConfig().resolved_cache_dir() == REPO / ".cache" / "corpus"
    monkeypatch.setenv("DLM_CACHE_DIR", "/elsewhere")
    assert DataConfig().resolved_cache_dir() == Path("/elsewhere")
