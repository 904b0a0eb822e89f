"""Shared by the solution scripts: a small seeded LIVEC subset (smoke size), loaded once."""
from __future__ import annotations

import functools

import torch

from qfm_lib.study import load_study_data

DATASET, BACKBONE, N_IMAGES, SEED = "livec", "tf_efficientnet_lite0", 60, 0


@functools.lru_cache(maxsize=1)
def small_study():
    torch.set_num_threads(1)
    return load_study_data(DATASET, BACKBONE, n_images=N_IMAGES, seed=SEED)
