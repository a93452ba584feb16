"""A dataset factory: called with the spec's data section (a dict), it returns
(train, test) or (train, test, num_classes). Each split is an (x, y) pair of
tensors or arrays, or a sized torch Dataset of (x, y)."""

import numpy as np


def breast_cancer(config: dict):
    """scikit-learn's Wisconsin breast-cancer table (569 rows, 30 features, 2 classes),
    standardized on the training rows; a fixed split, so every trial sees the same."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-8
    norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return (norm(xtr), ytr), (norm(xte), yte), 2
