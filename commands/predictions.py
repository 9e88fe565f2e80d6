"""Commands that use a model: `predict` answers images and studies, `evaluate` measures it on
labeled images, studies or lesion data, `report` writes the HTML report."""
from __future__ import annotations

from pathlib import Path

import click

from classifiers.records import prediction_record as record
from feature_extractor.imaging.dataset import SPLITS

from .common import (bootstrap_option, data_option, explain_method_option, finish, lesion_data_option,
                     model_crop_option, model_options, refuse_together, site_option)

max_slices_option = click.option("--max-slices", type=click.IntRange(1), default=None,
                                 help="With --studies: score at most N slices per study, evenly spaced within the "
                                      "lungs.")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options(engine=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv",
              show_default=True, help=f"CSV with columns {record.SLICE.help_line()}, one row per file. With "
                                      f"--studies: one row per slice, columns {record.study_slice().help_line()}; "
                                      f"and studies.csv beside it, one row per study, columns "
                                      f"{record.STUDY.help_line()}.")
@click.option("--explain", is_flag=True,
              help="Also write one PNG per image: the slice with a heatmap of the regions that "
                   "raised P(COVID). Occlusion runs 50 variants per image through each backbone: "
                   "1.3 s per image for one MobileNetV2 on 2 CPU cores.")
@click.option("--explain-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the heatmap PNGs go.  [default: heatmaps/ beside --out]")
@explain_method_option
@click.option("--lesion-maps", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="A model with a segmentation network: write each image's <stem>_lesion.png (the binary lesion, 0 / 255, "
                   "whose share of the lungs is lesion_fraction), <stem>_lesion_prob.png (probability x 255) and "
                   "<stem>_lungs.png (right lung 255, left 128) at the image's size into DIR (in the image's "
                   "subfolder); with --studies, also a NIfTI label volume per DICOM study (1 right lung, 2 left lung, "
                   "3 lesion in the right lung, 4 in the left) with the series' geometry and its label tables "
                   "(<study>.ctbl for 3D Slicer, <study>.itksnap.txt for ITK-SNAP).")
@click.option("--seg", is_flag=True,
              help="With --studies and --lesion-maps: also a DICOM Segmentation object (SEG) per DICOM study, "
                   "<study>.seg.dcm: right lung, left lung and lesion over the series, for OHIF, 3D Slicer and "
                   "PACS viewers.")
@model_crop_option
@site_option
@click.option("--studies", is_flag=True,
              help="One answer per study: DICOM files grouped by study and series (the axial CT series "
                   "used, slices ordered by position), a folder of PNG/JPEG slices is one study; slices "
                   "outside the lungs skipped; slice probabilities pooled as the model chose at fit. "
                   "Writes studies.csv beside --out, which then lists the slices.")
@max_slices_option
@click.option("--keep-identifiers", is_flag=True,
              help="With --studies: write study/series UIDs and file names as they are. Default: patient "
                   "name, ID and birth date from the headers are removed from every output.")
def predict(folder, model, out, explain, explain_dir, explain_method, lesion_maps, seg, crop, site, studies,
            max_slices, keep_identifiers) -> None:
    """Predict COVID probabilities for every image under FOLDER (recursively).

    Exit code 3 when some files could not be read: they still get a row, with the reason
    in the `error` column.
    """
    if studies:
        refuse_together("--studies", {"--crop": "crop", "--explain": "explain", "--explain-dir": "explain_dir"})
        from classifiers.workflows.studies import predict_studies_and_write

        if seg and lesion_maps is None:
            raise click.UsageError("--seg needs --lesion-maps DIR: the SEG is written beside the maps")
        report = predict_studies_and_write(model, folder, out=out, site=site, max_slices=max_slices,
                                           keep_identifiers=keep_identifiers, lesion_maps=lesion_maps, seg=seg)
        finish(report.summary(), report.failures)
        return
    if max_slices or keep_identifiers or seg:
        raise click.BadParameter("--max-slices, --keep-identifiers and --seg need --studies", param_hint="--studies")
    from classifiers.workflows.predict import predict_and_write

    report = predict_and_write(model, folder, out=out, crop=crop, explain_method=explain_method if explain else None,
                               explain_dir=explain_dir, site=site, lesion_maps=lesion_maps)
    finish(report.summary(), report.failures)


@click.command()
@model_options(engine=True)
@data_option
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Split to evaluate when the data has the official split (other data: all images).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where metrics.json, report.md and the plots go.  [default: reports/<model>-<split>]")
@click.option("--cv", "cv_folds", type=click.IntRange(2, 20), default=None,
              help="Also refit the model's configuration in K patient-grouped folds of train+val "
                   "and report mean +- sd.")
@click.option("--cv-by", type=click.Choice(["source"]), default=None,
              help="source: leave one source out (needs --data per source). For each source, refit the "
                   "model's configuration on the others' training images and test on all of its images.")
