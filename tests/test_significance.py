"""The search's significance rule (search_space/significance.py): Holm's step-down over one-sided z-tests at 5%.
Checked against its definition written out by hand, under a null where no position helps (scores drawn around
zero with their errors: at most 5% of searches may keep any position), and with one position of a clear gain."""
import math
import random

import pytest

from search_space.significance import ALPHA, RULE, holm_passes, one_sided_p


def test_one_sided_p_is_the_normal_tail():
    assert one_sided_p(0.0, 1.0) == pytest.approx(0.5)
    assert one_sided_p(1.6448536, 1.0) == pytest.approx(0.05, abs=1e-6)
    assert one_sided_p(-3.0, 1.0) == pytest.approx(1 - 0.0013499, abs=1e-6)
    assert one_sided_p(1e-9, 0.0) == 0.0 and one_sided_p(0.0, 0.0) == 1.0 and one_sided_p(math.nan, 1.0) == 1.0


def test_holm_steps_down_as_defined():
    # p-values 0.001, 0.011, 0.02, 0.5 (z from the normal quantiles): thresholds 0.05/4, 0.05/3, 0.05/2, 0.05
    z = {0.001: 3.0902323, 0.011: 2.2903679, 0.02: 2.0537489, 0.5: 0.0}
    scores = [z[0.02], z[0.001], z[0.5], z[0.011]]
    assert holm_passes(scores, [1.0] * 4) == [True, True, False, True]  # 0.02 <= 0.025: all three pass
    # a first failure stops the steps: 0.03 > 0.025, so 0.03 and everything after it stays
    scores[0] = 1.8807936  # p = 0.03
    assert holm_passes(scores, [1.0] * 4) == [False, True, False, True]
    assert RULE == "holm-0.05" and ALPHA == 0.05
    with pytest.raises(ValueError, match="one error per score"):
        holm_passes([1.0], [1.0, 2.0])


def test_under_the_null_at_most_five_percent_of_searches_keep_a_position():
    """8 positions, none helping: each score is its error times a standard normal draw. A one-standard-error
    rule keeps something in about 1 - 0.84^8 = 75% of such searches; Holm in at most 5%."""
    rng = random.Random(2026)
    searches, kept_any, kept_by_one_error = 4000, 0, 0
    for _ in range(searches):
        errors = [rng.uniform(0.5e-5, 2e-5) for _ in range(8)]
        scores = [e * rng.gauss(0.0, 1.0) for e in errors]
        kept_any += any(holm_passes(scores, errors))
        kept_by_one_error += any(s > e for s, e in zip(scores, errors))
    assert kept_any / searches <= ALPHA
    assert kept_by_one_error / searches > 0.6  # what the old rule did: most gainless searches kept a position


def test_a_position_with_a_clear_gain_is_kept_and_the_rest_are_not():
    rng = random.Random(7)
    found = wrong = 0
    for _ in range(1000):
        errors = [1e-5] * 8
        scores = [e * rng.gauss(0.0, 1.0) for e in errors]
        scores[3] = 5e-5 + 1e-5 * rng.gauss(0.0, 1.0)  # a true gain of 5 standard errors
        passed = holm_passes(scores, errors)
        found += passed[3]
        wrong += any(p for i, p in enumerate(passed) if i != 3)
    assert found / 1000 > 0.9
    assert wrong / 1000 <= ALPHA  # the gainless positions beside it: still at most 5% of searches keep one


def test_the_rule_divides_by_the_between_search_spread_where_that_is_larger(monkeypatch):
    from search_space import significance
    from search_space.significance import decision_errors
    monkeypatch.setattr(significance, "BETWEEN_SEARCH_FACTOR", {"car": 3.0, "sr": 0.5})
    assert decision_errors("car", [1e-5, 2e-5]) == pytest.approx([3e-5, 6e-5])
    assert decision_errors("sr", [1e-5]) == [1e-5]  # smaller between searches: the within-search error stands
    assert decision_errors("denoise", [1e-5]) == pytest.approx([3e-5])  # not measured: the largest measured factor
    # a score of 4 within-search errors passes alone, but not at 4/3 of the between-search spread
    assert holm_passes([4e-5], decision_errors("sr", [1e-5])) == [True]
    assert holm_passes([4e-5], decision_errors("car", [1e-5])) == [False]
