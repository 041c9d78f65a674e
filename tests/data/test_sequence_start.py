"""Windows begin as the model's tokenizer begins a sequence: a BOS where it adds one, nothing otherwise.

Tiny BPE tokenizers that differ only in their post-processor: none (no start, like GPT-2 or SmolLM2),
``<bos> $A`` (like Llama-3, Mistral or Gemma), ``$A <eos>`` (an appended EOS is no start) and both.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from eggs_ptp import PruneConfig, build_calibration
from eggs_ptp.api import perplexity_meter
from eggs_ptp.compare import CompareSpec, run_compare
from eggs_ptp.compare.runner import check_sequence_start
from eggs_ptp.data import NO_START, DataError, SequenceStart, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval.harness import OFFLINE_TASK, evaluate_tasks
from eggs_ptp.eval.speed import _prompt
from eggs_ptp.models import load_model

from helpers import TEXT, VOCAB, Killed, kill_after_block, one_error_line, prune_args, run_cli, tiny_model

UNK, EOS, BOS = 0, 1, 2
TEMPLATES = {"plain": None, "bos": "<bos> $A", "eos": "$A <eos>", "bos+eos": "<bos> $A <eos>"}
STARTS = {"plain": (), "bos": ("<bos>",), "eos": (), "bos+eos": ("<bos>",)}


@pytest.fixture(scope="module")
def trained() -> str:
    """One trained BPE model (as JSON), shared by every variant so their text ids agree."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<eos>", "<bos>"]))
    return bpe.to_str()


@pytest.fixture(scope="module")
def variants(trained) -> dict[str, PreTrainedTokenizerFast]:
    made = {}
    for name, template in TEMPLATES.items():
        backend = Tokenizer.from_str(trained)
        if template:
            backend.post_processor = processors.TemplateProcessing(
                single=template, special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
            )
        made[name] = PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", bos_token="<bos>"
        )
    return made


