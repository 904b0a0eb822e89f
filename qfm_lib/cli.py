"""`qfm` console script: `qfm predict PATH... [--model FILE] [--max-side N] -o scores.csv`;
`qfm compare [--rev REV] [--tolerance T]`: regenerated tables against the committed ones;
`qfm finetune --splits 0 1 2 [--device cuda]`: end-to-end fine-tuning from the protocol's models (GPU)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from .reproduce import DEFAULT_TOLERANCE

    parser = argparse.ArgumentParser(prog="qfm", description="NR-IQA study tools")
    sub = parser.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="score image files or folders with the final model",
                          description="Score image files or folders (recursively, every image format the "
                                      "loader reads) with a saved model. CSV columns: image, score, error, "
                                      "note. Exit code 1 when any image failed, 2 when nothing could be "
                                      "scored (no or unusable model, no image file, an output that cannot "
                                      "be written).")
    pred.add_argument("paths", nargs="+", help="image files or folders")
    pred.add_argument("--model", default=None, help="model file (default: models/qfm_livec.pt)")
    pred.add_argument("-o", "--output", default="-", help="CSV to write (default: stdout)")
    pred.add_argument("--max-side", type=int, default=None, metavar="N",
                      help="downscale images whose longer side exceeds N pixels to N before scoring (the "
                           "training images were about 500x500; default 1024; 0 keeps native resolution)")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    comp = sub.add_parser("compare", help="compare regenerated tables with the committed ones",
                          description="Compare the batch's CSV tables (default: figures/tables/, as the last "
                                      "`make figures` wrote them) with those committed at a git revision, "
                                      "column by column. Exit code 1 when a column differs by more than the "
                                      "tolerance or a table cannot be compared.")
    comp.add_argument("--rev", default="HEAD", help="git revision of the reference tables (default: HEAD)")
    comp.add_argument("--reference", default=None, metavar="DIR", help="a folder of reference tables instead")
    comp.add_argument("--tables", default=None, metavar="DIR", help="the tables to check (default: figures/tables)")
    comp.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                      help="largest difference allowed, absolute within [-1, 1], relative above (default %(default)g)")
    comp.add_argument("-o", "--output", default=None, help="also write every column's difference to this CSV")
    tune = sub.add_parser("finetune", help="fine-tune the backbone end to end from the protocol's models (GPU)",
                          description="LP-FT: on each split, start from the model that a token variant's row "
                                      "trained on the frozen tokens, train backbone and decoder together on the "
                                      "training part, stop early on the validation part, score the test part "
                                      "once. Writes the fine-tuned and the frozen rows, and their paired "
                                      "comparison, to --output-dir. About an hour per split on a 2-core CPU: "
                                      "meant for a GPU.")
    tune.add_argument("--dataset", default="livec")
    tune.add_argument("--backbone", default="tf_efficientnet_lite0")
    tune.add_argument("--splits", type=int, nargs="+", default=list(range(10)), metavar="S")
    tune.add_argument("--n-images", type=int, default=None, help="a seeded subset (for a quick try)")
    tune.add_argument("--output-dir", default="build/finetune", metavar="DIR")
    tune.add_argument("--validation-only", action="store_true",
                      help="score no test part (to choose settings such as --lr on validation)")
    tune.add_argument("--lr-grid", nargs="+", type=float, default=(), metavar="LR",
                      help="learning rates each split chooses from on its validation part (instead of --lr)")
    if (sys.argv[1:] if argv is None else argv)[:1] == ["finetune"]:  # not for the other commands:
        _add_config_arguments(tune)  # FinetuneConfig's module imports torch (2 s at start-up)
    args = parser.parse_args(argv)
    if args.command == "compare":
        return _compare(args)
    if args.command == "finetune":
        return _finetune(args)

    from .images import MIN_SIDE
    from .predict import DEFAULT_MAX_SIDE, DEFAULT_MODEL, expand_paths, predict_images

    max_side = DEFAULT_MAX_SIDE if args.max_side is None else args.max_side
    if max_side != 0 and max_side < MIN_SIDE:  # smaller, every image would fail on its own row
        pred.error(f"--max-side must be 0 (native resolution) or at least {MIN_SIDE} pixels, got {max_side}")
    if args.output != "-" and (problem := _unwritable(Path(args.output))):
        print(f"qfm predict: cannot write {args.output} ({problem}); nothing was scored", file=sys.stderr)
        return 2
    files = []
    for path in args.paths:  # each folder walked once; an empty one is named
        found = expand_paths([path])
        if not found and Path(path).is_dir():
            print(f"qfm predict: no image files in the folder {path}", file=sys.stderr)
        files += found
    if not files:  # only empty folders: said before the model and backbone load
        return _nothing_to_score(args.paths)
    try:
        scores = predict_images(files, args.model or DEFAULT_MODEL, max_side=max_side,
                                progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # RuntimeError: e.g. the backbone's weights
        print(f"qfm predict: {err}", file=sys.stderr)
        return 2
    if scores.empty:
        return _nothing_to_score(args.paths)
    scores.to_csv(sys.stdout if args.output == "-" else args.output, index=False)
    failed = int((scores["error"] != "").sum())
    if failed:
        print(f"qfm predict: {failed} of {len(scores)} images failed (see the error column)", file=sys.stderr)
    return 1 if failed else 0


def _nothing_to_score(paths: list[str]) -> int:
    print(f"qfm predict: no image files in {' '.join(paths)} (a folder is searched for the suffixes "
          f"Pillow reads, e.g. .jpg .png .bmp .tif .webp); nothing was scored", file=sys.stderr)
    return 2


def _unwritable_folder(path: Path) -> str | None:
    """Why folder `path` (existing, or made by mkdir -p) cannot be written to, or None."""
    if path.exists() and not path.is_dir():
        return "it is a file"
    nearest = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not nearest.is_dir():
        return f"{nearest} is a file"
    return None if os.access(nearest, os.W_OK | os.X_OK) else f"{nearest} is read-only"


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written, or None: an existing writable file, or a new file in a writable folder."""
    if path.is_dir():
        return "it is a folder; give a file name, e.g. scores.csv"
    if path.exists():
        return None if os.access(path, os.W_OK) else "it is read-only"
    folder = path.absolute().parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"its folder {folder} is read-only"


