"""What the tests of a user's own model share (tests/test_given_inputs.py, tests/test_given_run_consumers.py)."""

from __future__ import annotations

import numpy as np
import torch


def outside_model_probs(ds, folds: int = 2) -> np.ndarray:
    """Out-of-sample probabilities of a softmax regression in torch (a model that is not the audit's),
    cross-fitted over ``folds`` folds of all rows of dataset ``ds``."""
    x = torch.from_numpy(ds.images.reshape(len(ds.labels), -1).astype(np.float32) / 255)
    y = torch.from_numpy(ds.labels.astype(np.int64))
    fold = np.arange(len(y)) % folds
    probs = np.zeros((len(y), ds.num_classes))
    for f in range(folds):
        torch.manual_seed(f)
        fit, held = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        model = torch.nn.Linear(x.shape[1], ds.num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[fit]), y[fit]).backward()
            opt.step()
        with torch.no_grad():
            probs[held.numpy()] = torch.softmax(model(x[held]).double(), 1).numpy()
    return probs
