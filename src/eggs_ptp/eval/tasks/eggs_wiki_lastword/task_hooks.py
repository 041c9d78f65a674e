"""Harness hooks of the eggs_wiki_lastword task: its local data and its per-passage scores.

lm-evaluation-harness loads this file by path (``!function`` in the YAML), so it imports nothing
from eggs_ptp and works with ``lm_eval --include_path`` too.
"""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).with_name("eggs_wiki_lastword.jsonl")


def load(**_metadata):
    """The shipped passages as the test split; the harness passes the task metadata, unused here."""
    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})


def process_results(doc, results):
    """Accuracy (every token of the word is the greedy choice) and the word's log-likelihood (nats)."""
    loglikelihood, is_greedy = results[0]
    return {"acc": int(is_greedy), "loglikelihood": loglikelihood}


__all__ = ["DATA", "load", "process_results"]