@bootstrap_option
@model_crop_option
@site_option
@click.option("--studies", "study_labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="LABELS.csv",
              help="Study level: --data is a folder of studies (see predict --studies) and LABELS.csv has columns "
                   "study,label (study: the folder name predict --studies writes, or the StudyInstanceUID).")
@max_slices_option
@lesion_data_option
def evaluate(model, data, split, report_dir, cv_folds, cv_by, n_boot, crop, site, study_labels, max_slices,
             lesion_data) -> None:
    """Metrics with 95% CIs of a model on held-out labeled images, with plots and a report.

    Default: the official test split. With --data pointing at another labeled folder
    (COVID/ and NonCOVID/) or CSV manifest: all of its images (an external check). With
    --lesion-data: the model's lungs and lesion maps against radiologists' masks and slice labels.
    """
    if lesion_data:
        refuse_together("--lesion-data", {"--data": "data", "--split": "split", "--cv": "cv_folds",
                                          "--cv-by": "cv_by", "--studies": "study_labels", "--site": "site"})
        from classifiers.workflows.lesions.evaluate import evaluate_lesions, write_lesion_evaluation

        evaluation = evaluate_lesions(model, lesion_data)
        out = write_lesion_evaluation(evaluation, report_dir or Path("reports") / f"{model.path.stem}-lesions")
        finish([evaluation.table(), f"wrote {out}"], evaluation.failures)
        return
    if cv_by:
        refuse_together("--cv-by source", {"--split": "split", "--cv": "cv_folds", "--site": "site",
                                            "--studies": "study_labels"})
    if study_labels:
        refuse_together("--studies", {"--crop": "crop", "--split": "split", "--cv": "cv_folds"})
        from classifiers.workflows.study_evaluate import evaluate_studies

        if len(data) != 1:
            raise click.BadParameter("--studies evaluates one folder of studies", param_hint="--data")
        evaluation, out_dir = evaluate_studies(model, data[0], study_labels, report_dir=report_dir, n_boot=n_boot,
                                               site=site, max_slices=max_slices)
        finish([evaluation.table(), f"wrote metrics.json, studies.csv and slices.csv in {out_dir}/"],
               evaluation.predictions.failures)
        return
    if max_slices:
        raise click.UsageError("--max-slices needs --studies")
    from classifiers.workflows.evaluate import evaluate_and_write

    report, files = evaluate_and_write(model, data, split=split, report_dir=report_dir, n_boot=n_boot,
                                       cv_folds=cv_folds, crop=crop, cv_by=cv_by, site=site)
    plots = len(files) - 2
    finish([report.header(), report.table(),
            f"wrote {files['metrics']}, {files['report']} and {plots} plot{'s' * (plots > 1)} in "
            f"{files['metrics'].parent}/"], report.errors)


@click.command()
@model_options(engine=True)
@data_option
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Split to report when the data has the official split.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="report.html",
              show_default=True, help="The HTML file (self-contained: images and script inline).")
@click.option("--heatmaps", type=click.IntRange(0), default=50, show_default=True,
              help="Explain the first N rows of the table (misclassified first); 0: none. On 2 CPU "
                   "cores: 1.3 s per image for one MobileNetV2, 2.9 s for a 3-backbone stack.")
@click.option("--cv-by", type=click.Choice(["source"]), default=None,
              help="source: leave one source out (needs --data per source); each image is scored by the "
                   "model refit without its source. No heatmaps then.")
@explain_method_option
@bootstrap_option
@click.option("--studies", is_flag=True,
              help="--data is a folder of studies (see predict --studies): each study with its answer and a "
                   "strip of its 3 top-scoring slices with heatmaps (--heatmaps 0: without).")
def report(model, data, split, out, heatmaps, cv_by, explain_method, n_boot, studies) -> None:
    """One self-contained HTML report: model card, metrics with CIs, plots, and every image
    with its thumbnail, heatmap and prediction (misclassified first).

    --data: labeled data (as for evaluate) gives metrics; a plain folder of slices gives
    predictions only.
    """
    if cv_by:
        refuse_together("--cv-by source", {"--split": "split", "--studies": "studies", "--heatmaps": "heatmaps"})
    if studies:
        from classifiers.workflows.studies import study_report_to_html

        if len(data) != 1:
            raise click.BadParameter("--studies reports one folder of studies", param_hint="--data")
        result, path = study_report_to_html(model, data[0], out=out, explain_method=explain_method,
                                            heatmaps=heatmaps > 0)
        finish([f"wrote {path}: {len(result.results)} studies"])
        return
    from classifiers.workflows.report import report_to_html

    path, content = report_to_html(model, data, out=out, split=split, heatmaps=heatmaps,
                                   explain_method=explain_method, n_boot=n_boot, cv_by=cv_by)
    finish([content.summary(path)], content.failures)
