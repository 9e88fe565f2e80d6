"""A DICOM study's lungs and lesion as a DICOM Segmentation object (SEG), made with highdicom, that
OHIF, 3D Slicer and most PACS viewers overlay on the series: three segments (right lung, left lung,
lesion; SNOMED CT codes), one frame per source slice, each frame referencing its source instance and
placed at its own position (a series with a missing slice is placed slice by slice). A new series and
instance UID per object; the patient and study are the source series' own (the SEG belongs to them),
nothing more of the patient is added. Research use: the content label and description say so."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError
from feature_extractor.lungs.sides import LEFT, RIGHT

from .label_volumes import LEFT_LESION, RIGHT_LESION

# (label, category, type) of each segment, in segment number order: SNOMED CT codes.
SEGMENTS = (("Right lung", ("91723000", "Anatomical Structure"), ("3341006", "Right lung")),
            ("Left lung", ("91723000", "Anatomical Structure"), ("44029006", "Left lung")),
            ("Lesion", ("49755003", "Morphologically Abnormal Structure"), ("52988006", "Lesion")))
LUNG = ("39607008", "Lung")


class SegRefused(CovidCTError):
    """A series a SEG cannot be made for (the message says why)."""


def segment_masks(labels: np.ndarray) -> np.ndarray:
    """(rows, columns, 3) booleans of one slice's volume labels (label_volumes.VOLUME_LABELS): right lung,
    left lung (each with its lesion: radiologists draw the lungs with their lesions), lesion."""
    right = (labels == RIGHT) | (labels == RIGHT_LESION)
    left = (labels == LEFT) | (labels == LEFT_LESION)
    return np.stack([right, left, (labels == RIGHT_LESION) | (labels == LEFT_LESION)], axis=-1)


def write_seg(out: str | Path, sources: Sequence[str], labels: Sequence[np.ndarray | None], model_name: str,
              version: str) -> Path:
    """The SEG of the slices at ``sources`` (series order) with their ``labels`` (None: a slice that was not
    segmented, left out)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    kept = [(p, lab) for p, lab in zip(sources, labels) if lab is not None]
    images = [_with_type_2(pydicom.dcmread(p)) for p, _ in kept]
    if any("FrameOfReferenceUID" not in ds for ds in images):
        raise SegRefused("the series has no FrameOfReferenceUID, which a SEG must share with it")
    algorithm = hd.AlgorithmIdentificationSequence(name="covidct-features lungs and lesion network", version=version,
                                                   family=Code("123110", "DCM", "Artificial Intelligence"))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=label, segmented_property_category=_snomed(category),
        segmented_property_type=_snomed(kind), algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
        tracking_uid=generate_uid(), tracking_id=label, anatomic_regions=[_snomed(LUNG)] if label == "Lesion" else None)
        for k, (label, category, kind) in enumerate(SEGMENTS)]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=np.stack([segment_masks(lab) for _, lab in kept]),
        segmentation_type="BINARY", segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=9901, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="covidct-features",
        manufacturer_model_name=model_name[:64], software_versions=version, device_serial_number="none",
        content_label="LUNGSLESION", content_description="Lungs and lesion, research use only", omit_empty_frames=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out


def _snomed(code: tuple[str, str]):
    from pydicom.sr.coding import Code

    return Code(value=code[0], scheme_designator="SCT", meaning=code[1])


# The patient's and study's attributes a SEG copies from its series that DICOM lets be empty (type 2): a series
# without one (an anonymiser removed it) gets it empty, as the standard allows, not made up.
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type_2(ds):
    for keyword in TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
