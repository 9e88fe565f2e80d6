"""mkdocs hook: the pages' tables that the code declares, made from the declarations when the site is
built, so that the documentation cannot drift from the product. A page writes a marker where a table goes:

- ``<!-- record:slice -->``, ``<!-- record:study -->``, ``<!-- record:study_slice -->``: the columns of
  predictions.csv, studies.csv and the slice CSV of ``predict --studies`` (classifiers/records/
  prediction_record.py), with their help;
- ``<!-- options:COMMAND -->``: a command's options with their defaults and help (click, as --help shows);
- ``<!-- manifest-format -->``: the model card's format number (classifiers/records/model_card.py).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (record|options):([a-z_]+) -->|<!-- manifest-format -->")


def on_page_markdown(markdown: str, page=None, config=None, files=None) -> str:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return MARKER.sub(lambda m: generated(m.group(1), m.group(2)), markdown)


def generated(kind: str | None, name: str | None) -> str:
    if kind is None:
        from classifiers.records.model_card import MANIFEST_FORMAT

        return str(MANIFEST_FORMAT)
    if kind == "record":
        return record_table(name)
    return options_table(name)


def record_table(name: str) -> str:
    from classifiers.records import prediction_record as record

    schema = {"slice": record.SLICE, "study": record.STUDY, "study_slice": record.study_slice()}[name]
    rows = [f"| `{f.name}` | {f.title}{f' ({f.unit.strip()})' if f.unit else ''} | {escape(f.help)} |"
            for f in schema.fields if f.csv]
    return "\n".join(["| column | shown as | what it holds |", "|---|---|---|", *rows])


def options_table(command: str) -> str:
    import click

    import cli

    cmd = cli.main.commands[command]
    ctx = click.Context(cmd, info_name=command)
    rows = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record and param.name != "help":
            rows.append(f"| `{record[0]}` | {escape(record[1])} |")
    return "\n".join(["| option | what it does |", "|---|---|", *rows])


def escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
