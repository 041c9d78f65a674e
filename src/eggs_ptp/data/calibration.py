"""Tokenising text and cutting calibration windows.

Windows start at positions drawn with ``torch.Generator().manual_seed(seed)`` and ``randint`` over
all valid starts, so a seed names one exact calibration set. Text is tokenised without special
tokens, as one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
class CalibrationSet:
    windows: torch.Tensor  # (nsamples, seqlen) token ids
    description: str
    seed: int

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
        }


def sample_windows(
    tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int, description: str = ""
) -> CalibrationSet:
    """Draw ``nsamples`` windows of ``seqlen`` tokens at seeded random starts."""
    if tokens.numel() < seqlen:
        raise DataError(
            f"calibration text has {tokens.numel()} tokens, shorter than one window of {seqlen}; "
            "give more text or a smaller --seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen + 1, (nsamples,), generator=generator)
    offsets = torch.arange(seqlen)
    return CalibrationSet(tokens[starts[:, None] + offsets], description, seed)


__all__ = ["CalibrationSet", "DataError", "sample_windows", "tokenize"]
