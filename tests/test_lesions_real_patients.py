"""The segmentation network on real patients: lesion-slices and the real MobileNetV2 (its own module, so
that the test runner gives it a worker of its own beside test_lesions.py's)."""
import pytest

from classifiers.settings import LesionSettings
from classifiers.workflows.lesions.evaluate import agreement, score_slice
from classifiers.workflows.lesions.maps import LesionMapper
from classifiers.workflows.lesions.training import train_segmentation
from covidct_core.run_context import RunContext
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.segmentation.lesion_data import LesionData, load_lesion_folder
from feature_extractor.weights import WeightsChoice
from tests.conftest import MOBILENETV2_FILE, SHARED, needs_shared

LESION_SLICES = SHARED / "data" / "lesion-slices"


@pytest.mark.slow
@pytest.mark.integration
@needs_shared(LESION_SLICES, MOBILENETV2_FILE)
def test_a_network_trained_on_two_patients_finds_the_lungs_and_lesions_of_a_third(tmp_path):
    """Real patients of lesion-slices and the real MobileNetV2: trained on rp5 and rp8, measured on rp1."""
    data = load_lesion_folder(LESION_SLICES)
    train = LesionData(tuple(s for s in data.slices if s.patient in ("rp5", "rp8")), data.folders)
    test = [s for s in data.slices if s.patient == "rp1"]
    spec = FeatureSpec("mobilenetv2", WeightsChoice("file", str(MOBILENETV2_FILE)))
    context = RunContext(tmp_path / "features", batch_size=16)
    settings = LesionSettings(epochs=30, members=2, views=2, seed=0)  # each member learns from one patient
    fit = train_segmentation(train, spec, settings, context)
    mapper = LesionMapper(fit.segmenter, FeatureSpec.from_record(fit.record["maps"]), settings, context)
    m = agreement([score_slice(s, seg) for s, (_, seg) in zip(test, mapper.segment_slices([s.path for s in test]))])
    # The bench measures the quality; here two one-patient decoders must already find most of both (0.69 and 0.95
    # with this seed, 0.40 and 0.94 with the next).
    assert m["pixel_dice"] > 0.3 and m["lung_dice"] > 0.9 and m["lung_slices_without_mask"] == 0
