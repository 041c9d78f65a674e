"""Tokenising text and cutting calibration windows.

Text is tokenised without special tokens, as one stream. Every window then begins as the model's
tokenizer begins a sequence (:class:`SequenceStart`: the BOS of Llama-3, Mistral or Gemma; nothing for
GPT-2, Qwen2 or SmolLM2), followed by ``seqlen - len(start)`` text tokens, so calibration and evaluation
see inputs shaped like the ones the model was trained on. The text of the windows starts at positions
drawn with ``torch.Generator().manual_seed(seed)`` and ``randint`` over all valid starts, so a seed
names one exact calibration set; with no sequence start these are the windows of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Any short text: only the ids the tokenizer adds around it matter.
_PROBE = "x"


class DataError(ValueError):
    """Text that cannot serve the request; the message says what to do."""


def tokenize(tokenizer: object, text: str) -> torch.Tensor:
    """Token ids (1-D, int64) of ``text`` without special tokens."""
    from eggs_ptp.memory import return_freed_memory

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    tokens = torch.tensor(ids, dtype=torch.long)
    del ids
    return_freed_memory()  # a fast tokenizer's encodings take ~0.6 KB per token while they live
    return tokens


@dataclass(frozen=True)
class SequenceStart:
    """The ids a tokenizer puts before a text when it adds special tokens (a BOS), with their strings.

    Tokens it appends (an EOS) end a sequence rather than start one, so they are left out.
    """

    ids: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()

    @classmethod
    def of(cls, tokenizer: object | None) -> SequenceStart:
        """Read the start from ``tokenizer`` (None, as tiny tests pass: no start)."""
        if tokenizer is None:
            return cls()
        special = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
        plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(special) - len(plain) + 1) if special[i : i + len(plain)] == plain), None)
        if at is None:
            raise DataError(
                f"the tokenizer encodes {_PROBE!r} as {plain} without special tokens but as {special} with "
                "them, so where its sequences start cannot be told"
            )
        return cls(tuple(special[:at]), tuple(tokenizer.convert_ids_to_tokens(special[:at])))

    def __len__(self) -> int:
        return len(self.ids)

    def text_length(self, seqlen: int) -> int:
        """Text tokens in a window of ``seqlen`` tokens, which must hold at least one."""
        if seqlen <= len(self.ids):
            raise DataError(
                f"a window of {seqlen} tokens holds no text after the sequence start {list(self.tokens)}; "
                "give a larger --seqlen"
            )
        return seqlen - len(self.ids)

    def prepend(self, text: torch.Tensor) -> torch.Tensor:
        """``(windows, n)`` text ids -> ``(windows, len(self) + n)`` windows that begin with the start."""
        start = torch.tensor(self.ids, dtype=text.dtype).expand(text.shape[0], -1)
        return torch.cat([start, text], dim=1)


NO_START = SequenceStart()  # a tokenizer that adds nothing before a text (GPT-2, Qwen2, SmolLM2)


@dataclass(frozen=True)
class CalibrationSet:
    windows: torch.Tensor  # (nsamples, seqlen) token ids, each beginning with ``start``
    description: str
    seed: int
    start: SequenceStart = NO_START

    @property
    def nsamples(self) -> int:
        return self.windows.shape[0]

    @property
    def seqlen(self) -> int:
        return self.windows.shape[1]

    def describe(self) -> dict[str, object]:
        return {
            "source": self.description,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
            "tokens": self.nsamples * self.seqlen,
            "sampling": "torch.Generator().manual_seed(seed); randint over window starts",
            "sequence_start": list(self.start.tokens),
        }


def sample_windows(
    tokens: torch.Tensor,
    nsamples: int,
    seqlen: int,
    seed: int,
    description: str = "",
    start: SequenceStart = NO_START,
) -> CalibrationSet:
    """Draw ``nsamples`` windows of ``seqlen`` tokens: ``start``, then text from seeded random positions."""
    length = start.text_length(seqlen)
    if tokens.numel() < length:
        raise DataError(
            f"calibration text has {tokens.numel()} tokens, shorter than one window of {length} text tokens; "
            "give more text or a smaller --seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - length + 1, (nsamples,), generator=generator)
    offsets = torch.arange(length)
    return CalibrationSet(start.prepend(tokens[starts[:, None] + offsets]), description, seed, start)


__all__ = ["NO_START", "CalibrationSet", "DataError", "SequenceStart", "sample_windows", "tokenize"]
