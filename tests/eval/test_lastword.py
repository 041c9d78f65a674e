"""The offline last-word task: the recipe's rules, a deterministic build, and held-out data only."""

import json
import re

import pytest
import yaml

from eggs_ptp.data import load_text
from eggs_ptp.eval import lastword
from eggs_ptp.eval.lastword import DATA_FILE, TASK_FOLDER, build, build_passages, describe, serialise

FILLER = " ".join(f"word{i}" for i in range(lastword.MIN_CONTEXT_WORDS))  # exactly the minimum context


@pytest.fixture(scope="module")
def shipped():
    return [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]


def test_last_eligible_sentence_end_is_the_target():
    paragraph = f"{FILLER} ends a sentence. Then another clause follows here. It ends in 1990."
    (record,) = build_passages(paragraph)
    assert record == {"id": 0, "context": f"{FILLER} ends a sentence. Then another clause follows", "target": "here"}


@pytest.mark.parametrize("ending", ["Paris.", "were 1990.", "the end", "see U.S.", "an etc.", "foo-bar.", "café."])
def test_names_numbers_abbreviations_and_open_ends_are_not_targets(ending):
    assert build_passages(f"{FILLER} {ending}") == []


def test_mid_paragraph_period_needs_a_sentence_start_after_it():
    assert build_passages(f"{FILLER} approx. three things") == []
    assert build_passages(f"{FILLER} things. 1990 was a year")[0]["target"] == "things"


def test_short_contexts_are_skipped_long_ones_end_early():
    short = " ".join(FILLER.split()[:-1])
    assert build_passages(f"{short} finally.") == []
    words = [f"w{i}" for i in range(lastword.MAX_CONTEXT_WORDS + 20)]
    words[lastword.MAX_CONTEXT_WORDS : lastword.MAX_CONTEXT_WORDS + 2] = ["inside.", "Next"]
    (record,) = build_passages(" ".join(words) + " outside.")
    assert record["target"] == "inside" and len(record["context"].split()) == lastword.MAX_CONTEXT_WORDS


def test_one_passage_per_paragraph_and_no_duplicates():
    paragraph = f"{FILLER} first ending. Second ending."
    records = build_passages("\n".join([paragraph, "", paragraph, f"{FILLER} other ending."]))
    assert [r["target"] for r in records] == ["ending", "ending"]
    assert [r["id"] for r in records] == [0, 1]


def test_passages_quoting_the_excluded_text_are_dropped():
    paragraph = f"{FILLER} ends here."
    quoted = " ".join(paragraph.split()[-lastword.OVERLAP_WORDS :])
    assert build_passages(paragraph, exclude=f"Another article: {quoted} More.") == []
    assert build_passages(paragraph, exclude=quoted.split(" ", 1)[1]) != []  # 12 shared words are fine


def test_shipped_data_is_a_fresh_build(shipped):
    assert serialise(build()) == DATA_FILE.read_text(encoding="utf-8")
    assert lastword.main([]) == 0


def test_size_and_recipe_are_recorded(shipped):
    config = yaml.safe_load(re.sub(r"!function \S+", "hook", (TASK_FOLDER / f"{lastword.TASK_NAME}.yaml").read_text()))
    facts = describe()
    assert config["task"] == lastword.TASK_NAME
    assert config["metadata"]["passages"] == facts["passages"] == len(shipped) > 500
    assert config["metadata"]["data_sha256"] == facts["sha256"]
    assert lastword.MIN_CONTEXT_WORDS <= facts["context_words_mean"] <= lastword.MAX_CONTEXT_WORDS


def test_passages_come_from_the_held_out_split_only(shipped):
    held_out = " ".join(load_text("wiki", "evaluation").text.split())
    calibration = " ".join(load_text("wiki", "calibration").text.split())
    for record in shipped:
        passage = f"{record['context']} {record['target']}."
        assert passage in held_out
        assert passage not in calibration
        # not even the words that lead to the answer: the passage's last 13 words are nowhere in calibration
        assert " ".join(passage.split()[-lastword.OVERLAP_WORDS :]) not in calibration
