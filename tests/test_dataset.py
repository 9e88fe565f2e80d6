import os

import pytest

from covidct_core.errors import DatasetError
from feature_extractor.imaging.dataset import COVID_LABEL, NONCOVID_LABEL, list_image_files, load_dataset, load_unlabeled, with_keys
from tests.helpers import ct_like, make_class_folders


def test_covidct_layout_reads_split_and_patients(covidct_layout):
    ds = load_dataset(covidct_layout)
    assert ds.layout == "covid-ct" and len(ds.records) == 48
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    assert all(r.patient for r in ds.records)
    # COVID "Patient 1" and NonCOVID "crawled_patient_1" never merge
    assert all(r.patient.startswith("covid/" if r.label == COVID_LABEL else "noncovid/") for r in ds.records)
    # the official split is patient-level: no patient in two splits
    splits_of = {}
    for r in ds.records:
        splits_of.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # CRLF split lists are parsed: every NonCOVID image has a split
    assert all(r.split for r in ds.records if r.label == NONCOVID_LABEL)


def test_missing_split_file_is_a_clear_error(covidct_layout):
    (covidct_layout / "Data-split" / "COVID" / "valCT_COVID.txt").unlink()
    with pytest.raises(DatasetError, match="valCT_COVID.txt"):
        load_dataset(covidct_layout)


@pytest.mark.parametrize("covid_dir, noncovid_dir", [("COVID", "NonCOVID"), ("ct_covid", "CT_NONCOVID"),
                                                     ("covid", "non-covid")])
def test_class_folders_any_case(tmp_path, covid_dir, noncovid_dir):
    root = make_class_folders(tmp_path / "d", 3, covid_dir=covid_dir, noncovid_dir=noncovid_dir)
    ds = load_dataset(root)
    assert ds.layout == "class-folders"
    assert sorted(r.label for r in ds.records) == [0, 0, 0, 1, 1, 1]
    assert not ds.has_split and not ds.has_patients


def test_csv_manifest_with_relative_paths(class_folders):
    manifest = class_folders / "manifest.csv"
    manifest.write_text("path,label,patient,split\n"
                        "COVID/img0.png,COVID,p1,train\n"
                        "NonCOVID/img0.jpg,0,p2,test\n", encoding="utf-8")
    ds = load_dataset(manifest)
    assert ds.layout == "manifest"
    assert [(r.label, r.patient, r.split) for r in ds.records] == [(1, "p1", "train"), (0, "p2", "test")]
    assert all(os.path.isfile(r.path) for r in ds.records)


@pytest.mark.parametrize("content, match", [
    ("file,label\na.png,1\n", "'path' column"),
    ("path,label\na.png,maybe\n", "line 2: unknown label"),
    ("path,label,split\na.png,1,holdout\n", "split 'holdout'"),
])
def test_bad_manifests(tmp_path, content, match):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_dataset(manifest)


def test_not_a_dataset(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match="COVID/ and NonCOVID/"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="data not found"):
        load_dataset(tmp_path / "nope")


def test_unlabeled_folder_is_recursive_and_survives_symlink_loops(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    ct_like(0, True).save(tmp_path / "a" / "x.png")
    ct_like(1, False).save(tmp_path / "a" / "b" / "y.JPG")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    files = list_image_files(tmp_path)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/b/y.JPG", "a/x.png"]
    assert len(load_unlabeled(tmp_path).records) == 2


def test_symlinked_study_folders_are_followed_once(tmp_path):
    """Archives export studies as links to where they are stored."""
    store = tmp_path / "store" / "study1"
    store.mkdir(parents=True)
    ct_like(0, True).save(store / "s1.png")
    ct_like(1, True).save(store / "s2.png")
    (tmp_path / "export").mkdir()
    os.symlink(store, tmp_path / "export" / "study1")
    os.symlink(store, tmp_path / "export" / "same-study-again")
    files = list_image_files(tmp_path / "export")
    assert len(files) == 2 and all("s1.png" in f or "s2.png" in f for f in files)
    assert len(load_unlabeled(tmp_path / "export").records) == 2


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no image files"):
        load_unlabeled(tmp_path)


def test_keys_are_content_hashes(tmp_path):
    ct_like(0, True).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    recs = with_keys(load_unlabeled(tmp_path).records)
    assert recs[0].key == recs[1].key and len(recs[0].key) == 64


def test_several_datasets_are_sources_with_their_own_patients(tmp_path, covidct_layout):
    from feature_extractor.imaging.dataset import load_datasets

    other = make_class_folders(tmp_path / "hospital-b", 3)
    manifest = tmp_path / "site-c" / "list.csv"
    manifest.parent.mkdir()
    (manifest.parent / "x.png").write_bytes((other / "COVID" / "img0.png").read_bytes())
    manifest.write_text("path,label,patient\nx.png,1,Patient 1\n", encoding="utf-8")
    ds = load_datasets([covidct_layout, other, manifest])
    assert ds.sources == ["covid-ct", "hospital-b", "site-c"]
    assert {r.source for r in ds.records if r.split} == {"covid-ct"}
    assert ds.source_has_split("covid-ct") and not ds.source_has_split("hospital-b")
    (site_c,) = [r for r in ds.records if r.source == "site-c"]
    # the same patient name in two sources stays two patients
    assert site_c.group == "site-c/Patient 1"
    assert all(r.group.startswith(f"{r.source}/") for r in ds.records)


@pytest.mark.parametrize("case, match", [("twice", "given twice"), ("same-name", "two datasets are called 'data'"),
                                         ("empty-source", "line 3: the source column is empty")])
def test_bad_combinations_of_data_are_one_clear_error(tmp_path, case, match):
    from feature_extractor.imaging.dataset import load_datasets

    a = make_class_folders(tmp_path / "one" / "data", 2)
    if case == "twice":
        paths = [a, tmp_path / "one" / ".." / "one" / "data"]
    elif case == "same-name":
        paths = [a, make_class_folders(tmp_path / "two" / "data", 2)]
    else:
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"path,label,source\n{a}/COVID/img0.png,1,x\n{a}/NonCOVID/img0.jpg,0,\n")
        paths = [manifest]
    with pytest.raises(DatasetError, match=match):
        load_datasets(paths)


def test_a_manifest_source_column_names_sources(tmp_path, class_folders):
    manifest = class_folders / "m.csv"
    manifest.write_text("path,label,source\nCOVID/img0.png,1,site-1\nNonCOVID/img0.jpg,0,site-2\n")
    assert load_dataset(manifest).sources == ["site-1", "site-2"]
