"""Records declared once: a RecordField is one column of a record (its name, type, help, and
where it shows); a RecordSchema is an ordered set of them. CSV headers and cells, JSON values,
the API's pydantic types and the row objects are all made from the declarations."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

from feature_extractor.imaging.dataset import printable_path


@dataclass(frozen=True)
class RecordField:
    """One field of a record.

    ``kind``: float, int, str, bool or list (a list of text; "; "-joined in CSV).
    ``choices``: the only values a text field takes (the API types it as an enum).
    ``digits``: decimals of a float in CSV. ``optional``: the CSV column is written only when
    some row has a value (e.g. the heatmap file). ``csv``/``api``: where it appears.
    ``get``: how to read it from a row object (default: the attribute of its name). ``computed``:
    the row's class computes it (a property), so rows do not store it.
    ``path``: a file path (written as printable text, identifiers redacted in study outputs).
    ``label``: how a person reads the field (the page, the HTML report), in words; ``unit`` and ``scale``:
    how its number is shown there (a share scaled by 100 and shown as "%": one quantity, one spelling).
    """

    name: str
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    digits: int = 6
    optional: bool = False
    csv: bool = True
    api: bool = True
    path: bool = False
    get: Callable[[Any], Any] | None = None
    computed: bool = False
    label: str | None = None
    unit: str = ""
    scale: float = 1.0

    @property
    def stored(self) -> bool:
        """Whether rows hold the value (set by the code that computes it)."""
        return self.get is None and not self.computed

    def value(self, row: Any) -> Any:
        return self.get(row) if self.get is not None else getattr(row, self.name, None)

    def cell(self, value: Any) -> str:
        """The CSV text of a value ('' for none)."""
        if value is None:
            return ""
        if self.kind is bool:
            return str(bool(value)).lower()
        if self.kind is float:
            return f"{float(value):.{self.digits}f}"
        if self.kind is list:
            return "; ".join(map(str, value))
        if self.path:
            return printable_path(str(value))
        return str(value)

    def json(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind is float:
            return float(value)
        if self.kind is list:
            return [str(v) for v in value]
        if self.path:
            return printable_path(str(value))
        return self.kind(value)

    def annotation(self) -> Any:
        """The type of the field in the JSON API (always nullable: unreadable rows have none)."""
        if self.choices:
            return Literal[self.choices] | None  # type: ignore[valid-type]
        return (list[str] if self.kind is list else self.kind) | None

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")

    def shown(self, value: Any) -> str:
        """The value as a person reads it: 'Opacity, right lung: 3.4%' says '3.4%'."""
        if value is None or value == "" or value == []:
            return "–"
        if self.kind is float:
            number = float(value) * self.scale
            return f"{number:.{1 if self.unit in ('%', 'mm²') else 3}f}{' ' if self.unit == 'mm²' else ''}{self.unit}"
        if self.kind is bool:
            return "yes" if value else "no"
        if self.kind is list:
            return "; ".join(map(str, value))
        return f"{value}{self.unit}"

    def describe(self) -> dict[str, Any]:
        kind = {float: "number", int: "integer", str: "text", bool: "boolean", list: "list"}[self.kind]
        return {"name": self.name, "type": kind, "label": self.title, "unit": self.unit, "scale": self.scale,
                "help": self.help, **({"choices": list(self.choices)} if self.choices else {})}


@dataclass(frozen=True)
class RecordSchema:
    """An ordered set of fields and what is made from them."""

    name: str
    fields: tuple[RecordField, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a field is declared twice: {names}")

    def __getitem__(self, name: str) -> RecordField:
        return next(f for f in self.fields if f.name == name)

    def with_field(self, new: RecordField, after: str | None = None) -> "RecordSchema":
        """This record with one more field (after ``after``, else last)."""
        fields = list(self.fields)
        at = len(fields) if after is None else [f.name for f in fields].index(after) + 1
        return replace(self, fields=tuple(fields[:at] + [new] + fields[at:]))

    def csv_fields(self, rows: Sequence[Any] = ()) -> list[RecordField]:
        return [f for f in self.fields if f.csv and (not f.optional or any(f.value(r) is not None for r in rows))]

    def csv_header(self, rows: Sequence[Any] = ()) -> list[str]:
        return [f.name for f in self.csv_fields(rows)]

    def csv_rows(self, rows: Sequence[Any], redact: Callable[[str], str] = str) -> list[list[str]]:
        """One list of cells per row; ``redact`` runs over every path cell."""
        fields = self.csv_fields(rows)
        return [[redact(f.cell(f.value(r))) if f.path else f.cell(f.value(r)) for f in fields] for r in rows]

    def api_fields(self) -> list[RecordField]:
        return [f for f in self.fields if f.api]

    def as_json(self, row: Any, redact: Callable[[str], str] = str) -> dict[str, Any]:
        out = {}
        for f in self.api_fields():
            value = f.json(f.value(row))
            out[f.name] = redact(value) if f.path and value is not None else value
        return out

    def api_model(self, model_name: str, extra: dict[str, tuple[Any, Any]] | None = None):
        """A pydantic model of this record for the JSON API (``extra``: more fields, as
        pydantic.create_model takes them)."""
        from pydantic import Field, create_model

        fields = {f.name: (f.annotation(), Field(None, description=f.help)) for f in self.api_fields()}
        return create_model(model_name, **fields, **(extra or {}))

    def describe(self) -> list[dict[str, Any]]:
        """The fields the API and the page show, in order: name, type, help (and choices)."""
        return [f.describe() for f in self.api_fields()]

    def help_line(self) -> str:
        return ",".join(f.name for f in self.fields if f.csv)

    def row_class(self, name: str, extra: Sequence[tuple[str, Any]] = (), doc: str = "") -> type:
        """A dataclass of this record's stored fields (those without ``get``), each None until set,
        plus ``extra`` (name, default) attributes the record does not show; keyword arguments only.
        A field added later (a new declaration computed by ``get``) needs no change here."""
        stored = [(f.name, Any, dataclasses.field(default=None)) for f in self.fields if f.stored]
        more = [(n, Any, dataclasses.field(default=d)) for n, d in extra]
        cls = dataclasses.make_dataclass(name, stored + more, kw_only=True)
        cls.__doc__ = doc or f"One {self.name} record: the fields of {self.name.upper()} that are stored."
        return cls


