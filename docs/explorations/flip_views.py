"""Validation-only exploration: are mirrored images useful extra views for the token models?

Issue 9 names flips beside token windows as extra views. A mirrored token map is no new view for the
decoder (it has no positional encoding, so a window's tokens are a set, and mirroring the map only
moves the windows); the mirrored *image* is one: the backbone's filters are not mirror-symmetric, so
its tokens differ. They need a second extraction (same ONNX graph; about 47 s for LIVEC here, and
1.1 GB more cache). A flip leaves quality unchanged, so these views need no teacher: each carries
its image's MOS. Two uses, for window regression (EMA) with the registry's settings, on splits 0-2:

* test-time mean: the model's score of the image and of its mirror, averaged;
* training views: each training window is read from the mirrored image with probability 0.5 (the
  same region, so the random draws stay in step with the plain model's), with or without that mean.

Only validation parts are scored. Rule: a use would be adopted if it raised the median validation
score by at least 0.002 (mean_members.py's threshold). Disclosure: this rule was written after a first
run of this comparison (2026-12-05), which gave the numbers below. Results (median over splits 0-2 of
(SRCC + PLCC) / 2 on validation): plain 0.8466, test-time mean 0.8472 (higher on 3 of 3 splits, by
0.0006-0.0031), mirrored training views 0.8397 (0.8412 with the test-time mean). Neither is adopted.

Run from the repository root with QFM_DATA_ROOT set (about 3 min with the mirrored tokens cached):

    python docs/explorations/flip_views.py
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from PIL import ImageOps
from tqdm import tqdm

from qfm_lib import protocol, study
from qfm_lib.backbones import load_backbone
from qfm_lib.cache import atomic_write, cache_path
from qfm_lib.tokens import TokenSet
from qfm_lib.features import FEATURE_VERSION, GRAPH_VERSION, content_hashes, forward_engine, names_and_hashes, run_views, to_tensor
from qfm_lib.images import load_rgb
from qfm_lib.local_manifold import fit_manifold_decoder
from qfm_lib.metrics import selection_score

VARIANT, SPLITS, MIN_GAIN = "window regression (EMA)", (0, 1, 2), 0.002


def mirrored_tokens(data: study.StudyData) -> tuple[np.ndarray, np.ndarray]:
    """Token maps (total cells, C) fp16 and grids (N, 2) of every image mirrored left-right, cached."""
    backbone = load_backbone(data.features.meta["backbone"])
    key = {"what": "mirrored token maps", "backbone": backbone.name, "weights": backbone.weights_sha256,
           "graph": GRAPH_VERSION, "features": FEATURE_VERSION}
    path = cache_path("features", key, ".npz", names_and_hashes(data.table["image"], content_hashes(data.table)))
    if not path.is_file():
        engine, maps = forward_engine(backbone), []
        for p in tqdm(data.table["path"], desc="mirrored images"):
            maps.append(run_views(engine, to_tensor(ImageOps.mirror(load_rgb(p)), backbone)[None], True)[1][0])
        grid = np.array([m.shape[:2] for m in maps])
        tokens = np.concatenate([m.reshape(-1, m.shape[2]) for m in maps])
        atomic_write(path, lambda fh: np.savez(fh, tokens=tokens, grid=grid))
    with np.load(path) as saved:
        return saved["tokens"], saved["grid"]


class WithMirrors(TokenSet):
    """Rows 0..N-1 the images, N..2N-1 their mirrors; training windows (random positions) are read from
    the mirror with probability `p_mirror`, at the mirrored position (the same region)."""

    def __init__(self, tokens, grid, n_images: int):
        super().__init__(tokens, grid)
        self.n_images, self.p_mirror, self.rng = n_images, 0.0, np.random.default_rng(0)

    def windows(self, rows, tops, lefts, window, dtype=torch.float32):
        if self.p_mirror and tops is not None:
            mirror = self.rng.random(len(rows)) < self.p_mirror
            lefts = np.where(mirror, self.grid[rows, 1] - window - lefts, lefts)
            rows = np.where(mirror, rows + self.n_images, rows)
        return super().windows(rows, tops, lefts, window, dtype)


torch.set_num_threads(1)  # as the protocol's rows are computed
data = study.load_study_data("livec", "tf_efficientnet_lite0")
n = len(data.table)
flip_tokens, flip_grid = mirrored_tokens(data)
tokens = WithMirrors(np.concatenate([np.asarray(data.features.tokens), flip_tokens]),
                     np.concatenate([data.features.token_grid, flip_grid]), n)
y = np.concatenate([data.mos, data.mos])
rows = []
for split in SPLITS:
    parts = protocol.split_parts(data.splits, split)
    val = parts["val"]
    for training, p_mirror in (("plain", 0.0), ("mirrored views", 0.5)):
        tokens.p_mirror, tokens.rng = p_mirror, np.random.default_rng(split)
        model = fit_manifold_decoder(tokens, y, parts, replace(protocol.VARIANTS[VARIANT].config, seed=0))
        tokens.p_mirror = 0.0
        plain, mirrored = model.predict(tokens, val), model.predict(tokens, val + n)
        for scoring, pred in (("image", plain), ("mean with mirror", (plain + mirrored) / 2)):
            rows.append({"split": split, "training": training, "scoring": scoring,
                         "val_score": selection_score(pred, data.mos[val])})
table = pd.DataFrame(rows)
print(table.pivot_table(index="split", columns=["training", "scoring"], values="val_score").round(4))
medians = table.groupby(["training", "scoring"])["val_score"].median()
print(medians.round(4))
gains = medians - medians["plain", "image"]
adopted = [f"{t} / {s}" for (t, s), g in gains.items() if g >= MIN_GAIN]
print(f"gain over plain (median validation score): {gains.round(4).to_dict()}; adopted (gain >= {MIN_GAIN}): {adopted or 'none'}")
