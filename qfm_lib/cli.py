"""`qfm` console script: `qfm predict PATH... [--model FILE] -o scores.csv`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qfm", description="NR-IQA study tools")
    sub = parser.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="score image files or folders with the final model")
    pred.add_argument("paths", nargs="+", help="image files or folders")
    pred.add_argument("--model", default=None, help="model file (default: models/qfm_livec.pt)")
    pred.add_argument("-o", "--output", default="-", help="CSV to write (default: stdout)")
    args = parser.parse_args(argv)

    from .predict import DEFAULT_MODEL, predict_images

    try:
        scores = predict_images(args.paths, args.model or DEFAULT_MODEL)
    except (FileNotFoundError, ValueError) as err:
        print(f"qfm predict: {err}", file=sys.stderr)
        return 2
    scores.to_csv(sys.stdout if args.output == "-" else args.output, index=False)
    failed = int((scores["error"] != "").sum())
    if failed:
        print(f"qfm predict: {failed} of {len(scores)} images failed (see the error column)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
