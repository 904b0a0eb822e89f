import shutil

import numpy as np
import pandas as pd
import pytest

from qfm_lib.data import DatasetError, dataset_info, load_dataset


def test_livec_real_table(livec):
    assert len(livec) == 1000
    assert livec["image"].is_unique
    assert 3 <= livec["mos"].min() and livec["mos"].max() <= 92
    assert livec["mos_std"].between(5, 40).all()
    assert livec["sha256"].str.len().eq(64).all()


def test_limit_is_seeded_subset(data_root):
    a = load_dataset("livec", root=data_root, limit=30, seed=1, verify=False)
    b = load_dataset("livec", root=data_root, limit=30, seed=1, verify=False)
    c = load_dataset("livec", root=data_root, limit=30, seed=2, verify=False)
    assert list(a["image"]) == list(b["image"]) and list(a["image"]) != list(c["image"])
    with pytest.raises(ValueError, match="positive"):
        load_dataset("livec", root=data_root, limit=0, verify=False)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*livec"):
        dataset_info("nope")
    with pytest.raises(DatasetError, match="does not exist.*QFM_DATA_ROOT"):
        load_dataset("livec", root=tmp_path / "absent")
    with pytest.raises(DatasetError, match="not found.*convert_release"):
        load_dataset("koniq10k", root=tmp_path)


def _copy_livec(data_root, tmp_path, n=5) -> pd.DataFrame:
    src = data_root / "livec"
    table = pd.read_csv(src / "labels.csv").head(n)
    (tmp_path / "livec" / "images").mkdir(parents=True)
    for img in table["image"]:
        shutil.copy(src / "images" / img, tmp_path / "livec" / "images" / img)
    return table


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.assign(mos=t["mos"].where(t.index != 2, np.nan)), r"row 4 \(.*\): missing, non-numeric or infinite MOS"),
    (lambda t: t.assign(mos=t["mos"].astype(object).where(t.index != 1, "n/a")), r"row 3 .*non-numeric or infinite MOS 'n/a'"),
    (lambda t: t.assign(mos=t["mos"].where(t.index != 0, np.inf)), r"row 2 .*infinite MOS inf"),
    (lambda t: t.iloc[:0], r"labels.csv: no rows"),
    (lambda t: t.assign(image=t["image"].where(t.index != 1, "../secret.png")), r"row 3: image name '../secret.png' is not a path inside"),
    (lambda t: t.assign(image=t["image"].where(t.index != 3, "/etc/passwd")), r"row 5: image name '/etc/passwd' is not a path inside"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), r"row 7: duplicate image name"),
    (lambda t: t.drop(columns="mos"), r"no column 'mos'"),
])
def test_bad_label_rows_are_named(data_root, tmp_path, damage, message):
    table = _copy_livec(data_root, tmp_path)
    damage(table).to_csv(tmp_path / "livec" / "labels.csv", index=False)
    with pytest.raises(DatasetError, match=message):
        load_dataset("livec", root=tmp_path)


def test_missing_file_and_hash_mismatch(data_root, tmp_path):
    table = _copy_livec(data_root, tmp_path)
    table.to_csv(tmp_path / "livec" / "labels.csv", index=False)
    assert len(load_dataset("livec", root=tmp_path)) == 5
    victim = tmp_path / "livec" / "images" / table["image"][3]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=f"{table['image'][3]}.*sha256 mismatch"):
        load_dataset("livec", root=tmp_path)
    victim.unlink()
    with pytest.raises(DatasetError, match=f"{table['image'][3]}.*missing"):
        load_dataset("livec", root=tmp_path)


def test_unreadable_labels_and_blank_lines(data_root, tmp_path):
    table = _copy_livec(data_root, tmp_path)
    labels = tmp_path / "livec" / "labels.csv"
    labels.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"labels.csv: cannot read it as a CSV table \(EmptyDataError"):
        load_dataset("livec", root=tmp_path)
    labels.write_bytes(b"image,mos\n\xff\xfe,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv: cannot read it as a CSV table \(UnicodeDecodeError"):
        load_dataset("livec", root=tmp_path)
    # a blank line is skipped, and later rows are still named by their line in the file
    lines = table.to_csv(index=False).splitlines()
    labels.write_text("\n".join(lines[:3] + [""] + lines[3:4] + [lines[4].rsplit(",", 3)[0] + ",,,"]) + "\n")
    with pytest.raises(DatasetError, match=r"row 6 .*missing, non-numeric or infinite MOS"):
        load_dataset("livec", root=tmp_path)
    labels.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    assert list(load_dataset("livec", root=tmp_path)["image"]) == list(table["image"])
