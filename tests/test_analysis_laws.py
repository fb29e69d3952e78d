"""The law registry: a new law is one entry of analysis.laws.LAWS, fitted by the shared bootstrap
driver and reported (JSON, table, printout) without touching the study or the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import huber, report
from analysis.bootstrap import HuberLaw, Law
from analysis.laws import LAWS, fit_law
from analysis.load import table_from_frame
from analysis.study import fit_study

# L(N) = E + A/N^alpha, planted; a law of loss in N alone (not one the project fits).
PLANTED = {"E": 1.7, "A": 400.0, "alpha": 0.34}
SIZE_LAW = HuberLaw(form=huber.LawForm(
    name="size", formula="L(N) = E + A/N^alpha",
    terms=(huber.Term("E"), huber.Term("A", "alpha", "N")), params=("E", "A", "alpha")))


def _table(seed: int = 0) -> pd.DataFrame:
    N = np.repeat(np.logspace(6, 10, 12), 2)
    loss = (PLANTED["E"] + PLANTED["A"] / N ** PLANTED["alpha"]) \
        * np.exp(0.005 * np.random.default_rng(seed).standard_normal(N.size))
    return table_from_frame(pd.DataFrame({"family": "x", "N": N, "D": 20 * N, "loss": loss}))[0]


def test_a_new_law_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(LAWS, "size", SIZE_LAW)
    study = fit_study(_table(), n_boot=100)
    fit = study.groups[0].law("size")
    assert fit is not None and fit.law == "size" and fit.n_boot == 100
    for k, v in PLANTED.items():
        assert fit.params[k].lo <= v <= fit.params[k].hi, (k, fit.params[k])
    assert fit.params["alpha"].value == pytest.approx(PLANTED["alpha"], rel=0.05)
    doc = report.fits_json(study)
    assert doc["groups"]["x"]["laws"]["size"]["formula"] == "L(N) = E + A/N^alpha"
    table = report.fits_table(study)
    assert set(table[table["law"] == "size"]["quantity"]) == {"E", "A", "alpha"}
    assert "L(N) = E + A/N^alpha" in report.format_table(study)
    # the same entry fitted alone, by name: the same numbers (the driver's draws are seeded)
    alone = fit_law("size", _table(), "x", n_boot=100)
    assert alone.params == fit.params


def test_unregistered_law_names_raise_and_forms_own_their_names():
    study = fit_study(_table(), n_boot=0)
    with pytest.raises(KeyError, match="nope"):
        study.groups[0].law("nope")
    for name, law in LAWS.items():
        assert law.name == name and law.formula and law.params
        if law.form is not None:
            assert (law.form.name, law.form.params) == (name, law.params)
    with pytest.raises(ValueError, match="params"):
        HuberLaw(form=SIZE_LAW.form, params=("E", "A"))
    with pytest.raises(ValueError, match="formula"):
        Law(name="bare", params=("a",))