def stream(tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"])


def save_model(folder, tokenizer, layers=2):
    tiny_model("llama", num_hidden_layers=layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_start_is_what_the_tokenizer_puts_before_a_text(variants, name):
    start = SequenceStart.of(variants[name])
    assert start.tokens == STARTS[name] and start.ids == ((BOS,) if STARTS[name] else ())


def test_no_tokenizer_and_the_test_tokenizer_have_no_start(tokenizer):
    assert SequenceStart.of(None) == NO_START == SequenceStart.of(tokenizer) and len(NO_START) == 0


def test_a_tokenizer_whose_special_tokens_change_the_text_is_refused():
    def retokenising(text, add_special_tokens):
        return {"input_ids": [5, 6] if add_special_tokens else [7]}

    with pytest.raises(DataError, match="cannot be told"):
        SequenceStart.of(retokenising)


def test_a_window_must_hold_text_after_the_start(variants):
    with pytest.raises(DataError, match=r"holds no text after the sequence start \['<bos>'\]"):
        sample_windows(torch.arange(100), 2, 1, seed=0, start=SequenceStart.of(variants["bos"]))


@pytest.mark.parametrize("name", ["plain", "eos"])
def test_without_a_start_the_seeded_windows_are_the_ones_of_before(variants, name):
    tokens = stream(variants[name])
    drawn = sample_windows(tokens, 5, 32, seed=3, start=SequenceStart.of(variants[name])).windows
    starts = torch.randint(0, tokens.numel() - 32 + 1, (5,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, tokens[starts[:, None] + torch.arange(32)])  # the draw of earlier versions
    assert torch.equal(drawn, sample_windows(tokens, 5, 32, seed=3).windows)


@pytest.mark.parametrize("name", TEMPLATES)
def test_calibration_windows_begin_with_the_start(variants, text_file, name):
    tokenizer = variants[name]
    config = PruneConfig(method="wanda", nsamples=6, seqlen=16, seed=1, calib=str(text_file))
    calibration = build_calibration(tiny_model("llama"), tokenizer, config)
    k = len(STARTS[name])
    assert calibration.windows.shape == (6, 16)
    assert (calibration.windows[:, :k] == BOS).all()
    tokens = stream(tokenizer)
    starts = torch.randint(0, tokens.numel() - (16 - k) + 1, (6,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(calibration.windows[:, k:], tokens[starts[:, None] + torch.arange(16 - k)])
    assert calibration.describe()["sequence_start"] == list(STARTS[name])


@pytest.mark.parametrize("name", TEMPLATES)
def test_perplexity_is_a_plain_forward_over_windows_built_by_hand(variants, text_file, name):
    """The independent computation: windows cut by hand, next-token cross-entropy from the logits."""
    tokenizer, model = variants[name], tiny_model("llama", bos_token_id=BOS)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    result = perplexity_meter(model, tokenizer, str(text_file), 3, 16, progress=False)(model)
    hook.remove()
    prefix = [BOS] if STARTS[name] else []
    text = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    n = 16 - len(prefix)
    by_hand = [torch.tensor([prefix + text[i * n : (i + 1) * n]]) for i in range(3)]
    with torch.no_grad():
        losses = [float(F.cross_entropy(model(input_ids=w).logits[0, :-1], w[0, 1:])) for w in by_hand]
    assert math.isclose(result.perplexity, math.exp(sum(losses) / 3), rel_tol=1e-6)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(seen, by_hand, strict=True))
    assert (result.seqlen, result.windows, result.tokens) == (16, 3, 48)  # tokens: window tokens, start included
    assert result.to_dict()["sequence_start"] == list(STARTS[name])


@pytest.mark.parametrize("name", ["plain", "bos"])
def test_the_bench_prompt_begins_as_a_sequence_begins(variants, tmp_path, name):
    variants[name].save_pretrained(tmp_path)
    prompt, source = _prompt(tmp_path, 12, VOCAB, seed=0)
    prefix = [BOS] if STARTS[name] else []
    text = tokenize(variants[name], load_text("wiki", "evaluation").text[:240])[: 12 - len(prefix)]
    assert prompt.tolist() == [prefix + text.tolist()] and prompt.shape == (1, 12)
    held_out = f"first {12 - len(prefix)} tokens of the held-out wiki split"
    assert source == (f"['<bos>'], then the {held_out}" if prefix else held_out)


def test_sparsity_json_records_the_start_and_a_resume_with_another_start_is_refused(
    variants, calib, tmp_path, monkeypatch
):
    folder, out = save_model(tmp_path / "tiny", variants["bos"], layers=4), tmp_path / "o"
    extra = ("--method", "wanda", "--eval", "--eval-text", calib, "--eval-windows", 2)
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        with pytest.raises(Killed):
            run_cli(*prune_args(folder, out, calib, *extra))
    variants["plain"].save_pretrained(folder)  # same weight files, another tokenizer
    line = one_error_line(run_cli(*prune_args(folder, out, calib, *extra, "--resume")))
    assert "cannot resume" in line and "calibration.sequence_start was ['<bos>'], now []" in line
    variants["bos"].save_pretrained(folder)
    result = run_cli(*prune_args(folder, out, calib, *extra, "--resume"))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sparsity.json").read_text())
    assert record["calibration"]["sequence_start"] == ["<bos>"]
    perplexity = record["evaluation"]["perplexity"]
    assert perplexity["dense"]["sequence_start"] == perplexity["pruned"]["sequence_start"] == ["<bos>"]


def test_compare_records_the_start_and_refuses_to_resume_with_another(variants, text_file, tmp_path):
    folder, out = save_model(tmp_path / "tiny", variants["bos"]), tmp_path / "grid"
    text = str(text_file)
    spec = CompareSpec(
        methods=("magnitude",),
        seeds=(0,),
        nsamples=2,
        seqlen=16,
        calib=text,
        eval_text=text,
        eval_seqlen=16,
        eval_windows=2,
        task=False,
    )
    record = run_compare(load_model(str(folder)), spec, out, progress=False)
    assert record["calibration"]["sequence_start"] == record["evaluation"]["sequence_start"] == ["<bos>"]
    variants["plain"].save_pretrained(folder)
    with pytest.raises(ValueError, match=r"windows starting with \['<bos>'\], but this tokenizer starts a sequence"):
        run_compare(load_model(str(folder)), spec, out, resume=True, progress=False)


def test_a_compare_record_from_before_the_start_was_recorded_began_with_none(tmp_path):
    old = {"calibration": {}, "evaluation": {}}
    check_sequence_start(old, NO_START, tmp_path)
    with pytest.raises(ValueError, match=r"starting with \[\]"):
        check_sequence_start(old, SequenceStart((BOS,), ("<bos>",)), tmp_path)


@pytest.mark.parametrize("name", ["bos", "eos"])
def test_the_harness_starts_requests_as_perplexity_windows_start(variants, monkeypatch, name):
    from lm_eval.models.huggingface import HFLM

    tokenizer, encoded = variants[name], []
    original = HFLM._encode_pair

    def spy(self, context, continuation):
        pair = original(self, context, continuation)
        encoded.append((context, *pair))
        return pair

    monkeypatch.setattr(HFLM, "_encode_pair", spy)
    result = evaluate_tasks(tiny_model("llama"), tokenizer, [OFFLINE_TASK], limit=2, batch_size=2, progress=False)
    assert result["settings"]["add_bos_token"] == (name == "bos")
    assert result["settings"]["sequence_start"] == list(STARTS[name])
    assert len(encoded) == 2
    prefix = [BOS] if STARTS[name] else []
    for context, context_ids, continuation_ids in encoded:
        assert context_ids == prefix + tokenize(tokenizer, context.rstrip()).tolist()
        assert EOS not in continuation_ids  # no appended EOS scored as part of the word