def _compare(args) -> int:
    from .reproduce import TABLES_DIR, compare_tables, compare_with_git, report

    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        print(f"qfm compare: --tolerance must be a finite number >= 0, got {args.tolerance}", file=sys.stderr)
        return 2
    if args.output and (problem := _unwritable(Path(args.output))):
        print(f"qfm compare: cannot write {args.output} ({problem}); nothing was compared", file=sys.stderr)
        return 2
    tables = args.tables or TABLES_DIR
    try:
        if args.reference:
            comparison = compare_tables(args.reference, tables)
            text, agree = report(comparison, args.tolerance)
        else:
            comparison, text, agree = compare_with_git(args.rev, tables, args.tolerance)
    except (FileNotFoundError, ValueError) as err:
        print(f"qfm compare: {err}", file=sys.stderr)
        return 2
    if args.output:
        comparison.to_csv(args.output, index=False)
    print(text)
    return 0 if agree else 1


def _add_config_arguments(tune: argparse.ArgumentParser) -> None:
    """One option per FinetuneConfig field, with its default."""
    from .finetune import FinetuneConfig

    for field, default in FinetuneConfig().__dict__.items():
        kind = _yes_or_no if isinstance(default, bool) else type(default)
        tune.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default, help=f"default: {default}")


def _yes_or_no(value: str) -> bool:
    """A boolean option's value: true/false, yes/no or 1/0; anything else is an error naming it."""
    answers = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if value.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected true or false (yes/no, 1/0), got {value!r}")
    return answers[value.lower()]


def _finetune(args) -> int:
    import re
    from dataclasses import asdict

    import torch

    from .backbones import WeightsUnavailableError
    from .cache import atomic_write, digest
    from .finetune import FinetuneConfig, finetune_study

    out = Path(args.output_dir)
    if why := _unwritable_folder(out):
        print(f"qfm finetune: cannot write to --output-dir {out} ({why}); nothing was trained", file=sys.stderr)
        return 2
    if args.n_images is not None and args.n_images < 1:
        print(f"qfm finetune: --n-images must be a whole number >= 1, got {args.n_images}", file=sys.stderr)
        return 2
    try:
        cfg = FinetuneConfig(**{f: getattr(args, f) for f in FinetuneConfig().__dict__})
    except ValueError as err:
        print(f"qfm finetune: {err}", file=sys.stderr)
        return 2
    # every setting of the run is in the name (readable, then a digest of all), so no run overwrites another's rows
    settings = {**asdict(cfg), "dataset": args.dataset, "backbone": args.backbone, "splits": args.splits,
                "n_images": args.n_images, "lr_grid": list(args.lr_grid), "validation_only": args.validation_only}
    stem = "_".join([args.dataset, args.backbone, re.sub(r"[^a-z0-9]+", "_", cfg.start.lower()).strip("_"),
                     "lr" + ("-".join(f"{lr:g}" for lr in args.lr_grid) if args.lr_grid else f"{cfg.lr:g}")]
                    + (["validation_only"] if args.validation_only else []) + [digest(settings)[:8]])
    partial = out / f"{stem}_rows.partial.csv"  # the splits this run has done, until _rows.csv holds them all
    saved = []

    def save(table, path: Path) -> None:
        atomic_write(path, lambda fh: table.to_csv(fh, index=False), "w")
        saved.append(path)

    try:
        rows, comparison = finetune_study(args.dataset, args.backbone, args.splits, cfg, n_images=args.n_images,
                                          score_test=not args.validation_only, lr_grid=args.lr_grid,
                                          on_split=lambda done: save(done, partial))
    except (ValueError, FloatingPointError, WeightsUnavailableError, torch.cuda.OutOfMemoryError) as err:
        hint = "; a smaller --batch-images needs less" if isinstance(err, torch.cuda.OutOfMemoryError) else ""
        kept = f"; the rows of the splits done are in {partial}" if saved else ""
        print(f"qfm finetune: {err}{hint}{kept}", file=sys.stderr)
        return 2
    save(rows, out / f"{stem}_rows.csv")
    partial.unlink(missing_ok=True)
    print(rows.groupby("variant", sort=False)[["plcc", "srcc", "val_score", "fit_seconds"]].median().round(4))
    if comparison is not None:
        save(comparison, out / f"{stem}_comparison.csv")
        print(comparison.round(4).to_string(index=False))
    print(f"written to {out}/{stem}_*.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

