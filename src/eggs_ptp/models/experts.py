"""Mixture-of-experts weights: found without a per-family table, pruned and observed one expert at a time.

transformers 5.x fuses the experts of a MoE block (Mixtral, Qwen3-MoE, gpt-oss, DeepSeek-V3, OLMoE,
...) into one module of 3-D parameters with a leading experts dimension, next to the router that
scores them. Its experts implementations share one layout (``use_experts_implementation`` in
``transformers.integrations.moe``): ``gate_up_proj`` (``up_proj`` when ``has_gate`` is false) and
``down_proj``, stored (experts, out, in), or (experts, in, out) when ``is_transposed``, optional
``*_bias`` beside them, and the module's own ``_apply_gate`` (or ``act_fn``) between the two.
Each expert's matrix is one prunable layer, pruned along its input dimension.

Statistics come from the model's own routing: a forward pre-hook on the experts module reads the
hidden states and top-k expert indices its block's router computed, and an eager per-expert path
gives each expert's matrices their inputs, the gate's output feeding ``down_proj``. ``routed``
feeds an expert the tokens routed to it, each counting once; ``weighted`` the same tokens scaled
by the routing weight the forward multiplies the expert's output by, so statistics are sums of
``w^2 x x^T``: the expert's share of the block output's error; ``all`` feeds every expert every
token (llm-compressor's MoE calibration).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

ROUTER = "router: scores the experts"
ROUTED = "routed"
WEIGHTED = "weighted"
ALL_TOKENS = "all"
EXPERT_CALIBRATIONS = (ROUTED, WEIGHTED, ALL_TOKENS)

_UP = ("gate_up_proj", "up_proj")  # the first matrix, by has_gate
_DOWN = "down_proj"
_LAYOUT_FLAGS = ("is_transposed", "has_gate", "has_bias")

Observer = Callable[..., None]


class ExpertLayoutError(ValueError):
    """Expert weights this version cannot read, pointed out rather than silently left dense."""


@dataclass(frozen=True)
class KeptDense:
    """A weight the walk leaves dense by rule (a router, a gate, unreadable experts), named in the report."""

    name: str
    shape: tuple[int, ...]
    reason: str


def _stacked(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own 3-D parameters; ``nn.Conv1d``'s (out, in, kernel) weights are not experts."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {}
    return {name: p for name, p in module.named_parameters(recurse=False) if p.dim() == 3}


def _router(parent: nn.Module, experts: nn.Module, count: int, widths: set[int]) -> str | None:
    """The module beside ``experts`` in ``parent`` (or inside a sibling) that scores ``count`` experts:
    a (count, width) weight, for a width the experts take."""
    inside = {id(module) for module in experts.modules()}
    for name, module in parent.named_modules():
        weight = getattr(module, "weight", None)
        if id(module) in inside or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if weight.shape[0] == count and weight.shape[1] in widths:
            return name
    return None


class ExpertGroup:
    """One fused experts module: its matrices, and the pre-hook feeding each expert's observers."""

    def __init__(self, name: str, module: nn.Module, router: str, calibration: str) -> None:
        if calibration not in EXPERT_CALIBRATIONS:
            raise ValueError(f"expert calibration must be one of {', '.join(EXPERT_CALIBRATIONS)}, got {calibration!r}")
        self.name = name
        self.module = module
        self.router = router
        self.calibration = calibration
        self.transposed = bool(module.is_transposed)
        self.up = _UP[0] if module.has_gate else _UP[1]
        stacked = getattr(module, self.up)
        self.count = stacked.shape[0]
        self.routed = torch.zeros(self.count, dtype=torch.long)  # tokens routed to each expert while observed
        self.every_token: set[int] = set()  # experts fed every token whatever the rule (none routed to them)
        self._inputs: dict[tuple[str, int], list[Observer]] = {}
        self._outputs: dict[tuple[str, int], list[Observer]] = {}
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        parameters = list(inspect.signature(type(module).forward).parameters)[1:4]
        self._argument_names = parameters  # hidden states, top-k indices, top-k weights

    def matrices(self) -> list[ExpertMatrix]:
        return [
            ExpertMatrix(f"{self.name}.{parameter}.{expert}", self, parameter, expert)
            for parameter in (self.up, _DOWN)
            for expert in range(self.count)
        ]

    def observe(self, outputs: bool, parameter: str, expert: int, observer: Observer) -> _Observation:
        table = self._outputs if outputs else self._inputs
        table.setdefault((parameter, expert), []).append(observer)
        if self._handle is None:
            self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return _Observation(self, table, (parameter, expert), observer)

    def _forget(self, table: dict, key: tuple[str, int], observer: Observer) -> None:
        table[key].remove(observer)
        if not table[key]:
            del table[key]
        if not self._inputs and not self._outputs and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _routing(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Hidden states (tokens, hidden), top-k expert indices and their routing weights (tokens, k)."""
        values = dict(zip(self._argument_names, args))
        values.update({k: v for k, v in kwargs.items() if k in self._argument_names})
        hidden, indices, weights = (values.get(name) for name in self._argument_names)
        if not isinstance(hidden, torch.Tensor) or not isinstance(indices, torch.Tensor):
            raise ExpertLayoutError(
                f"{self.name} ({type(self.module).__name__}) was not called with hidden states and expert indices "
                "first, as transformers' experts modules are; its experts cannot be calibrated"
            )
        tokens = hidden.numel() // hidden.shape[-1]
        weights = weights.reshape(tokens, -1) if isinstance(weights, torch.Tensor) else None
        return hidden.reshape(tokens, hidden.shape[-1]), indices.reshape(tokens, -1), weights

    @torch.no_grad()
    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, indices, weights = self._routing(args, kwargs)
        routed = torch.zeros(self.count + 1, dtype=torch.bool, device=indices.device).expand(indices.shape[0], -1)
        routed = routed.scatter(1, indices.clamp(0, self.count), True)[:, : self.count]  # (tokens, experts)
        watched = sorted({expert for _, expert in self._inputs} | {expert for _, expert in self._outputs})
        if self._inputs:
            self.routed += routed.sum(dim=0).cpu()
        if self.calibration == WEIGHTED and weights is None:
            raise ExpertLayoutError(f"{self.name} was called without routing weights; use another expert calibration")
        for expert in watched:
            rows = routed[:, expert]
            if any(key[1] == expert for key in self._inputs):  # statistics: on the rule's tokens
                if self.calibration == ALL_TOKENS or expert in self.every_token:
                    self._feed(self._inputs, expert, hidden, None)
                else:
                    scale = None
                    if self.calibration == WEIGHTED:  # the weight the forward multiplies this expert's output by
                        scale = (weights * (indices == expert)).sum(dim=-1)[rows, None].to(hidden.dtype)
                    self._feed(self._inputs, expert, hidden[rows], scale)
            if any(key[1] == expert for key in self._outputs):  # error meters: on the tokens it really serves
                self._feed(self._outputs, expert, hidden[rows], None)

    def _feed(self, table: dict, expert: int, x: torch.Tensor, scale: torch.Tensor | None) -> None:
        """Give one expert's observers in ``table`` its inputs: statistics see them times ``scale``
        (per token) when given; error meters see inputs and outputs."""
        outputs = table is self._outputs
        up_weight = ExpertMatrix.view(self, self.up, expert)
        up = x @ up_weight.T
        self._notify(table, self.up, expert, x, up if outputs else None, scale)
        if (_DOWN, expert) not in table:
            return
        if self.module.has_bias:
            up = up + getattr(self.module, f"{self.up}_bias")[expert]
        h = self.module._apply_gate(up) if self.module.has_gate else self.module.act_fn(up)
        down_weight = ExpertMatrix.view(self, _DOWN, expert)
        self._notify(table, _DOWN, expert, h, h @ down_weight.T if outputs else None, scale)

    @staticmethod
    def _notify(
        table: dict, parameter: str, expert: int, x: torch.Tensor, y: torch.Tensor | None, scale: torch.Tensor | None
    ) -> None:
        for observer in table.get((parameter, expert), ()):
            if y is not None:
                observer(x, y)
            else:
                observer(x if scale is None else x * scale)


@dataclass
class _Observation:
    group: ExpertGroup
    table: dict
    key: tuple[str, int]
    observer: Observer

    def remove(self) -> None:
        self.group._forget(self.table, self.key, self.observer)


@dataclass
class ExpertMatrix:
    """One expert's matrix in a fused experts module, seen as (out, in) like a linear layer."""

    name: str
    group: ExpertGroup = field(repr=False)
    parameter: str
    expert: int
    bias = None  # observers see outputs without the expert's bias

    @staticmethod
    def view(group: ExpertGroup, parameter: str, expert: int) -> torch.Tensor:
        stored = getattr(group.module, parameter).data[expert]
        return stored.T if group.transposed else stored

    @property
    def module(self) -> nn.Module:
        return self.group.module

    @property
    def transposed(self) -> bool:
        return self.group.transposed

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) weight; a view, so writes go to the fused parameter."""
        return self.view(self.group, self.parameter, self.expert)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def set_weight(self, weight: torch.Tensor) -> None:
        self.weight.copy_(weight)

    def observe_inputs(self, observer: Callable[[torch.Tensor], None]) -> _Observation:
        """Call ``observer(x)`` with this expert's inputs in every forward of the block."""
        return self.group.observe(False, self.parameter, self.expert, observer)

    def observe_outputs(self, observer: Callable[[torch.Tensor, torch.Tensor], None]) -> _Observation:
        """Call ``observer(x, x W^T)`` with this expert's inputs and outputs (no bias) in every forward."""
        return self.group.observe(True, self.parameter, self.expert, observer)

    def record(self, tokens: int | None) -> dict[str, object]:
        """What the report says about this matrix beyond a linear layer's fields; ``tokens`` is how
        many it was calibrated on (None: the method needs no calibration)."""
        calibrated = tokens is not None
        every = self.expert in self.group.every_token
        return {
            "parameter": f"{self.group.name}.{self.parameter}",
            "index": self.expert,
            "routed_tokens": int(self.group.routed[self.expert]) if calibrated else None,
            "calibrated_on": (ALL_TOKENS if every else self.group.calibration) if calibrated else None,
            "tokens": tokens,
        }


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def find_expert_groups(
    block: nn.Module, prefix: str, calibration: str = ROUTED, excluded: Callable[[str], bool] = lambda name: False
) -> tuple[list[ExpertGroup], list[KeptDense]]:
    """Every fused experts module inside ``block``: 3-D parameters sharing a leading experts dimension,
    next to a router whose weight scores that many experts; and the weights of unreadable ones that
    ``excluded`` leaves out, with their routers, kept dense.

    Raises :class:`ExpertLayoutError` for other experts whose layout is not transformers' shared one.
    """
    groups: list[ExpertGroup] = []
    unread: list[KeptDense] = []
    for local, module in block.named_modules():
        stacked = _stacked(module)
        if not stacked or len({p.shape[0] for p in stacked.values()}) != 1:
            continue
        count = next(iter(stacked.values())).shape[0]
        parent_name = local.rpartition(".")[0]
        parent = block.get_submodule(parent_name)
        name = f"{prefix}.{local}" if local else prefix
        router = _router(parent, module, count, {size for p in stacked.values() for size in p.shape[1:]})
        if router is None:
            continue
        layout = all(isinstance(getattr(module, flag, None), bool) for flag in _LAYOUT_FLAGS)
        up = (_UP[0] if module.has_gate else _UP[1]) if layout else None
        if not layout or up not in stacked or _DOWN not in stacked:
            if excluded(name):
                reason = f"{count} experts in a layout eggs-ptp does not read ({type(module).__name__}); excluded"
                unread.extend(KeptDense(f"{name}.{key}", tuple(p.shape), reason) for key, p in stacked.items())
                router_weight = parent.get_submodule(router).weight
                unread.append(KeptDense(_join(prefix, parent_name, router), tuple(router_weight.shape), ROUTER))
                continue
            raise ExpertLayoutError(
                f"{name} ({type(module).__name__}) holds {count} experts' weights in a layout eggs-ptp does not "
                f"read (transformers declares no experts layout for it); leave them dense with --exclude "
                f"'*.{local}*' (they will be named in the report)"
            )
        groups.append(ExpertGroup(name, module, _join(prefix, parent_name, router), calibration))
    return groups, unread


__all__ = [
    "ALL_TOKENS",
    "EXPERT_CALIBRATIONS",
    "ROUTED",
    "WEIGHTED",
    "ExpertGroup",
    "ExpertLayoutError",
    "ExpertMatrix",
    "KeptDense",
    "find_expert_groups",
]
