"""Settings declared once: each setting's type, range or choices, default, spelling and help.

A settings object is a frozen dataclass whose fields are declared with :func:`setting`; the
declaration is the one place a setting's constraints live (as scikit-learn's
``_parameter_constraints`` are for an estimator). From it come

- the validation: ``__post_init__`` checks and normalises every field (``Settings``), so a
  settings object that exists is valid, whoever built it (the CLI, a bench, a test);
- the command-line options: :func:`settings_options` turns the fields into click options whose
  types carry the same ranges and choices, and hands the command one settings object;
- the text and the manifest record: ``Setting.text`` is the one spelling of a value.

The FeatureSpec's settings (feature_spec.SETTINGS) are Setting objects too.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .errors import SettingsError


@dataclass(frozen=True)
class Setting:
    """One setting: its constraints, default, spelling and help.

    ``kind``: str, int, float or bool. ``choices``: the only values (or a function giving them,
    read when a value is checked: registries that tests extend). ``low``/``high``: a
    numeric range (``*_open``: the bound itself excluded). ``many``: a tuple of values, written as
    ``A,B,C``. ``optional``: None is a value (it means the default is chosen elsewhere, said in
    ``help``). ``option``: the flag (default ``--name``); ``cli``: whether commands offer it.
    ``parse``/``text``: option text to value and back, for values with their own spelling.
    """

    name: str
    default: Any
    help: str
    kind: type = str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    many: bool = False
    optional: bool = False
    label: str | None = None
    metavar: str | None = None
    option: str | None = None
    cli: bool = True
    parse: Callable[[str], Any] | None = None
    text: Callable[[Any], str] = str

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        """How reports name it."""
        return self.label or self.name.replace("_", " ")

    def value(self, raw: Any) -> Any:
        """``raw`` (an option's text or a value) as this setting's value; SettingsError naming the
        option when it is out of range or not a choice."""
        if raw is None:
            if self.optional:
                return None
            raise SettingsError(f"{self.flag} needs a value")
        if self.many:
            items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else list(raw)
            if not items:
                raise SettingsError(f"{self.flag}: give at least one value")
            return tuple(self._one(item, raw) for item in items)
        return self._one(raw, raw)

    def _one(self, raw: Any, whole: Any) -> Any:
        if self.parse is not None:
            value = self.parse(raw) if isinstance(raw, str) else raw
        elif self.kind is bool:
            value = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
        else:
            try:
                value = self.kind(raw)
            except (TypeError, ValueError):
                raise SettingsError(f"{self.flag} {whole!r}: not a valid {self.kind.__name__}") from None
        choices = self.valid_choices()
        if choices and value not in choices:
            raise SettingsError(f"{self.flag}: unknown {self.name} {raw!r}; valid: {', '.join(map(str, choices))}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)) or \
                self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise SettingsError(f"{self.flag} {whole!r}: must be {self.range_text()}")
        return value

    def valid_choices(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def range_text(self) -> str:
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"{lo}{self.name}{hi}"

    def spelled(self, value: Any) -> str:
        """The one spelling of a value (lists comma-joined)."""
        if value is None:
            return ""
        return ",".join(map(self.text, value)) if self.many else self.text(value)

    def click_type(self):
        import click

        if self.many or self.parse is not None:
            return str
        if self.valid_choices():
            return click.Choice([str(c) for c in self.valid_choices()])
        if self.kind in (int, float) and self.low is None and self.high is None:
            return self.kind
        if self.kind is int:
            return click.IntRange(self.low, self.high, min_open=self.low_open, max_open=self.high_open)
        if self.kind is float:
            return click.FloatRange(self.low, self.high, min_open=self.low_open, max_open=self.high_open)
        return self.kind

    def click_option(self, default: Any = dataclasses.MISSING, help_text: str | None = None,
                     required: bool | None = None):
        """This setting as a click option (``default``: the command's own, e.g. None for a filter;
        ``required``: default, when a setting without a default is not optional)."""
        import click

        default = self.default if default is dataclasses.MISSING else default
        if self.kind is bool and not self.many:
            # An optional flag stays None when not given: something else decides then (e.g. an environment variable).
            flag_default = None if default is None and self.optional else bool(default)
            return click.option(self.flag, self.name, is_flag=True, default=flag_default, help=help_text or self.help)
        shown = None if default is None else (self.spelled(default) if self.many or self.parse else default)
        if required is None:
            required = default is None and not self.optional  # e.g. fit --clf
        return click.option(self.flag, self.name, type=self.click_type(), default=shown, metavar=self.metavar,
                            required=required, show_default=shown is not None and shown != "",
                            help=help_text or self.help)


def setting(default: Any, help: str, **constraints: Any) -> Any:
    """A settings dataclass field declared with its constraints (see Setting)."""
    return dataclasses.field(default=default, metadata={"setting": dict(help=help, **constraints)})


class Settings:
    """Base of frozen settings dataclasses whose fields are declared with :func:`setting`: every
    field is checked and normalised on construction."""

    SCHEMA: ClassVar[tuple[Setting, ...]]

    def __post_init__(self) -> None:
        for s in schema(type(self)):
            object.__setattr__(self, s.name, s.value(getattr(self, s.name)))

    def record(self) -> dict[str, Any]:
        """The settings as JSON values (for the model card)."""
        return {s.name: list(v) if isinstance(v := getattr(self, s.name), tuple) else v for s in schema(type(self))}

    @classmethod
    def from_record(cls, record: dict[str, Any]):
        """Settings from a record (keys this version does not know are ignored; missing ones: defaults)."""
        known = {s.name for s in schema(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


@functools.lru_cache(maxsize=None)
def schema(cls: type) -> tuple[Setting, ...]:
    """The Setting of each field of a settings dataclass, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is not None:
            out.append(Setting(f.name, f.default, **meta))
    return tuple(out)


def settings_options(cls: type, name: str, defaults: dict[str, Any] | None = None):
    """A decorator giving a click command the options of ``cls``'s settings (those with ``cli``),
    which reach the command as one keyword argument ``name`` holding a ``cls``. ``defaults``:
    other defaults for this command (e.g. None: decided elsewhere)."""
    defaults = defaults or {}
    offered = [s for s in schema(cls) if s.cli]

    def decorate(command):
        @functools.wraps(command)
        def with_settings(*args, **kwargs):
            values = {s.name: kwargs.pop(s.name) for s in offered}
            return command(*args, **{name: cls(**values)}, **kwargs)
        for s in reversed(offered):
            with_settings = s.click_option(defaults.get(s.name, dataclasses.MISSING))(with_settings)
        return with_settings
    return decorate
