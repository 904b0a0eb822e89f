"""Validation-only exploration: would other members improve the two-model mean?

Rule, fixed before this script was first run (2026-11-29): the candidates are the variants of notebook
06 whose models a mean can keep (`protocol.KEPT_KINDS`: the token models and pooled lmc), each
the model its own protocol row trained on the split. Greedy forward selection with equal weights,
starting from no member: each step adds the candidate that most raises the median over the 10 committed
splits of the validation score (SRCC + PLCC) / 2 of the equal-weight mean; it stops when the best
addition gains less than MIN_GAIN, or at MAX_MEMBERS. Only the validation parts are scored (no test part
is read). If the chosen set differs from the study's mean (window regression + lmc), it becomes a mean of
its own, with its test scored once in notebook 06. Caveat: each member's early stopping already used
the same validation parts, so these scores are optimistic for every set alike.

Runs: on the float32 rows of 2026-11-29 it chose the decoder and lmc ("decoder + lmc (mean)"); rerun on
the rows of 2026-12-05 (batches of 16, the rerun settings search) it chose window regression, lmc and
qfm-iqm (median validation score 0.8516, against 0.8478 for the study's mean; a fourth member, decoder+gate,
lost 0.0001), which became "window regression + lmc + qfm-iqm (mean)". Test did not confirm either choice
(notebook 06). Rerun once "window regression + learned tail" joined notebook 06: on its rows at rate 0.3 it
chose the learned tail, lmc and qfm-iqm (0.8544; never scored on test: the tail's rows changed first); on
the committed rows (rate 1, docs/explorations/tail_rate.py) the learned tail (0.8399), lmc (0.8487) and
window regression (0.8535; qfm-iqm as a fourth would have added 0.0004), which became "learned tail + lmc +
window regression (mean)": test 0.873/0.843, first on test too, level with the first mean within the noise.
Rerun once the tail had two blocks (docs/explorations/deeper_tail.py): the same three members (0.8464,
0.8549, 0.8575; qfm-iqm as a fourth would have lost 0.0015), so the mean kept its members: test 0.876/0.843.
Rerun once the tail's input was built on one thread (its rows changed a little, docs/method.md): the same
three members (0.8449, 0.8511, 0.8562; qfm-iqm as a fourth would have lost 0.0004): test 0.875/0.843.
Rerun once the tail's depthwise convolutions ran in float32 (2026-12-06; its rows changed a little again):
the learned tail (0.8461), lmc (0.8545) and qfm-iqm (0.8568; decoder+gate as a fourth would have added
0.0002), which became "learned tail + lmc + qfm-iqm (mean)": test 0.874/0.845, first on validation and so
the final model, third on test (the mean with window regression, 0.875/0.844, first), level with it.
Rerun once the adversarial term drew distinct candidates (2026-12-06, later; qfm-iqm's rows changed): the
same three members (0.8461, 0.8545, 0.8576; window regression as a fourth would have added 0.0018), so the
mean kept them: test 0.869/0.841, still first on validation and third on test.

Reads the cached models of the full batch (token models; lmc models cached by ensembles, else refitted,
about 27 s per split). Run from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/mean_members.py
"""
import json

import numpy as np
import pandas as pd
import torch

from qfm_lib import ensembles, protocol, study
from qfm_lib.metrics import selection_score
from qfm_lib.protocol import inputs_from_study

MIN_GAIN, MAX_MEMBERS, N_SPLITS = 0.002, 4, 10

torch.set_num_threads(1)  # as the rows were computed
inputs = inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0", n_crops=5), n_views=5)
notebook = json.load(open("notebooks/06_results_tables.ipynb"))
params = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
variants = next(eval(line.split("=", 1)[1]) for line in params["source"] if line.startswith("variants ="))
candidates = [v for v in variants if v in inputs.variants and inputs.variant(v).kind in protocol.KEPT_KINDS]

val_preds = {}  # (variant, split) -> validation predictions
for v in candidates:
    for s in range(N_SPLITS):
        val_preds[v, s] = ensembles.verified_scorer(inputs, v, s)(inputs.parts(s)["val"])


def median_val_score(members: list[str]) -> float:
    return float(np.median([selection_score(np.mean([val_preds[m, s] for m in members], axis=0),
                                            inputs.y[inputs.parts(s)["val"]]) for s in range(N_SPLITS)]))


chosen, score, steps = [], -np.inf, []
while len(chosen) < MAX_MEMBERS:
    trials = {v: median_val_score(chosen + [v]) for v in candidates if v not in chosen}
    best = max(trials, key=trials.get)
    steps.append({"step": len(chosen) + 1, "added": best, "median_val_score": trials[best],
                  "gain": trials[best] - score if chosen else np.nan,
                  "runner_up": sorted(trials, key=trials.get)[-2] if len(trials) > 1 else ""})
    if chosen and trials[best] - score < MIN_GAIN:
        break
    chosen, score = chosen + [best], trials[best]
print(pd.DataFrame(steps).round(4).to_string(index=False))
print(f"chosen ({len(chosen)} members, median validation score {score:.4f}): {chosen}")
print(f"the study's mean: {median_val_score(list(ensembles.members('window regression + lmc (mean)'))):.4f}")
