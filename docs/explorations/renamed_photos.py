"""How much does the final model's score of a photo depend on its file name? (No training; needs the
final model that `make figures` saves, models/qfm_livec.pt, and the LIVEC data root.)

The final model's pooled-crop member reads five 224-px crops seeded by the file's name, so that a LIVEC
photo gets the crops the study's features used; the same pixels under another name get other crops.
This scores the first `--n` LIVEC photos (in the label table's order) under their own names and as
copies under new names, and prints the mean and largest absolute difference between the two
scores beside the standard deviation of the photos' scores. README.md ("Scoring your own photos")
quotes the numbers. Run from the repository root:

    QFM_DATA_ROOT=../shared/data python docs/explorations/renamed_photos.py [--n 20]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from qfm_lib.data import load_dataset
from qfm_lib.predict import DEFAULT_MODEL, load_model, predict_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="LIVEC photos to score twice")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()
    photos = [Path(p) for p in load_dataset("livec")["path"][:args.n]]
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        copies = []
        for i, photo in enumerate(photos):
            copy = Path(folder) / f"renamed_{i:03d}{photo.suffix}"
            shutil.copyfile(photo, copy)
            copies.append(copy)
        own = predict_images(photos, model, progress=False)["score"].to_numpy()
        renamed = predict_images(copies, model, progress=False)["score"].to_numpy()
    gap = abs(own - renamed)
    print(f"{len(photos)} LIVEC photos, model {args.model} ({model['model_kind']})")
    print(f"score under a new name vs its own: mean absolute difference {gap.mean():.2f} MOS points, "
          f"largest {gap.max():.2f}; the photos' scores spread with a standard deviation of {own.std(ddof=1):.1f}")


if __name__ == "__main__":
    main()
