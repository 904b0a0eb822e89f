"""Validation-only exploration: does the mean of the best token model (window regression) and the
best pooled-crop model (lmc) predict better than either alone? Equal weights, fixed before looking;
only the validation parts of the 10 committed splits are scored (no test part is read). Reuses the
models that the full batch's rows kept (else trains them). Run from the repository root with
QFM_DATA_ROOT set:

    python docs/explorations/two_model_mean.py
"""
import pandas as pd
import torch

from qfm_lib import protocol, study
from qfm_lib.metrics import iqa_metrics

torch.set_num_threads(1)
inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0", n_crops=5), n_views=5)
rows = []
for split in range(10):
    val = inputs.parts(split)["val"]
    windows = protocol.trained_model(inputs, "window regression (EMA)", split).predict(inputs.tokens, val)
    crops = protocol.trained_model(inputs, "lmc", split).predict(inputs.crops[val])
    for name, pred in [("window regression", windows), ("lmc (pooled crops)", crops), ("mean of both", (windows + crops) / 2)]:
        m = iqa_metrics(pred, inputs.y[val])
        rows.append({"split": split, "model": name, "val_plcc": m["plcc"], "val_srcc": m["srcc"]})
table = pd.DataFrame(rows)
print(table.pivot(index="split", columns="model", values="val_plcc").round(3))
print(table.groupby("model", sort=False)[["val_plcc", "val_srcc"]].median().round(3))
