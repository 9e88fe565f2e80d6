"""What the benchmark scripts share: paths, the machine's name, and writing their tables."""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("COVIDCT_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "keras" / "models"
# keras' own MobileNet-0.25 file sits in $SHARED/keras/models: `imagenet` then works offline.
os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))


def machine() -> str:
    """CPU model and core count, for the tables."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def write_marked_section(out: Path, section: str, heading: str) -> None:
    """Replace the text between the section's marker lines (its first and last line) in
    ``out``; append it under ``heading`` when the markers are not there yet."""
    lines = section.strip().splitlines()
    start, end = lines[0], lines[-1]
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + section.strip() + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section.strip() + "\n"
    out.write_text(text)


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Lines of a markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def table_section(marker: str, script: str, make_target: str, text: str, header: tuple[str, ...],
                  rows: list[tuple[str, ...]]) -> str:
    """A benchmark's section: its markers, when, where and how it was measured, ``text`` (what
    the table shows) and the table."""
    import time

    return "\n".join([
        f"<!-- {marker}:start -->", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by `.venv/bin/python bench/{script}` "
        f"(`make {make_target}`). {text}", "",
        *markdown_table(header, rows), "", f"<!-- {marker}:end -->"])


def publish(section: str, heading: str, *outs: Path) -> None:
    """Print a benchmark's section and write it into each file (see write_marked_section)."""
    print("\n" + section)
    for out in outs:
        write_marked_section(Path(out), section, heading)
        print(f"wrote {out}")


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options the fit-and-evaluate benchmarks share: data, caches, models, output, bootstrap."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("COVIDCT_DATA", SHARED / "data" / "covid-ct"))
    parser.add_argument("--features-dir", default=REPO / "features")
    parser.add_argument("--models-dir", default=REPO / "bench" / "out" / "models")
    parser.add_argument("--out", default=REPO / "BENCHMARKS.md")
    parser.add_argument("--bootstrap", type=int, default=1000)
    return parser


def child_run(cmd: list[str], **popen) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of ``cmd`` run as this process's child (os.wait4: that child's
    own peak, not the largest of every child so far); exits with the child's stderr tail if it fails."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child cannot fill it and stall
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **popen)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({code}): {err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024
