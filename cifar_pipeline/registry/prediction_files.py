"""Image files in, prediction rows out: input paths, batched scoring of files, CSV and JSON output.

A file that cannot be decoded becomes an error row naming the reason; the other files are still
scored. Shared by `cifar-pipeline predict` and the `cifar-predict` flow.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import BaseModel

from .. import layout
from ..data.images import decode_image, is_image_file
from ..errors import ConfigError, ImageError
from ..files import atomic_file
from .predict import ModelInfo, OnnxPredictor, Predictor, softmax

GLOB_CHARS = set("*?[")


def collect_images(specs: Iterable[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files, globs expanded; in order, no repeats.

    A spec that names nothing (a missing path, a glob or folder without images) is a ConfigError:
    the command line is wrong, and nothing should start.
    """
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if GLOB_CHARS & set(spec):
            matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
            files = [p for p in matches if p.is_file()]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            files = [path]
        else:
            raise ConfigError(f"no such file or folder: {spec}")
        if not files:
            raise ConfigError(f"no image files in {spec}")
        found.update(dict.fromkeys(files))
    return list(found)


@dataclass
class PredictionRow:
    path: str
    predicted: str | None = None
    probability: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


class PredictSummary(BaseModel):
    status: str
    images: int
    failed: int
    seconds: float
    images_per_second: float
    output: str | None
    model_file: str
    model_sha256: str


def _decode(path: Path) -> np.ndarray | ImageError:
    try:
        return decode_image(path)
    except ImageError as exc:
        return exc


def predict_files(
    predictor: Predictor | OnnxPredictor,
    paths: list[Path],
    *,
    batch_size: int = 256,
    top_k: int = 5,
    workers: int | None = None,
) -> Iterator[PredictionRow]:
    """Rows in the order of `paths`; files are decoded in a thread pool, a batch at a time."""
    classes = predictor.info.classes
    k = min(top_k, len(classes))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            decoded = list(pool.map(_decode, chunk))
            good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
            probs = softmax(predictor.logits(np.stack([decoded[i] for i in good]))) if good else None
            rows = {}
            for j, i in enumerate(good):
                order = np.argsort(-probs[j])[:k]
                top = [(classes[c], float(probs[j, c])) for c in order]
                rows[i] = PredictionRow(str(chunk[i]), top[0][0], top[0][1], top)
            for i, d in enumerate(decoded):
                yield rows[i] if i in rows else PredictionRow(str(chunk[i]), error=_reason(d))


def _reason(exc: ImageError) -> str:
    return exc.reason + (f": {exc.detail}" if exc.detail else "")


def write_csv(rows: Iterable[PredictionRow], info: ModelInfo, out: IO[str], top_k: int) -> None:
    """Two `#` header lines (model file and sha256), then one row per image."""
    out.write(f"# model_file: {info.path}\n# model_sha256: {info.sha256}\n")
    k = min(top_k, len(info.classes))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "predicted", "probability"]
                    + [f"top{i}_{part}" for i in range(1, k + 1) for part in ("class", "probability")] + ["error"])
    for row in rows:
        top = [v for cls, p in row.top for v in (cls, f"{p:.6f}")] or [""] * (2 * k)
        prob = f"{row.probability:.6f}" if row.probability is not None else ""
        writer.writerow([row.path, row.predicted or "", prob, *top, row.error or ""])


def _json_row(row: PredictionRow) -> dict:
    if row.error:
        return {"path": row.path, "error": row.error}
    return {"path": row.path, "predicted": row.predicted, "probability": row.probability,
            "top": [{"class": c, "probability": p} for c, p in row.top]}


def run_predictions(
    predictor: Predictor | OnnxPredictor,
    paths: list[Path],
    *,
    output: str | os.PathLike | None,
    fmt: str = "csv",
    top_k: int = 5,
    batch_size: int = 256,
    progress: Callable[[str], None] | None = None,
    stdout: IO[str] | None = None,
) -> PredictSummary:
    """Score `paths` and write the rows to `output` (atomically) or `stdout`; returns the counts and speed.

    JSON output is one object: the model header, the summary and the rows (written last, so that on
    stdout it is the command's last line).
    """
    progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    rows: list[PredictionRow] = []
    for row in predict_files(predictor, paths, batch_size=batch_size, top_k=top_k):
        rows.append(row)
        if len(rows) % (batch_size * 8) == 0:
            seconds = time.perf_counter() - t0
            progress(f"predict: {len(rows)}/{len(paths)} images, {len(rows) / seconds:.0f} images/s")
    seconds = time.perf_counter() - t0
    failed = sum(1 for r in rows if r.error)
    summary = PredictSummary(
        status="completed" if not failed else "failed", images=len(rows), failed=failed, seconds=round(seconds, 3),
        images_per_second=round(len(rows) / seconds, 1) if seconds else 0.0,
        output=str(Path(output).resolve()) if output else None,
        model_file=predictor.info.path, model_sha256=predictor.info.sha256,
    )
    progress(f"predict: {summary.images} images ({failed} failed) in {seconds:.2f} s: "
             f"{summary.images_per_second:.0f} images/s on {predictor.info.engine}")
    for row in rows:
        if row.error:
            progress(f"predict: {row.path}: {row.error}")
    buffer = io.StringIO()
    if fmt == "csv":
        write_csv(rows, predictor.info, buffer, top_k)
    else:
        doc = {**summary.model_dump(), **predictor.info.header(), "predictions": [_json_row(r) for r in rows]}
        buffer.write(json.dumps(doc) + "\n")
    if output:
        with atomic_file(output, "w") as f:
            f.write(buffer.getvalue())
    else:
        (stdout or sys.stdout).write(buffer.getvalue())
    return summary


def default_output(output_dir: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Run-scoped: <output_dir>/predictions/<UTC time>-<folder name>.csv."""
    from datetime import datetime, timezone

    name = Path(folder).resolve().name or "images"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return layout.predictions_dir(output_dir) / f"{stamp}-{name}.csv"


def score_folder(folder: str, model: str = "champion", output_dir: str = "outputs", output: str | None = None,
                 top_k: int = 5, batch_size: int = 256,
                 progress: Callable[[str], None] | None = None) -> PredictSummary:
    """Batch scoring: every image under `folder` into one CSV (default: under <output_dir>/predictions/)."""
    from .predict import load_predictor, resolve_model

    predictor = load_predictor(resolve_model(output_dir, model))
    paths = collect_images([folder])
    return run_predictions(predictor, paths, output=output or default_output(output_dir, folder), fmt="csv",
                           top_k=top_k, batch_size=batch_size, progress=progress)
