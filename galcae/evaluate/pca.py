"""The paper's baseline (Fig. 5): PCA of the pixels, then linear regression on the components."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression

from .metrics import r2


def pca_baseline(train_pixels: np.ndarray, train_targets: dict[str, np.ndarray],
                 test_pixels: np.ndarray, test_targets: dict[str, np.ndarray],
                 n_components: int = 64, seed: int = 0) -> dict:
    """R² on the test split of PCA + linear regression, fitted on the training split.

    For each target: ``best_single`` uses the one component with the highest training
    R² (the paper's "best single component"), ``all`` regresses on every component
    (its test predictions are in ``predicted``).
    Pixels are flattened; pass the same representation the CAE sees.
    """
    n_components = min(n_components, *train_pixels.shape[:1], train_pixels[0].size)
    pca = PCA(n_components=n_components, random_state=seed)
    c_train = pca.fit_transform(train_pixels.reshape(len(train_pixels), -1))
    c_test = pca.transform(test_pixels.reshape(len(test_pixels), -1))
    result = {"n_components": n_components, "best_single": {}, "best_component": {}, "all": {},
              "predicted": {}}
    for name, y_train in train_targets.items():
        train_scores = [LinearRegression().fit(c_train[:, [k]], y_train).score(c_train[:, [k]], y_train)
                        for k in range(n_components)]
        best = int(np.argmax(train_scores))
        single = LinearRegression().fit(c_train[:, [best]], y_train)
        full = LinearRegression().fit(c_train, y_train)
        result["best_component"][name] = best
        result["best_single"][name] = r2(test_targets[name], single.predict(c_test[:, [best]]))
        result["predicted"][name] = full.predict(c_test)
        result["all"][name] = r2(test_targets[name], result["predicted"][name])
    return result
