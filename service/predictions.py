"""What one request does: save the uploads, score slices and zipped studies, answer in JSON.

Each image's and each study's fields are those of the prediction record
(classifiers/records/prediction_record.py), as in the CSVs, plus the pictures the page
shows. Names are the uploaded file names with patient identifiers from DICOM headers removed
(unless keep_identifiers).

Slices already in the caches are scored in the request's own thread, without the CNN, so they
never wait behind new ones. Slices that need the CNN go to the dynamic batcher (batcher.py):
concurrent requests' new slices run as one batch, and are scored in it too (the out-of-distribution
check and the answers vectorised over the batch, each request's slices still one set for the
source test): one request at a time, scoring costs ~4 ms a slice; in a batch of 32, ~0.4 ms.
A request that mixes cached and new slices is scored whole in its own thread once its new
slices are in the caches. Heatmaps and whole studies use the CNN under the batcher's lock, one
at a time. A harmonized model learns a batch's statistics as it scores, so it scores everything
in the batcher's thread.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from classifiers.estimators.options import NOT_ASSESSABLE
from classifiers.records import prediction_record as record
from classifiers.records.severity import LUNGS, ZONES, zone_name
from classifiers.records.study_results import StudySlice
from classifiers.workflows.model import LoadedModel
from classifiers.workflows.predict import predict_records
from classifiers.workflows.studies import predict_studies
from covidct_core.errors import CovidCTError
from feature_extractor.imaging.dataset import DICOM_SUFFIXES, Record, with_keys
from feature_extractor.imaging.decode import ImageDecodeError, read_pixels, set_decode_budget
from feature_extractor.imaging.studies import Redactor, redactor_for

from .batcher import DynamicBatcher
from .downloads import DownloadStore
from .settings import ServeSettings
from .uploads import CHUNK, UploadRejected, extract_zip, private_folder, safe_name

ZIP_MAGIC = b"PK\x03\x04"
SERVICE_DECODE_BYTES = 64 * 2**20  # decoded uploads kept for the backbones of the same request


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the block's seconds to ``timings[stage]`` (the response's Server-Timing header)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class PredictionService:
    def __init__(self, model: LoadedModel, settings: ServeSettings, lock: threading.RLock):
        self.model = model
        self.settings = settings
        self.lock = lock  # the CNN, one user at a time: the batcher, a heatmap, a study
        self._explainer = None
        self.downloads = DownloadStore()
        set_decode_budget(SERVICE_DECODE_BYTES)  # an upload is read by its own request only
        with lock:  # the weights are resolved (and checked) once, before requests read the caches in parallel
            for extractor in model.extractors:
                extractor.weights  # noqa: B018
            if model.lesions is not None:
                model.lesions.cache()
        self.batcher = DynamicBatcher(self._score, settings.max_batch, settings.batch_wait_ms, lock)

    def _score(self, records: list[Record]) -> list:
        """One CNN batch: the prediction rows of ``records``, in order (each request's slices one set,
        by their source); their features go into the caches on the way."""
        return predict_records(self.model, records).rows

    def _cached(self, record: Record) -> bool:
        """Whether every feature the model reads of this slice is cached (no CNN needed)."""
        try:
            if not all(record.key in ex.open_cache().present([record.key]) for ex in self.model.extractors):
                return False
            lesions = self.model.lesions
            return lesions is None or record.key in lesions.cache().present([record.key])
        except Exception:  # a cache not made yet: the batcher's thread makes it
            return False

    # -- the model card -------------------------------------------------------------------
    def model_card(self) -> dict:
        c = self.model.card
        return {
            "model": self.model.path.name, "model_sha256": c.model_sha256, "created": c.created,
            "classifier": c.classifier, "params": dict(c.params), "threshold": c.threshold,
            "backbones": [{k: b.get(k) for k in ("backbone", "weights_source", "weights_sha256", "pooling", "tta",
                                                 "crop", "window", "feature_dim")} for b in c.backbones],
            "training": {k: v for k, v in c.to_manifest()["training"].items() if k != "data"},
            "cv": dict(c.cv), "harmonization": c.to_manifest()["harmonization"], "ood": c.ood,
            "study_aggregation": dict(c.study_aggregation), "versions": dict(c.versions),
            "research_use_only": True,
        }

    # -- a request ------------------------------------------------------------------------
    def predict(self, files, heatmaps: bool, timings: dict[str, float] | None = None) -> dict:
        """The response of one request; ``timings`` gets the seconds of each stage (save, decode, queue, cnn,
        score, pictures, studies)."""
        settings = self.settings
        if len(files) > settings.max_files:
            raise UploadRejected(413, f"too many files: {len(files)} in one request, at most {settings.max_files}")
        with private_folder() as folder:
            with timed(timings, "save"):
                slices, studies = self._save(files, folder)
            redact = Redactor() if settings.keep_identifiers else redactor_for([str(p) for _, p in slices])
            try:
                images = self._slices(slices, redact, heatmaps, timings)
                with timed(timings, "studies"), self.lock:
                    found = [self._study(name, path, heatmaps) for name, path in studies]
                return {"model": self.model.path.name, "threshold": self.model.threshold,
                        "error_rate": self.model.error_rate, "research_use_only": True,
                        "images": images, "studies": found}
            except CovidCTError as exc:  # e.g. a harmonized model given too few images
                raise UploadRejected(422, str(exc)) from None

    def _save(self, files, folder: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
        limit = int(self.settings.max_request_mb * 2**20)
        budget = [self.settings.max_files - len(files)]
        total, slices, studies = 0, [], []
        (folder / "slices").mkdir()
        for i, upload in enumerate(files):
            name = upload.filename or f"upload-{i}"
            target = folder / "slices" / safe_name(name, i)
            with open(target, "wb") as out:
                while block := upload.file.read(CHUNK):
                    total += len(block)
                    if total > limit:
                        raise UploadRejected(413, f"upload over the {self.settings.max_request_mb:g} MB limit")
                    out.write(block)
            with open(target, "rb") as fh:
                is_zip = fh.read(4) == ZIP_MAGIC
            if is_zip:
                where = folder / "studies" / f"{i:04d}"
                where.mkdir(parents=True)
                extract_zip(target, where, self.settings, budget)
                studies.append((Path(name).stem, where))
            else:
                slices.append((name, target))
        return slices, studies

    def _explainer_for(self):
        if self._explainer is None:
            from classifiers.workflows.explain import ModelExplainer

            self._explainer = ModelExplainer(self.model, self.settings.heatmap_method)
        return self._explainer

    def _pictures(self, path: str, site: str | None, heatmap: bool) -> dict:
        """The slice, its heatmap and its lungs and lesion (workflows/panels.py); the networks under the lock."""
        from classifiers.workflows.panels import slice_panels

        return slice_panels(self.model, path, side=256, explainer=self._explainer_for() if heatmap else None,
                            site=site, cnn=self.lock).pictures()

    def _slices(self, slices: list[tuple[str, Path]], redact: Redactor, heatmaps: bool,
                timings: dict[str, float] | None = None) -> list[dict]:
        if not slices:
            return []
        # The request's slices are one set for the source test: its own "source", whatever batch they join.
        request = f"upload-{uuid.uuid4().hex[:12]}"
        records = with_keys([Record(str(p), source=request) for _, p in slices])
        if self.model.harmonizer.active:  # it learns a batch's statistics: the whole request goes to the batch
            new = records
        else:
            with timed(timings, "score"):
                new = [r for r in records if not r.error and not self._cached(r)]
        with timed(timings, "decode"):  # here, while the CNN runs another batch; the batch reads the memo
            self._decode_ahead(new)
        if len(new) == len(records):  # all new: the batch scores them as it runs the CNN
            rows = {row.path: row for row in self.batcher.submit(new, timings)}
        else:  # new slices into the caches through the batcher; then the whole request scored here
            self.batcher.submit(new, timings)
            with timed(timings, "score"):
                rows = {row.path: row for row in predict_records(self.model, records).rows}
        out = []
        for (name, _), r in zip(slices, records):
            row = rows[r.path]
            item = {"name": redact(name), **record.SLICE.as_json(row)}
            if row.error is None:
                with timed(timings, "pictures"):  # a heatmap of P(COVID) only where the image is assessable
                    item.update(self._pictures(row.path, row.site, heatmaps and row.answer != NOT_ASSESSABLE))
            out.append(item)
        return out

    @staticmethod
    def _decode_ahead(records: list[Record]) -> None:
        """Decode the new uploads into the decoded-pixels memo (imaging/decode.py); a file that cannot
        be decoded gets its error where the batch reads it."""
        for r in records:
            try:
                read_pixels(r.path, Path(r.path).suffix.lower() in DICOM_SUFFIXES)
            except (ImageDecodeError, OSError):
                pass

    def _study(self, name: str, folder: Path, heatmaps: bool) -> dict:
        """A zip's studies: each one's card (answer, finding, severity and its zones, pictures, files to
        download: its CSV rows and, with a segmentation network, its NIfTI label volume and DICOM SEG)."""
        token, where = self.downloads.new_folder()
        maps = where / "maps" if self.model.lesions is not None else None
        report = predict_studies(self.model, folder, keep_identifiers=self.settings.keep_identifiers, lesion_maps=maps,
                                 seg=maps is not None)
        studies = []
        for result in report.results:
            shown = name if result.study.name == folder.name else f"{name}/{result.study.name}"  # relative to the zip
            files = study_files(report, result, where)
            studies.append({**self._study_card(result, report.redact(shown), heatmaps, report.redact),
                            "aggregation": report.aggregation,
                            "downloads": {what: self.downloads.url(token, path) for what, path in files.items()}})
        return {"upload": report.redact(name), "studies": studies,
                "notes": report.certification,
                "error": None if studies else "no study found in the zip (no DICOM series or image folder)"}

    def _study_card(self, result, shown: str, heatmaps: bool, redact: Redactor) -> dict:
        """The study's fields, the slices with the highest P(COVID) (a heatmap only where the study is assessable),
        the slices with the most lesion (lungs outlined by side, lesion filled), and its zones."""
        slice_record = record.study_slice()
        assessable = result.answer != NOT_ASSESSABLE  # what raised P(COVID) means nothing where it is withheld

        def slice_json(number, row):
            place = result.study.place(row.path)
            return slice_record.as_json(StudySlice(shown, number, row.path, row, None, place.instance_number,
                                                   place.z_mm), redact)
        top = [{**slice_json(i, r), **self._pictures(r.path, r.site, heatmaps and assessable)} for i, r in result.top()]
        lesion = [{**slice_json(i, r), **self._pictures(r.path, r.site, False)} for i, r in result.top_lesion()
                  if self.model.lesions is not None]
        return {**record.STUDY.as_json(result), "study": shown, "top_slices": top, "lesion_slices": lesion,
                "zones": zone_table(result.severity),
                "failed_slices": sum(1 for _, r, _ in result.rows if r is not None and r.error)}


def zone_table(severity) -> list[dict]:
    """The six zones of a study's severity: lung, third, percentage of opacity and score (empty without one)."""
    if severity is None:
        return []
    return [{"lung": side, "zone": f"{zone} third", "opacity_percent": severity.zones[zone_name(side, zone)],
             "score": severity.scores[zone_name(side, zone)]} for side in LUNGS for zone in ZONES]


def study_files(report, result, where: Path) -> dict[str, Path]:
    """The study's files under ``where``: its studies.csv row and its slices' rows, and the maps' volume outputs
    (NIfTI label volume, its label tables, DICOM SEG) where they were written."""
    from classifiers.presentation.csv_files import write_csv
    from classifiers.workflows.studies import map_name, study_slices

    name = map_name(report.redact, result.study)
    slices = study_slices(result)
    schema = record.study_slice()
    files = {"csv": write_csv(where / f"{name}.csv", record.STUDY.csv_header([result]),
                              record.STUDY.csv_rows([result])),
             "slices_csv": write_csv(where / f"{name}_slices.csv", schema.csv_header(slices),
                                     schema.csv_rows(slices, report.redact))}
    for what, suffix in (("nifti", ".nii.gz"), ("slicer_colours", ".ctbl"), ("itksnap_labels", ".itksnap.txt"),
                         ("seg", ".seg.dcm")):
        path = where / "maps" / f"{name}{suffix}"
        if path.is_file():
            files[what] = path
    return files
