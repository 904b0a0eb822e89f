import numpy as np
import pytest
from sklearn.linear_model import RidgeCV

from qfm_lib.baselines import RidgeGCV


@pytest.mark.parametrize("n,p", [(300, 40), (50, 120), (80, 80)])
@pytest.mark.parametrize("noise", [0.3, 3.0])
def test_ridge_gcv_chooses_and_predicts_as_sklearn_ridgecv(n, p, noise):
    rng = np.random.default_rng(n + p)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) * 0.3 + 2
    y = x[:, :5].sum(1) + noise * rng.normal(size=n)
    alphas = np.logspace(-1, 5, 13)
    ours, theirs = RidgeGCV(alphas).fit(x, y), RidgeCV(alphas=alphas).fit(x, y)
    assert ours.alpha_ == theirs.alpha_
    new = rng.normal(size=(7, p)) + 2
    np.testing.assert_allclose(ours.predict(new), theirs.predict(new), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("n_groups,p", [(30, 12), (12, 60)])  # more and fewer rows than columns
def test_ridge_gcv_groups_leave_whole_groups_out(n_groups, p):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    rng = np.random.default_rng(p)
    base = rng.normal(size=(n_groups, p))
    y_group = 2 * base[:, 0] + rng.normal(0, 1, n_groups)
    x = np.repeat(base, 4, 0) + rng.normal(0, 0.3, (4 * n_groups, p))  # 4 near-copies per group
    y, groups = np.repeat(y_group, 4), np.repeat(np.arange(n_groups), 4)
    alphas = np.logspace(-2, 3, 11)
    errors = [np.mean((cross_val_predict(Ridge(alpha=a), x, y, groups=groups, cv=LeaveOneGroupOut()) - y) ** 2)
              for a in alphas]
    grouped = RidgeGCV(alphas).fit(x, y, groups=groups)
    assert grouped.alpha_ == alphas[int(np.argmin(errors))]
    assert grouped.alpha_ > RidgeGCV(alphas).fit(x, y).alpha_  # near-copies make single-row left-outs too easy
    np.testing.assert_allclose(grouped.predict(x), Ridge(alpha=grouped.alpha_).fit(x, y).predict(x), rtol=1e-6, atol=1e-8)
