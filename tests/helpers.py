"""Synthetic CT-like images and datasets that tests build themselves."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def ct_like(seed: int, covid: bool, size: int = 64) -> Image.Image:
    """A grey disc ('body') with two dark ellipses ('lungs'); COVID ones get bright blotches,
    so classes are learnable even from random-init features."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 20.0)
    img[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2] = 150
    for cx in (0.33, 0.67):
        img[((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.13) ** 2 < 1] = 40
    if covid:
        for _ in range(6):
            cy, cx = rng.uniform(0.3, 0.7), rng.choice([0.33, 0.67]) + rng.uniform(-0.05, 0.05)
            img[((yy - cy) ** 2 + (xx - cx) ** 2) < 0.004] = 230
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")


def make_class_folders(root: Path, n_per_class: int = 8, size: int = 64, covid_dir: str = "COVID",
                       noncovid_dir: str = "NonCOVID", seed: int = 0) -> Path:
    """root/COVID/*.png and root/NonCOVID/*.jpg with CT-like images."""
    for label, sub, ext in ((1, covid_dir, ".png"), (0, noncovid_dir, ".jpg")):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            ct_like(seed * 1000 + label * 100 + i, bool(label), size).save(folder / f"img{i}{ext}")
    return root


def make_covidct_layout(root: Path, n_patients: int = 12, per_patient: int = 2, size: int = 64) -> Path:
    """A small replica of the COVID-CT layout: class folders, MetaInfo CSVs, Data-split lists
    (NonCOVID ones with CRLF, as upstream), split by patient 6:3:3."""
    splits = ["train"] * (n_patients // 2) + ["val"] * (n_patients // 4)
    splits += ["test"] * (n_patients - len(splits))
    lists: dict[tuple[str, str], list[str]] = {}
    (root / "CT_COVID").mkdir(parents=True)
    (root / "CT_NonCOVID").mkdir(parents=True)
    with open(root / "COVID-CT-MetaInfo.csv", "w", newline="") as cf, \
            open(root / "NonCOVID-CT-MetaInfo.csv", "w", newline="") as nf:
        cw, nw = csv.writer(cf), csv.writer(nf)
        cw.writerow(["File name", "Patient ID", "Age"])
        nw.writerow(["", "image name", "patient id"])
        for p in range(n_patients):
            for j in range(per_patient):
                cname = f"paper{p}-fig{j}.png"
                img = ct_like(p * 10 + j, True, size)
                # Like upstream: some COVID ".png" files hold JPEG bytes.
                img.save(root / "CT_COVID" / cname, format="JPEG" if j == 0 else "PNG")
                cw.writerow([cname, f"Patient {p}", 40])
                lists.setdefault(("COVID", splits[p]), []).append(cname)
                nname = f"{p}%{j}.jpg"
                ct_like(5000 + p * 10 + j, False, size).save(root / "CT_NonCOVID" / nname)
                nw.writerow([p * 10 + j, nname, f"crawled_patient_{p}"])
                lists.setdefault(("NonCOVID", splits[p]), []).append(nname)
    for (cls, split), names in lists.items():
        folder = root / "Data-split" / cls
        folder.mkdir(parents=True, exist_ok=True)
        sep = "\r\n" if cls == "NonCOVID" else "\n"
        (folder / f"{split}CT_{cls}.txt").write_bytes(sep.join(names).encode())
    return root


def make_dicom(path: Path, hu: np.ndarray | None, slope: float = 1.0, intercept: float = -1024.0,
               photometric: str = "MONOCHROME2", patient_id: str | None = None) -> Path:
    """A CT DICOM file storing ``hu`` as int16 raw values (raw = (hu - intercept) / slope);
    ``hu=None`` writes one without pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if patient_id:
        ds.PatientID = patient_id
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if hu is not None:
        raw = np.round((hu - intercept) / slope).astype(np.int16)
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = raw.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def decompression_bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header declares side x side pixels."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def non_ct_pictures(folder: Path, n: int = 30, seed: int = 0) -> list[Path]:
    """Pictures that are not CT slices, for the out-of-distribution flag: crops of the two
    photographs scikit-learn ships (a temple, a flower), chest-radiograph-like drawings
    (bright mediastinum and ribs over dark lung fields) and coloured noise. PNGs in ``folder``."""
    from scipy import ndimage as ndi
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images().images
    paths = []
    for i in range(n):
        kind = i % 3
        if kind == 0:  # a random crop of a photograph
            photo = photos[(i // 3) % len(photos)]
            side = int(rng.integers(180, 400))
            top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
            image = photo[top:top + side, left:left + side]
        elif kind == 1:  # a chest-radiograph-like drawing
            yy, xx = np.mgrid[0:256, 0:256] / 256
            img = 0.75 * np.exp(-((xx - 0.5) / 0.45) ** 2 - ((yy - 0.55) / 0.6) ** 2)
            for cx in (0.3, 0.7):
                img[((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.15) ** 2 < 1] *= 0.35
            img += 0.12 * (np.sin(yy * rng.uniform(50, 70)) > 0.6)  # ribs
            img[np.abs(xx - 0.5) < 0.06] += 0.3                     # spine and mediastinum
            img = ndi.gaussian_filter(img + rng.normal(0, 0.03, img.shape), 1.5)
            image = np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        else:  # coloured noise
            image = ndi.gaussian_filter(rng.uniform(0, 255, (128, 128, 3)), (2, 2, 0)).astype(np.uint8)
        path = folder / f"picture{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(path)
        paths.append(path)
    return paths


def lesion_slice(seed: int, infected: bool, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lung-windowed CT-like slice with its lung and infection masks: a bright body on dark
    air, two dark lungs with faint vessels, and, when ``infected``, ground-glass blobs in the lungs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 10.0)
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.47) ** 2 < 1
    img[body] = 225
    lungs = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        lungs |= ((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.15) ** 2 < 1
    img[lungs] = 75
    infection = np.zeros((size, size), bool)
    if infected:
        for _ in range(3):
            cy, cx = rng.uniform(0.35, 0.65), rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05)
            infection |= ((yy - cy) ** 2 + (xx - cx) ** 2) < 0.006
        infection &= lungs
        img[infection] = 165
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lungs, infection


def make_lesion_data(root: Path, patients: int = 3, per_patient: int = 6, size: int = 96) -> Path:
    """A lesion-slices-like folder: slices/, masks/ and manifest.csv (half the slices infected)."""
    (root / "slices").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        for j in range(per_patient):
            infected = j % 2 == 0
            img, lungs, infection = lesion_slice(100 * p + j, infected, size)
            name = f"p{p}_z{j:03d}"
            Image.fromarray(img, "L").save(root / "slices" / f"{name}.png")
            Image.fromarray(lungs.astype(np.uint8) * 255, "L").save(root / "masks" / f"{name}_lungs.png")
            Image.fromarray(infection.astype(np.uint8) * 255, "L").save(root / "masks" / f"{name}_infection.png")
            rows.append([f"slices/{name}.png", f"p{p}", j + 1, int(infected),
                         round(float(infection.sum() / lungs.sum()), 4), round(float(lungs.mean()), 4),
                         f"masks/{name}_lungs.png", f"masks/{name}_infection.png"])
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient", "slice", "infected", "infection_fraction", "lung_fraction", "lung_mask",
                         "infection_mask"])
        writer.writerows(rows)
    return root


CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def chest(size=64, lungs=True, seed=0):
    """HU of a synthetic axial slice: a body ellipse, with two lungs or without (abdomen)."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.45) ** 2 + (y / 0.35) ** 2 < 1] = 40
    if lungs:
        for cx in (-0.2, 0.2):
            hu[((x - cx) / 0.15) ** 2 + (y / 0.25) ** 2 < 1] = -820
    return hu + np.random.default_rng(seed).normal(0, 5, hu.shape)


def write_slice(path, study, series, z, *, number=1, lungs=True, sop=CT, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                orientation=(1, 0, 0, 0, 1, 0), thickness=2.0, kernel="B70f", pixels=True, frame_of_reference=None):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "SECRET^PERSON", "PID98765", "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.FrameOfReferenceUID = frame_of_reference or generate_uid()
    ds.Modality = "CT" if sop == CT else "SR"
    ds.InstanceNumber = number
    if pixels:
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.SliceThickness, ds.ConvolutionKernel = thickness, kernel
        ds.PixelSpacing = [0.7, 0.8]  # rows, columns (mm)
        hu = chest(lungs=lungs, seed=number)
        ds.Rows, ds.Columns = hu.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder, study, series=None, n=6, z0=0.0, step=2.0, prefix="PID98765", **kw):
    series = series or generate_uid()
    frame = kw.pop("frame_of_reference", None) or generate_uid()
    return [write_slice(folder / f"{prefix}_{series[-4:]}_{i}.dcm", study, series, z0 + step * i,
                        number=i + 1, frame_of_reference=frame, **kw) for i in range(n)]
