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
