"""Where a layer's input-channel permutation can fold into the layers that produce those channels.

All model-structure knowledge of channel permutation lives here. Folds are proposed from module
names and shapes only; :mod:`eggs_ptp.permute.fold` trusts one after checking numerically that the
block's function is unchanged, so a wrong guess for an unknown family costs a forward, not the model.

- MLP output (``down_proj``, ``fc2``, ``c_proj``, ``dense_4h_to_h``): its inputs are elementwise
  functions of sibling layers' outputs (``act(gate) * up``, ``act(fc1)``), so permuting those
  rows and biases permutes its inputs. A fused ``gate_up`` producer (2 x in rows) permutes both halves.
- Attention output (``o_proj``, ``out_proj``, ``c_proj``, ``dense``): input ``h * head_dim + d`` is
  value channel ``d`` of head ``h``, so value rows move only within a head, and the query heads
  that read one KV head (GQA) share its permutation. Values come from ``v_proj`` or from the value
  slice of a fused qkv projection, either concatenated (q, k, v) or interleaved per head.
- Layers reading the normed residual stream (q, k, v, gate, up, fc1): the stream is shared by
  every block, so their inputs could only be permuted by one model-wide permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eggs_ptp.models.layers import PrunableLinear, find_linears

ATTENTION_OUTPUTS = ("o_proj", "out_proj", "c_proj", "dense", "wo")
VALUE_PROJECTIONS = ("v_proj", "value", "wv")
HEAD_DIM_ATTRIBUTES = ("head_dim", "head_size")

RESIDUAL = "reads the normed residual stream, which every block shares; only a model-wide permutation could move it"


@dataclass(frozen=True)
class Fold:
    """A consumer whose input permutation is undone by permuting its producers' output rows.

    Args:
        consumer: the layer whose input channels are permuted.
        producers: each producing layer with ``rows`` (copies, in): the producer output row that
            feeds each consumer input, once per copy (two copies for a fused gate_up).
        block: the permutation acts within contiguous blocks of this many inputs (a head).
        ties: (in // block,) tie id per block; blocks with one id share one permutation.
    """

    consumer: PrunableLinear
    producers: tuple[tuple[PrunableLinear, torch.Tensor], ...]
    block: int
    ties: torch.Tensor

    @property
    def producer_names(self) -> list[str]:
        return [layer.name for layer, _ in self.producers]

    def apply(self, perm: torch.Tensor) -> None:
        """Permute the consumer's weight columns and the producers' rows and biases by ``perm``.

        Rows that several inputs read (GQA) receive the same value from each, because ``perm``
        respects ``ties``. Pure data movement: applying ``perm.argsort()`` afterwards restores
        the weights bit for bit.
        """
        weight = self.consumer.weight
        self.consumer.set_weight(weight[:, perm.to(weight.device)])
        for layer, rows in self.producers:
            weight = layer.weight
            rows = rows.to(weight.device)
            target, source = rows.reshape(-1), rows[:, perm.to(weight.device)].reshape(-1)
            moved = weight.clone()
            moved[target] = weight[source]
            layer.set_weight(moved)
            bias = getattr(layer.module, "bias", None)
            if bias is not None:
                bias.data[target] = bias.data[source]


def head_dim(module: nn.Module) -> int | None:
    """The head size an attention module declares, or None for a module that is not attention."""
    for attribute in HEAD_DIM_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _value_rows(heads: int, kv_heads: int, size: int, offset: int) -> torch.Tensor:
    """(in,) value row read by each input ``h * size + d``: ``offset + kv(h) * size + d``."""
    head = torch.arange(heads).repeat_interleave(size)
    return offset + head // (heads // kv_heads) * size + torch.arange(size).repeat(heads)


def _attention_folds(
    consumer: PrunableLinear, siblings: dict[str, PrunableLinear], size: int, m: int
) -> list[Fold] | str:
    heads, rest = divmod(consumer.in_features, size)
    if rest:
        return f"input dimension {consumer.in_features} is not a whole number of heads of {size}"
    if size % m:
        return f"head_dim {size} is not a multiple of M = {m}, so no permutation within heads keeps N:M groups"
    folds = []
    for name, layer in siblings.items():
        rows_out = layer.weight.shape[0]
        if name in VALUE_PROJECTIONS:
            kv_heads, rest = divmod(rows_out, size)
            if not rest and kv_heads and heads % kv_heads == 0:
                folds.append((layer, _value_rows(heads, kv_heads, size, 0), heads // kv_heads))
            continue
        doubled_kv = rows_out // size - heads  # fused q, k, v: (heads + 2 * kv_heads) * size rows
        if rows_out % size or doubled_kv <= 0 or doubled_kv % 2 or heads % (doubled_kv // 2):
            continue
        kv_heads = doubled_kv // 2
        folds.append((layer, _value_rows(heads, kv_heads, size, (heads + kv_heads) * size), heads // kv_heads))
        if kv_heads == heads:  # GPT-NeoX: per head (q, k, v) blocks, values last in each
            interleaved = torch.arange(heads).repeat_interleave(size) * 3 * size + 2 * size
            folds.append((layer, interleaved + torch.arange(size).repeat(heads), 1))
    if not folds:
        return "no value projection beside it to fold the permutation into"
    return [Fold(consumer, ((layer, rows[None]),), size, torch.arange(heads) // group) for layer, rows, group in folds]


def _mlp_folds(consumer: PrunableLinear, siblings: dict[str, PrunableLinear]) -> list[Fold] | str:
    width = consumer.in_features
    producers = []
    for layer in siblings.values():
        copies, rest = divmod(layer.weight.shape[0], width)
        if not rest and copies in (1, 2) and layer.in_features == consumer.weight.shape[0]:
            producers.append((layer, torch.arange(copies * width).reshape(copies, width)))
    if not producers:
        return f"no layer beside it produces its {width} inputs"
    return [Fold(consumer, tuple(producers), width, torch.zeros(1, dtype=torch.long))]


def propose_folds(block: nn.Module, prefix: str, layer: PrunableLinear, hidden_size: int, m: int) -> list[Fold] | str:
    """Candidate folds for ``layer``'s inputs, most likely first, or why there can be none.

    Args:
        block: the decoder block holding ``layer``.
        prefix: the block's qualified name, the start of ``layer.name``.
        hidden_size: the width of the block's residual stream.
        m: the pattern's group size; permutations must keep whole groups inside a head.
    """
    local = layer.name[len(prefix) + 1 :]
    parent_name, _, leaf = local.rpartition(".")
    parent = block.get_submodule(parent_name)
    parent_prefix = f"{prefix}.{parent_name}" if parent_name else prefix
    siblings = {
        sibling.name.rpartition(".")[2]: sibling
        for sibling in find_linears(parent, parent_prefix)
        if sibling.module is not layer.module and sibling.name.count(".") == layer.name.count(".")
    }
    size = head_dim(parent)
    if size is not None and leaf in ATTENTION_OUTPUTS:
        return _attention_folds(layer, siblings, size, m)
    if layer.in_features == hidden_size:
        return RESIDUAL
    return _mlp_folds(layer, siblings)


__all__ = [
    "ATTENTION_OUTPUTS",
    "HEAD_DIM_ATTRIBUTES",
    "RESIDUAL",
    "VALUE_PROJECTIONS",
    "Fold",
    "head_dim",
    "propose_folds",
]
