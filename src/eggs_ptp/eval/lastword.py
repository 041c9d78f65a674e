"""Build the offline last-word task ``eggs_wiki_lastword`` from the held-out Wikipedia split.

LAMBADA-style: the model reads a passage and must predict its final word; the harness scores
accuracy (every token of the word is the greedy choice) and the word's log-likelihood.

Recipe (deterministic; word-level, so the data is the same for every tokenizer):

1. Text: ``load_text("wiki", "evaluation")``, the held-out side of the default split (articles
   sorted by title, index % 10 == 0). Calibration never reads these articles.
2. Paragraphs: its lines, stripped, empty ones dropped, in order.
3. Candidate ends: a whitespace-separated word that ends a sentence (it ends with ``.`` and is
   the paragraph's last word, or the next word starts with an upper-case letter, digit or quote)
   and is, without that ``.``, lower-case ASCII letters only, at least ``MIN_TARGET_LETTERS``
   long (no names, numbers, abbreviations or function words).
4. Per paragraph, the last candidate end with between ``MIN_CONTEXT_WORDS`` and
   ``MAX_CONTEXT_WORDS`` words before it: the context is the paragraph from its start up to
   that word, the target is the word without its ``.``. At most one passage per paragraph, so
   passages never overlap.
5. Exact duplicate passages are dropped (first kept), and so is every passage that shares a
   sequence of ``OVERLAP_WORDS`` words with the calibration text (GPT-3's 13-gram
   decontamination rule): Wikipedia articles quote each other, so a held-out sentence can also
   stand in a calibration article.

``python -m eggs_ptp.eval.lastword`` checks the shipped data against a fresh build;
``--write`` rewrites it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

TASK_NAME = "eggs_wiki_lastword"
TASK_FOLDER = Path(__file__).parent / "tasks" / TASK_NAME
DATA_FILE = TASK_FOLDER / f"{TASK_NAME}.jsonl"
MIN_CONTEXT_WORDS = 30
MAX_CONTEXT_WORDS = 150
MIN_TARGET_LETTERS = 4
OVERLAP_WORDS = 13

_TARGET = re.compile(rf"[a-z]{{{MIN_TARGET_LETTERS},}}\.")
_SENTENCE_START = re.compile(r"[A-Z0-9\"'“‘(]")


def _passage(words: list[str]) -> tuple[str, str] | None:
    """(context, target) for the last candidate end of one paragraph's words, or None."""
    last = min(len(words) - 1, MAX_CONTEXT_WORDS)
    for index in range(last, MIN_CONTEXT_WORDS - 1, -1):
        ends_sentence = index == len(words) - 1 or _SENTENCE_START.match(words[index + 1])
        if ends_sentence and _TARGET.fullmatch(words[index]):
            return " ".join(words[:index]), words[index][:-1]
    return None


def _ngrams(words: list[str]) -> set[str]:
    return {" ".join(words[i : i + OVERLAP_WORDS]) for i in range(len(words) - OVERLAP_WORDS + 1)}


def build_passages(text: str, exclude: str = "") -> list[dict[str, Any]]:
    """The task's records, ``{"id", "context", "target"}``, from the held-out ``text`` (steps 2-5);
    passages sharing ``OVERLAP_WORDS`` consecutive words with ``exclude`` are dropped."""
    excluded = _ngrams(exclude.split())
    records: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for paragraph in (line.strip() for line in text.splitlines()):
        found = _passage(paragraph.split()) if paragraph else None
        if found is None or found in seen or _ngrams(f"{found[0]} {found[1]}.".split()) & excluded:
            continue
        seen.add(found)
        records.append({"id": len(records), "context": found[0], "target": found[1]})
    return records


def build() -> list[dict[str, Any]]:
    """A fresh build from the embedded text (step 1), decontaminated against its calibration side."""
    from eggs_ptp.data import load_text

    return build_passages(load_text("wiki", "evaluation").text, load_text("wiki", "calibration").text)


def serialise(records: list[dict[str, Any]]) -> str:
    """JSON lines, one record each, keys in a fixed order, UTF-8 kept as is."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def describe(records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Size, recipe and checksum of the task data (the shipped file unless ``records`` is given)."""
    data = serialise(records) if records is not None else DATA_FILE.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in data.splitlines()]
    context_words = [len(row["context"].split()) for row in rows]
    return {
        "task": TASK_NAME,
        "passages": len(rows),
        "context_words_mean": sum(context_words) / len(rows),
        "context_words_range": [min(context_words), max(context_words)],
        "source": "wiki:evaluation (held-out split: articles sorted by title, index % 10 == 0)",
        "recipe": f"per paragraph, the last sentence-final lower-case word of >= {MIN_TARGET_LETTERS} letters "
        f"with {MIN_CONTEXT_WORDS}..{MAX_CONTEXT_WORDS} preceding words; duplicates and passages sharing "
        f"{OVERLAP_WORDS} consecutive words with the calibration split dropped",
        "sha256": hashlib.sha256(data.encode("utf-8")).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (or with --write, rewrite) the shipped task data.")
    parser.add_argument("--write", action="store_true", help=f"rewrite {DATA_FILE.name} from a fresh build")
    args = parser.parse_args(argv)
    fresh = serialise(build())
    if args.write:
        from eggs_ptp.atomic import write_atomic

        write_atomic(DATA_FILE, fresh)
    shipped = DATA_FILE.read_text(encoding="utf-8") if DATA_FILE.exists() else ""
    print(json.dumps(describe([json.loads(line) for line in fresh.splitlines()]), indent=2))
    if shipped != fresh:
        print(f"{DATA_FILE} differs from a fresh build; rerun with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DATA_FILE",
    "MAX_CONTEXT_WORDS",
    "MIN_CONTEXT_WORDS",
    "MIN_TARGET_LETTERS",
    "OVERLAP_WORDS",
    "TASK_FOLDER",
    "TASK_NAME",
    "build",
    "build_passages",
    "describe",
    "main",
    "serialise",
]
