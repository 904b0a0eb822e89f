"""qfm compare: regenerated tables against committed ones."""
import subprocess

import numpy as np
import pandas as pd
import pytest

from qfm_lib.cli import main
from qfm_lib.reproduce import _read_table, compare_table, compare_tables, compare_with_git, git_tables, report


def _results() -> pd.DataFrame:
    return pd.DataFrame({"variant": ["ridge", "ridge", "lmc", "lmc"], "split": [0, 1, 0, 1],
                         "plcc": [0.85, 0.82, 0.86, 0.84], "fit_seconds": [0.4, 0.3, 9.0, 8.0],
                         "settings": ["{'alpha': 10}", "{'alpha': 1}", "{'best_epoch': 3}", "{'best_epoch': 5}"]})


def test_identical_tables_agree_and_rows_are_matched_by_label():
    ref = _results()
    new = ref.iloc[::-1].copy()                 # another row order: matched by variant / split
    new["fit_seconds"] *= 3                      # timing columns are skipped
    comparison = compare_table(ref, new, "t.csv")
    assert set(comparison["column"]) == {"plcc", "settings"}
    assert comparison["max_diff"].max() == 0
    assert report(comparison, 0.0)[1]


def test_a_changed_number_is_reported_with_its_row():
    ref, new = _results(), _results()
    new.loc[2, "plcc"] += 0.004
    row = compare_table(ref, new, "t.csv").set_index("column").loc["plcc"]
    assert row["max_diff"] == pytest.approx(0.004)
    assert row["at"] == "lmc / 0"
    assert report(compare_table(ref, new), 0.005)[1]
    ref["rmse"], new["rmse"] = 10.0, 10.02            # above 1: relative difference
    assert compare_table(ref, new).set_index("column").loc["rmse", "max_diff"] == pytest.approx(0.002)
    text, agree = report(compare_table(ref, new), 0.001)
    assert not agree and "plcc" in text


def test_changed_text_and_one_sided_nan_get_notes():
    ref, new = _results(), _results()
    new.loc[3, "settings"] = "{'best_epoch': 6}"
    new.loc[0, "plcc"] = np.nan
    notes = compare_table(ref, new).set_index("column")["note"]
    assert notes["settings"] == "text differs in 1 rows"     # the text of matched rows is compared
    assert notes["plcc"] == "NaN in one table only: 1 rows"
    assert not report(compare_table(ref, new), 1.0)[1]


def test_rows_that_cannot_be_matched_and_missing_tables(tmp_path):
    (tmp_path / "ref").mkdir(), (tmp_path / "new").mkdir()
    _results().to_csv(tmp_path / "ref" / "a.csv", index=False)
    _results().iloc[:3].to_csv(tmp_path / "new" / "a.csv", index=False)
    _results().to_csv(tmp_path / "new" / "b.csv", index=False)
    comparison = compare_tables(tmp_path / "ref", tmp_path / "new").set_index("table")["note"]
    assert comparison["a.csv"] == "rows differ (4 committed, 3 new)"
    assert comparison["b.csv"] == "missing from the committed tables"
    (tmp_path / "new" / "c.csv").write_text("")  # an empty table is named, and the others are still compared
    (tmp_path / "ref" / "c.csv").write_text("variant\nx\n")
    comparison = compare_tables(tmp_path / "ref", tmp_path / "new").set_index("table")["note"]
    assert comparison["c.csv"].startswith(f"cannot read {tmp_path / 'new' / 'c.csv'} (EmptyDataError")
    assert comparison["a.csv"] == "rows differ (4 committed, 3 new)"
    (tmp_path / "empty").mkdir()
    assert report(compare_tables(tmp_path / "empty", tmp_path / "empty"), 1e-3) == (
        "no tables to compare: neither folder holds a CSV table", False)
    with pytest.raises(FileNotFoundError, match="no tables folder"):
        compare_tables(tmp_path / "nowhere", tmp_path / "new")


def test_infinities_agree_only_with_themselves(tmp_path):
    ref, new = _results(), _results()
    ref["t"], new["t"] = np.inf, np.inf  # e.g. a paired t statistic of identical differences
    assert compare_table(ref, new).set_index("column").loc["t", "max_diff"] == 0
    new.loc[1, "t"] = 0.3
    row = compare_table(ref, new).set_index("column").loc["t"]
    assert row["max_diff"] == np.inf and row["n"] == len(ref)
    assert not report(compare_table(ref, new), 1.0)[1]
    new.loc[1, "t"] = -np.inf
    assert compare_table(ref, new).set_index("column").loc["t", "max_diff"] == np.inf
    assert _read_table(tmp_path).startswith(f"cannot read {tmp_path} (IsADirectoryError")  # an OSError


def test_git_tables_and_the_cli(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "figures" / "tables").mkdir(parents=True)
    _results().to_csv(repo / "figures" / "tables" / "a.csv", index=False)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "tables"], check=True)
    committed = git_tables("HEAD", tmp_path / "committed", repo=repo)
    assert pd.read_csv(committed / "a.csv").equals(pd.read_csv(repo / "figures" / "tables" / "a.csv"))
    with pytest.raises(ValueError, match="git archive nope"):
        git_tables("nope", tmp_path / "x", repo=repo)
    with pytest.raises(ValueError, match="'--output=x' is no git revision"):
        git_tables("--output=x", tmp_path / "x", repo=repo)
    assert compare_with_git("HEAD", repo / "figures" / "tables", repo=repo)[2]

    changed = _results()
    changed.loc[1, "plcc"] += 0.01
    (tmp_path / "new").mkdir()
    changed.to_csv(tmp_path / "new" / "a.csv", index=False)
    args = ["compare", "--reference", str(committed), "--tables", str(tmp_path / "new")]
    assert main(args + ["--tolerance", "0.02", "-o", str(tmp_path / "all.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "all.csv")) == 2
    assert main(args) == 1
    assert "1 beyond 0.001" in capsys.readouterr().out
    assert main(["compare", "--reference", str(tmp_path / "nowhere")]) == 2
    capsys.readouterr()
    assert main(args + ["-o", str(tmp_path / "absent" / "all.csv")]) == 2  # checked before comparing
    err = capsys.readouterr().err
    assert f"its folder {tmp_path / 'absent'} does not exist); nothing was compared" in err


def test_the_full_batch_ends_with_the_comparison(monkeypatch):
    from qfm_lib import batch, reproduce

    monkeypatch.setattr(reproduce, "compare_with_git", lambda **kw: (None, "2 tables ...", True))
    assert batch.reproduction_summary().startswith("[batch] tables against those committed at git HEAD (reproduced")

    def no_git(**kw):
        raise ValueError("git archive HEAD figures/tables failed in /x: not a git repository")
    monkeypatch.setattr(reproduce, "compare_with_git", no_git)
    assert "not compared with the committed tables: git archive" in batch.reproduction_summary()


def test_a_table_of_keys_only_compares_its_rows():
    pairs = pd.DataFrame({"split": [0, 0, 1], "image_a": ["1.png", "1.png", "1.png"], "image_b": ["3.png", "4.png", "5.png"]})
    same = compare_table(pairs, pairs.iloc[::-1])
    assert same[["column", "n", "max_diff"]].values.tolist() == [["(rows)", 3, 0.0]]
    other = pairs.copy()
    other.loc[2, "image_b"] = "6.png"
    assert not report(compare_table(pairs, other), 1e-3)[1]
