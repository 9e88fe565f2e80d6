"""The JSON API's types, made from the prediction record's declarations (prediction_record.py)
plus what only the API carries (uploaded names, pictures, the top slices' strip)."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field, create_model

from classifiers.records import prediction_record as record

PICTURE = "A JPEG data: URI"


PICTURES = {
    "image": (Optional[str], Field(None, description=f"{PICTURE}: the slice.")),
    "heatmap": (Optional[str], Field(None, description=f"{PICTURE}: the slice with its heatmap.")),
    "lesion": (Optional[str], Field(None, description=f"{PICTURE}: the lungs (outlined) and lesion over the "
                                                      "slice (models with a segmentation network).")),
}


def response_models() -> type[BaseModel]:
    """The /predict response type, from the record declarations as they are now."""
    image = record.SLICE.api_model("ImageResult", {
        "name": (str, Field(description="The uploaded file's name (patient identifiers removed).")), **PICTURES})
    top_slice = record.study_slice().api_model("TopSlice", PICTURES)
    zone = create_model("Zone", lung=(str, ...), zone=(str, Field(description="upper, middle or lower third")),
                        opacity_percent=(Optional[float], Field(None, description="The zone's percentage of opacity.")),
                        score=(Optional[int], Field(None, description="Its score, 0-5.")))
    study = record.STUDY.api_model("StudyResult", {
        "aggregation": (str, Field(description="How slice probabilities were pooled into the study's.")),
        "top_slices": (list[top_slice], Field(description="The highest-scoring slices, with pictures (a heatmap only "
                                                          "where the study is answered).")),
        "lesion_slices": (list[top_slice], Field(description="The slices with the most lesion, with the lungs (outlined "
                                                             "by side) and lesion over them.")),
        "zones": (list[zone], Field(description="The six zones of the severity score.")),
        "downloads": (dict[str, str], Field(description="Links to the study's files: csv (its studies.csv row), "
                                                        "slices_csv, nifti, slicer_colours, itksnap_labels, seg.")),
        "failed_slices": (int, Field(description="Slices that could not be decoded.")),
    })
    upload = create_model(
        "UploadResult", upload=(str, Field(description="The zip's name.")), studies=(list[study], ...),
        notes=(list[str], Field(default_factory=list, description="Why all of a group's study answers are uncertain.")),
        error=(Optional[str], Field(None, description="Why the zip held no study.")))
    return create_model(
        "PredictResponse", model=(str, ...), threshold=(float, ...),
        error_rate=(float, Field(description="The answers' error rate.")), research_use_only=(bool, ...),
        images=(list[image], Field(description="One per uploaded slice, in upload order.")),
        studies=(list[upload], Field(description="One per uploaded zip.")))


def fields_listing() -> dict:
    """What the page shows for an image and for a study: each field's name, type and help."""
    return {"image": record.SLICE.describe(), "study": record.STUDY.describe()}
