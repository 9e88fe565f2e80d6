"""Severity and the maps a user can check: zone scores at their boundaries, a study's severity,
the lungs' sides of a radiologist's lung mask, and the NIfTI label volume's geometry."""
import numpy as np
import pytest

from classifiers.records.severity import SliceAreas, severity, zone_score
from feature_extractor.imaging.geometry import series_grid
from feature_extractor.lungs.sides import LEFT, RIGHT, lung_sides


@pytest.mark.parametrize("percent, score", [(None, None), (0.0, 0), (0.01, 1), (4.99, 1), (5.0, 2), (24.9, 2),
                                            (25.0, 3), (49.9, 3), (50.0, 4), (74.9, 4), (75.0, 5), (100.0, 5)])
def test_zone_scores_follow_the_table_at_its_boundaries(percent, score):
    assert zone_score(percent) == score


def test_a_studys_severity_sums_six_zones_along_each_lungs_extent():
    # Nine slices head first: the right lung clear but for its lower third (half involved), the left
    # lung 10% involved everywhere; the first slice has no lung.
    slices = [SliceAreas(0, 0, 0, 0)] + [SliceAreas(0.1, 0.1, 0.05 if i >= 6 else 0.0, 0.01) for i in range(9)]
    s = severity(slices, superior_first=True)
    assert s.scores == {"right upper third": 0, "right middle third": 0, "right lower third": 4,
                        "left upper third": 2, "left middle third": 2, "left lower third": 2}
    assert s.severity_score == 10 and s.opacity_right == pytest.approx(100 * 0.15 / 0.9)
    assert s.opacity_percent == pytest.approx(100 * (0.15 + 0.09) / 1.8) and s.opacity_left == pytest.approx(10)
    feet_first = severity(list(reversed(slices)), superior_first=False)
    assert feet_first.scores == s.scores  # a DICOM series runs feet to head: the same zones
    assert severity([SliceAreas(0, 0, 0, 0)]).severity_score is None


def test_the_patients_right_lung_is_the_images_left_also_when_the_lungs_touch():
    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:25] = mask[5:35, 35:55] = True
    sides = lung_sides(mask)
    assert (sides[:, :30][mask[:, :30]] == RIGHT).all() and (sides[:, 30:][mask[:, 30:]] == LEFT).all()
    mask[18:22, 25:35] = True  # a bridge: one part, split at its thinnest column
    sides = lung_sides(mask)
    assert (sides[10, 5:25] == RIGHT).all() and (sides[10, 35:55] == LEFT).all()


def test_the_label_volumes_affine_is_the_series_geometry():
    from types import SimpleNamespace

    headers = [SimpleNamespace(ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.7, 0.8],
                               ImagePositionPatient=[-100.0, -120.0, z], SliceThickness=2.5) for z in (10, 12.5, 15)]
    affine = series_grid(headers).ras
    # voxel (i column, j row, k slice) -> LPS (-100 + 0.8 i, -120 + 0.7 j, 10 + 2.5 k) -> RAS flips x and y
    assert np.allclose(affine @ [2, 3, 1, 1], [100 - 1.6, 120 - 2.1, 12.5, 1])
