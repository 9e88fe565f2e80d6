#!/usr/bin/env python
"""Rebuild the data sets the demo, the tests and the benches read (../shared/data/...) from their public
sources, in the layout the tool expects. Needs git and internet; the data never goes into this repository.

    python scripts/rebuild_data.py covid-ct        OUT/covid-ct
    python scripts/rebuild_data.py mosmed-slices   OUT/mosmed-slices
    python scripts/rebuild_data.py dicom-studies   OUT/dicom-studies
    python scripts/rebuild_data.py lesion-slices   OUT/lesion-slices
    python scripts/rebuild_data.py lesion-slices-sirm OUT/lesion-slices-sirm

Each source is fetched at the commit the team's copy came from (a shallow, sparse clone of the folders
needed). Files that were copied unchanged (COVID-CT, MosMed slices, the DICOM studies) come back
byte-identical; the two lesion sets are converted (window scaling, resizing, mask orientation), so their
pixels may differ slightly from the team's copy. docs/data.md says where each set comes from and its licence.
Written for a machine with internet; it could not be run where it was written (no internet there).
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# repository, commit, folders needed: where each set is fetched from.
SOURCES = {
    "covid-ct": ("https://github.com/UCSD-AI4H/COVID-CT", "master", ["Images-processed", "Data-split", "*MetaInfo*"]),
    "mosmed-slices": ("https://github.com/Coronavirus-Visualization-Team/CVT_COVID-CT-CNN", "caa067e", ["new_data"]),
    "dicom-studies": ("https://github.com/ShahinSHH/COVID-CT-MD", "master",
                      ["Sample data", "Slice-level-labels.npy", "Index.csv"]),
    "lesion-slices": ("https://github.com/thnguyencit/covid-ct", "6dae4ed", ["dataset"]),
    "lesion-slices-sirm": ("https://github.com/DengPingFan/Inf-Net", "fb3a03b", ["Dataset"]),
}
LESION_PATIENTS = (1, 3, 5, 6, 8, 9)   # of MedSeg's nine Radiopaedia volumes: the six with lung masks kept
MOSMED_FOLDERS = {"neg_mosmed_ct_0_imgs": ("NonCOVID", "ct0", "CT0"), "pos_mosmed_ct_1_imgs": ("COVID", "ct1", "CT1"),
                  "pos_mosmed_ct_2_imgs": ("COVID", "ct2", "CT2"), "pos_mosmed_ct_3_imgs": ("COVID", "ct3", "CT3"),
                  "pos_mosmed_ct_4_imgs": ("COVID", "ct4", "CT4")}
STUDIES = {"COVID-19 subjects/P001": ("COVID", "P001"), "Normal subjects/normal001": ("Normal", "normal001"),
           "CAP subjects/cap001": ("CAP", "cap001")}


def fetch(name: str, work: Path) -> Path:
    """A shallow sparse clone of the set's repository at its commit, only the folders it needs."""
    url, commit, folders = SOURCES[name]
    repo = work / name
    subprocess.run(["git", "clone", "--filter=blob:none", "--no-checkout", url, str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "sparse-checkout", "set", "--no-cone", *folders], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", commit], check=True)
    return repo


def covid_ct(repo: Path, out: Path) -> None:
    """UCSD-AI4H's processed images (zipped or not upstream), official split and metadata, unchanged."""
    import zipfile

    for folder in ("CT_COVID", "CT_NonCOVID"):
        src = repo / "Images-processed" / folder
        if src.is_dir():
            shutil.copytree(src, out / folder)
        else:
            with zipfile.ZipFile(src.with_suffix(".zip")) as archive:
                archive.extractall(out)
    shutil.copytree(repo / "Data-split", out / "Data-split", ignore=shutil.ignore_patterns("*MetaInfo*"))
    for meta in repo.rglob("*MetaInfo*"):
        shutil.copyfile(meta, out / meta.name)
    if not any(out.glob("*MetaInfo*.csv")):
        print("COVID-CT: export the MetaInfo sheets as COVID-CT-MetaInfo.csv and NonCOVID-CT-MetaInfo.csv (File "
              "name, Patient ID, ...) into the folder: the patient ids group every split, fold and bootstrap.")


def mosmed_slices(repo: Path, out: Path) -> None:
    """One slice per MosMedData study, files unchanged, named by severity; manifest.csv (one patient each)."""
    rows = []
    for folder, (label, prefix, severity) in MOSMED_FOLDERS.items():
        for src in sorted((repo / "new_data" / folder).glob("*.jpg")):
            name = f"{label}/{prefix}_{src.name}"
            (out / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / name)
            rows.append((name, label, f"mosmed-{prefix}_{src.stem}", severity))
    write_csv(out / "manifest.csv", ("path", "label", "patient", "severity"), rows)


def dicom_studies(repo: Path, out: Path) -> None:
    """Every third slice (InstanceNumber 1, 4, 7, ...) of the three sample studies, files unchanged, and the
    radiologists' slice labels of P001 and cap001 (Index.csv gives each study's row of the label array; its
    element i is InstanceNumber i + 1); the normal study has no labels: 0 throughout, by diagnosis."""
    import pydicom

    labels = np.load(repo / "Slice-level-labels.npy", allow_pickle=True)
    with open(repo / "Index.csv", newline="") as f:
        index = {row["Folder/ID"]: int(row["Label Index"]) for row in csv.DictReader(f)}
    rows = []
    for src, (diagnosis, patient) in STUDIES.items():
        infected = {} if patient not in index else {i + 1: int(v) for i, v in enumerate(labels[index[patient]])}
        for path in sorted((repo / "Sample data" / src).glob("*.dcm")):
            number = int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)
            if (number - 1) % 3:
                continue
            name = f"{diagnosis}/{patient}/{path.name}"
            (out / diagnosis / patient).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / name)
            rows.append((name, patient, diagnosis, number, int(infected.get(number, 0))))
    write_csv(out / "slices.csv", ("path", "patient", "diagnosis", "instance_number", "infection"),
              sorted(rows, key=lambda r: (r[2], r[3])))


