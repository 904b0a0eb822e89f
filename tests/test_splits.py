import pandas as pd
import pytest

from qfm_lib.splits import load_splits, make_splits, split_parts


def test_committed_livec_splits_match_generator(livec):
    committed = load_splits("livec")
    regenerated = make_splits(sorted(livec["image"])).sort_values("image").reset_index(drop=True)
    pd.testing.assert_frame_equal(committed.reset_index(drop=True), regenerated, check_dtype=False)


def test_splits_are_disjoint_complete_and_sized(livec):
    table = load_splits("livec", list(livec["image"]))
    assert list(table["image"]) == list(livec["image"])
    assert table.filter(like="split_").shape[1] == 10
    for i in range(10):
        parts = split_parts(table, i)
        sets = [set(v) for v in parts.values()]
        assert sum(len(s) for s in sets) == len(table) == len(set.union(*sets))
        assert len(parts["test"]) == 200 and len(parts["val"]) == 160 and len(parts["train"]) == 640
    tests = [frozenset(split_parts(table, i)["test"]) for i in range(10)]
    assert len(set(tests)) == 10


def test_deterministic_and_seed_sensitive():
    names = [f"im{i}" for i in range(100)]
    pd.testing.assert_frame_equal(make_splits(names), make_splits(names))
    assert not make_splits(names).equals(make_splits(names, seed=1))


def test_grouped_by_reference():
    names = [f"r{r}_d{d}" for r in range(25) for d in range(8)]
    groups = [n.split("_")[0] for n in names]
    table = make_splits(names, groups)
    for i in range(10):
        sides = table.assign(ref=groups).groupby("ref")[f"split_{i}"].nunique()
        assert (sides == 1).all(), "a reference image appears on two sides of a split"
    for i in range(10):  # whole references: 5 of 25 to test (20 %), 4 of the other 20 to validation
        assert (table[f"split_{i}"] == "test").sum() == 40 and (table[f"split_{i}"] == "val").sum() == 32


def test_bad_arguments():
    with pytest.raises(ValueError, match="unique"):
        make_splits(["a", "a", "b"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_splits(["a", "b", "c"], test_fraction=1.5)
    with pytest.raises(ValueError, match="in no split"):
        load_splits("livec", ["not_an_image.png"])


def test_a_split_file_that_repeats_an_image_or_names_no_part_is_refused_by_line(tmp_path):
    import pandas as pd

    def write(rows):
        pd.DataFrame(rows, columns=["image", "split_0"]).to_csv(tmp_path / "x.csv", index=False)

    write([("a", "train"), ("b", "val"), ("c", "test"), ("b", "test")])
    with pytest.raises(ValueError, match=r"x\.csv: line 5: image 'b' appears twice"):
        load_splits("x", folder=tmp_path)
    for bad, shown in [("Test", "'Test'"), ("", "''")]:
        write([("a", "train"), ("b", "val"), ("c", bad)])
        with pytest.raises(ValueError, match=rf"x\.csv: line 4 \(c\): split_0 is {shown}, expected train, val or test"):
            load_splits("x", folder=tmp_path)
    pd.DataFrame({"name": ["a"], "part": ["train"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match="expected columns image, split_0"):
        load_splits("x", folder=tmp_path)
