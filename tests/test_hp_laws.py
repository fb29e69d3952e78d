"""Optimal batch size and LR laws (analysis/hp_laws.py): planted laws are recovered, a surface
without an interior optimum is left out and said so, and too small a grid is refused."""
import numpy as np
import pytest

from analysis import hp_laws, synthetic
from analysis.bootstrap import TooFewPoints
from analysis.load import table_from_frame


def _group(**kw):
    table, _ = table_from_frame(synthetic.hp_grid_table(**kw))
    return table


def test_surface_optimum_of_a_known_quadratic():
    # log L = (x - 1)^2 + 2 (y + 2)^2 + 0.5 (x - 1)(y + 2): minimum at (1, -2)
    x0, y0 = 1.0, -2.0
    q = np.array([x0 ** 2 + 2 * y0 ** 2 + 0.5 * x0 * y0, -2 * x0 - 0.5 * y0, -4 * y0 - 0.5 * x0,
                  1.0, 2.0, 0.5])
    x, y, _, kept = hp_laws.surface_optimum(q, ((0, 2), (-3, -1)))
    assert (x, y, kept) == (pytest.approx(1.0), pytest.approx(-2.0), True)
    assert not hp_laws.surface_optimum(q, ((2, 3), (-3, -1)))[3]          # off the grid
    assert not hp_laws.surface_optimum(q * [1, 1, 1, -1, 1, 1], ((0, 2), (-3, -1)))[3]  # saddle


@pytest.mark.parametrize("b,c", [(0.8225, 0.341), (0.6, 0.5)])
def test_planted_batch_and_lr_exponents_recovered_within_5_percent(b, c):
    # B* must stay inside the batch grid over the D range: pick k so it is centred
    k = 512 / (2.5e6 ** b)
    fit = hp_laws.fit_hp(_group(b=b, c=c, k=k), "synthetic", n_boot=200, seed=0)
    assert fit.batch_law.exponent.value == pytest.approx(b, rel=0.05)
    assert fit.lr_law.exponent.value == pytest.approx(c, rel=0.05)
    assert fit.batch_law.coefficient.value == pytest.approx(k, rel=0.3)
    e = fit.batch_law.exponent
    assert e.lo < b < e.hi and e.hi - e.lo < 0.2
    assert all(o.kept for o in fit.optima) and len(fit.optima) == 8


def test_optimum_off_the_grid_is_left_out_with_a_message():
    # B* = 512 tokens at D = 2.5e6 and far above the grid at the largest D (b = 2)
    fit = hp_laws.fit_hp(_group(b=2.0, k=512 / 2.5e6 ** 2, Ds=(1e6, 2.5e6, 4e7)), "g", n_boot=0)
    assert [o.kept for o in fit.optima if o.D == 4e7] == [False, False]
    assert any("no minimum inside the grid" in m for m in fit.messages)


def test_too_few_grid_values_refused_naming_the_group():
    g = _group(batches=(256, 512), k=512 / 2.5e6 ** 0.8225)
    assert not hp_laws.has_hp_grid(g)
    with pytest.raises(TooFewPoints, match="tiny"):
        hp_laws.fit_hp(g, "tiny", n_boot=0)