def lesion_slices(repo: Path, out: Path) -> None:
    """MedSeg's Radiopaedia volumes as vendored by thnguyencit/covid-ct: the slice (12-bit lung window scaled
    to 0-255, 512 px) with the radiologists' lung and infection masks turned to match it (the source stores
    them mirrored; the infection mask also turned by 90 degrees), nearest-neighbour to 512 px."""
    from PIL import Image

    data = repo / "dataset"
    rows = []
    for patient in LESION_PATIENTS:
        name = f"rp{patient}"
        for d in ("slices", "masks"):
            (out / d / name).mkdir(parents=True, exist_ok=True)
        masks = sorted((data / "InfectionMasks").glob(f"{patient}_z*.png"))
        for infection_file in masks:
            z = int(infection_file.stem.split("_z")[1])
            grey = dicom_grey(next((data / "OpenSourceDCMs" / f"DCM{patient}").glob(f"*s{z:04d}*")))
            infection = np.array(Image.open(infection_file).transpose(Image.FLIP_LEFT_RIGHT).rotate(90))
            lungs = np.array(Image.open(data / "LungMasks" / infection_file.name).transpose(Image.FLIP_LEFT_RIGHT))
            stem = f"{name}_z{z:03d}"
            Image.fromarray(grey).save(out / "slices" / name / f"{stem}.jpg", quality=95)
            infected = int((infection > 0).sum() >= 10)
            size = grey.shape[::-1]
            lungs_512 = np.array(Image.fromarray(((lungs > 0) * 255).astype(np.uint8)).resize(size, Image.NEAREST))
            infection_512 = np.array(Image.fromarray(infection.astype(np.uint8)).resize(size, Image.NEAREST))
            Image.fromarray(lungs_512).save(out / "masks" / name / f"{stem}_lungs.png")
            Image.fromarray(infection_512).save(out / "masks" / name / f"{stem}_infection.png")
            share = float((infection_512 > 0).sum()) / max(int((lungs_512 > 0).sum()), 1)
            rows.append((f"slices/{name}/{stem}.jpg", name, z, infected, round(share, 4),
                         round(float((lungs_512 > 0).mean()), 4), f"masks/{name}/{stem}_lungs.png",
                         f"masks/{name}/{stem}_infection.png"))
    write_csv(out / "manifest.csv", MANIFEST, rows)


def dicom_grey(path: Path) -> np.ndarray:
    """The stored 12-bit lung-window values (0-4095) scaled linearly to 8 bits."""
    import pydicom

    pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
    return np.clip(np.round(pixels / 4095 * 255), 0, 255).astype(np.uint8)


def lesion_slices_sirm(repo: Path, out: Path) -> None:
    """MedSeg's SIRM slices as vendored by Inf-Net: its Doctor-label training slices as sirm_aNNN and its
    LungInfection test slices as sirm_bNNN, each turned by 90 degrees so that the spine is at the bottom."""
    from PIL import Image

    sets = {"a": repo / "Dataset/TrainingSet/LungInfection-Train/Doctor-label",
            "b": repo / "Dataset/TestingSet/LungInfection-Test"}
    rows = []
    (out / "slices").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for letter, folder in sets.items():
        for image in sorted((folder / "Imgs").glob("*.jpg"), key=lambda p: int(p.stem)):
            stem = f"sirm_{letter}{int(image.stem):03d}"
            Image.open(image).convert("L").rotate(90, expand=True).save(out / "slices" / f"{stem}.jpg", quality=95)
            mask = np.array(Image.open(folder / "GT" / f"{image.stem}.png").convert("L").rotate(90, expand=True))
            Image.fromarray(((mask > 127) * 255).astype(np.uint8)).save(out / "masks" / f"{stem}_infection.png")
            rows.append((f"slices/{stem}.jpg", "", "", 1, "", "", "", f"masks/{stem}_infection.png"))
    write_csv(out / "manifest.csv", MANIFEST, rows)


MANIFEST = ("path", "patient", "slice", "infected", "infection_fraction", "lung_fraction", "lung_mask",
            "infection_mask")
BUILDERS = {"covid-ct": covid_ct, "mosmed-slices": mosmed_slices, "dicom-studies": dicom_studies,
            "lesion-slices": lesion_slices, "lesion-slices-sirm": lesion_slices_sirm}


def write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("out", type=Path, help="the folder to create (must not exist)")
    args = parser.parse_args()
    if args.out.exists():
        print(f"{args.out} exists: give a new folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        repo = fetch(args.name, Path(work))
        args.out.mkdir(parents=True)
        BUILDERS[args.name](repo, args.out)
    print(f"{args.name} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
