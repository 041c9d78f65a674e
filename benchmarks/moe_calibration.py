"""Which expert calibration rule to default to (issue 17), measured on a tiny trained MoE.

Trains a tiny Mixtral-style mixture of experts from scratch on the packaged Wikipedia text (the
calibration side of the fixed split), then prunes copies of it at 2:4 with each method under every
rule of ``PruneConfig(experts=...)`` (``routed``, ``all`` and, where the tree has it, ``weighted``;
``--rules`` to choose), for several seeds of the calibration draw, through the public API, and
measures perplexity on the held-out side of the split (articles with index % 10 == 0, never trained
on) with the project's perplexity function. Every rule of one seed prunes from the same calibration
windows, so differences from ``routed`` are paired. Each run's report gives the tokens routed to
every expert in every block; their spread is recorded.

The model uses the default model's tokenizer (SmolLM2) with its vocabulary cut to the most frequent
``--vocab - 1`` token ids of the training text, every other id mapped to one shared "other" id: a
49,152-row output layer would cost five times the rest of the model on CPU. Perplexities are over
that reduced vocabulary and compare only within this file.

The trained model is cached in ``--cache`` (outside the repository), keyed by every setting that
shapes it, so reruns skip the training (about 6 minutes on one thread).

    .venv/bin/python benchmarks/moe_calibration.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import scipy.stats
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from eggs_ptp import PruneConfig, RunOptions, prune
from eggs_ptp.data import SequenceStart, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models.experts import ALL_TOKENS, EXPERT_CALIBRATIONS, ROUTED
from eggs_ptp.models.loading import DEFAULT_MODEL, hide_loading_bars, load_tokenizer, resolve

RESULTS = Path(__file__).parent / "results"
METHODS = ("ria", "sparsegpt", "wanda")
ARCHITECTURE = {  # MixtralConfig fields; vocab_size comes from --vocab
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "router_jitter_noise": 0.0,
    "output_router_logits": False,  # on, the model's loss would include the aux loss in evaluation too
}
NOTES = [
    "This text is not WikiText-2: the packaged Wikipedia lead sections; training and calibration use the "
    "calibration side of the split, evaluation the held-out side (article index % 10 == 0).",
    "Perplexity is over the reduced vocabulary (rare ids merged into one 'other' id), so it is lower "
    "than a full-vocabulary model's would be; compare numbers only within this file.",
    "The model is tiny and briefly trained: its experts may specialise less than a real MoE's, which "
    "shrinks any difference between the rules. Treat this as evidence at this scale only.",
    "routed_tokens counts a token once per expert it is routed to (top-2), whatever its routing weight. "
    "Experts routed no calibration token are calibrated on every token under every rule (the column "
    "'experts on all tokens'); an expert the router never picks does not change the output either way.",
    "Mean recon error is not comparable across rules: an expert matrix's error is measured on the tokens "
    "its rule calibrates it on (under `all`, every token, most of which the expert never processes).",
    "Prune seconds on a shared 2-core machine are noisy.",
]
TRAINING = ("steps", "batch", "train_seqlen", "lr", "warmup", "weight_decay", "aux", "train_seed", "vocab")


def compact_vocabulary(tokens: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size - 1`` most frequent ids of ``tokens`` (ties by id), in that order; id ``size - 1`` is "other"."""
    counts = Counter(tokens.tolist())
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    return torch.tensor(ranked[: size - 1], dtype=torch.long)


def remap(tokens: torch.Tensor, kept: torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    table = torch.full((vocab_size,), size - 1, dtype=torch.long)
    table[kept] = torch.arange(kept.numel())
    return table[tokens]


def training_key(args: argparse.Namespace) -> str:
    settings = {name: getattr(args, name) for name in TRAINING}
    blob = json.dumps(
        {"architecture": ARCHITECTURE, "training": settings, "transformers": transformers.__version__, "version": 1},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "mixtral", **ARCHITECTURE, vocab_size=args.vocab, router_aux_loss_coef=args.aux, pad_token_id=None
    )
    torch.manual_seed(args.train_seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to a tenth of ``--lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def routing_shares(model: torch.nn.Module, windows: torch.Tensor) -> list[list[float]]:
    """Per block, the share of top-k assignments each expert gets on ``windows`` (dense model)."""
    top_k, experts = model.config.num_experts_per_tok, model.config.num_local_experts
    counts = torch.zeros(model.config.num_hidden_layers, experts)
    for window in windows:
        logits = model(input_ids=window[None], output_router_logits=True, use_cache=False).router_logits
        for block, block_logits in enumerate(logits):
            chosen = block_logits.topk(top_k, dim=-1).indices.reshape(-1)
            counts[block] += torch.bincount(chosen, minlength=experts).float()
    return (counts / counts.sum(dim=1, keepdim=True)).tolist()


def train(args: argparse.Namespace, tokens: torch.Tensor, probe: torch.Tensor) -> tuple[torch.nn.Module, dict]:
    model = build_model(args)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.train_seed)
    offsets = torch.arange(args.train_seqlen)
    log, started = [], time.perf_counter()
    for step in range(args.steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args)
        starts = torch.randint(0, tokens.numel() - args.train_seqlen + 1, (args.batch,), generator=generator)
        batch = tokens[starts[:, None] + offsets]
        output = model(input_ids=batch, labels=batch, output_router_logits=True, use_cache=False)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == args.steps - 1:
            lm_loss = output.loss.item() - args.aux * output.aux_loss.item()
            entry = {
                "step": step,
                "lm_loss": lm_loss,
                "aux_loss": output.aux_loss.item(),
                "seconds": time.perf_counter() - started,
            }
            log.append(entry)
            print(
                f"train step {step}: lm loss {lm_loss:.3f}, aux {entry['aux_loss']:.3f}, {entry['seconds']:.0f} s",
                flush=True,
            )
    model.eval()
    record = {
        "seconds": time.perf_counter() - started,
        "tokens_seen": args.steps * args.batch * args.train_seqlen,
        "log": log,
        "dense_routing_share": routing_shares(model, probe),
    }
    return model, record


def trained_model(
    args: argparse.Namespace, tokens: torch.Tensor, probe: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.nn.Module, dict, Path]:
    """The cached model for these settings, trained and cached first if there is none."""
    folder = Path(args.cache) / training_key(args)
    if (folder / "training.json").exists():
        record = json.loads((folder / "training.json").read_text())
        if record["kept_ids"] != kept.tolist():
            raise SystemExit(f"{folder} was trained on another vocabulary; delete it")
        print(f"loading the trained model from {folder}", flush=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        return model, {**record["training"], "cached": True}, folder
    print(f"training the model (cached in {folder} afterwards)", flush=True)
    model, record = train(args, tokens, probe)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        model.save_pretrained(staging)
        settings = {name: getattr(args, name) for name in TRAINING}
        blob = {"settings": settings, "kept_ids": kept.tolist(), "training": record}
        (staging / "training.json").write_text(json.dumps(blob))
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model, {**record, "cached": False}, folder


def expert_counts(report) -> dict:
    """Per block, each expert's routed tokens and the tokens its statistics saw (its first matrix's)."""
    blocks: dict[int, dict] = {}
    for layer in report.layers:
        expert = layer.expert
        if not expert or not expert["parameter"].endswith(("gate_up_proj", ".up_proj")):
            continue
        block = int(layer.name.split(".layers.")[1].split(".")[0])
        entry = blocks.setdefault(block, {"routed_tokens": {}, "tokens": {}, "calibrated_on_all": []})
        entry["routed_tokens"][expert["index"]] = expert["routed_tokens"]
        entry["tokens"][expert["index"]] = expert["tokens"]
        if expert["calibrated_on"] == ALL_TOKENS:
            entry["calibrated_on_all"].append(expert["index"])
    return {
        str(block): {
            "routed_tokens": [entry["routed_tokens"][i] for i in sorted(entry["routed_tokens"])],
            "tokens": [entry["tokens"][i] for i in sorted(entry["tokens"])],
            "calibrated_on_all": sorted(entry["calibrated_on_all"]),
        }
        for block, entry in sorted(blocks.items())
    }


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1]}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_p_value(differences: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test that the mean difference is zero (None below 2 seeds)."""
    if len(differences) < 2:
        return None
    mean, std = mean_std(differences)
    if std == 0:
        return 0.0 if mean else 1.0
    return float(2 * scipy.stats.t.sf(abs(mean) / (std / math.sqrt(len(differences))), len(differences) - 1))


def compare(record: dict) -> list[dict]:
    """Per method and rule other than ``routed``: each rule's perplexity over the seeds both ran, and the
    paired difference (rule - routed) with a verdict."""
    rows = []
    rules = record["settings"]["rules"]
    for method in record["settings"]["methods"]:
        runs = {(r["rule"], r["seed"]): r["perplexity"] for r in record["runs"] if r["method"] == method}
        for rule in (rule for rule in rules if rule != ROUTED):
            seeds = [s for s in record["settings"]["seeds"] if (ROUTED, s) in runs and (rule, s) in runs]
            if not seeds:
                continue
            base, other = [runs[ROUTED, s] for s in seeds], [runs[rule, s] for s in seeds]
            differences = [o - b for o, b in zip(other, base)]
            mean = mean_std(differences)
            seed_std = max(mean_std(base)[1], mean_std(other)[1])
            routed_lower = sum(d > 0 for d in differences)
            consistent = len(seeds) > 1 and routed_lower in (0, len(seeds))
            p_value = paired_p_value(differences)
            rows.append(
                {
                    "method": method,
                    "rule": rule,
                    "seeds": seeds,
                    "routed": mean_std(base),
                    "other": mean_std(other),
                    "difference_minus_routed": mean,
                    "relative_difference": mean_std([o / b - 1 for o, b in zip(other, base)]),
                    "seed_std": seed_std,
                    "seeds_routed_lower": routed_lower,
                    "paired_t_p_value": p_value,
                    "beyond_seed_spread": abs(mean[0]) > seed_std,
                    "better": (ROUTED if mean[0] > 0 else rule)
                    if consistent and p_value is not None and p_value < 0.05
                    else "within noise",
                }
            )
    return rows


def _describe(row: dict) -> str:
    mean, relative = row["difference_minus_routed"][0], row["relative_difference"][0]
    text = f"{row['method']}: {row['rule']} - routed = {mean:+.2f} ppl ({100 * relative:+.1f}%)"
    if row["seed_std"]:
        text += f", {abs(mean) / row['seed_std']:.1f}x the seed std"
    text += f", routed lower on {row['seeds_routed_lower']}/{len(row['seeds'])} seeds"
    if row["paired_t_p_value"] is not None:
        text += f", paired t p = {row['paired_t_p_value']:.2g}"
    return text


def best_rules(record: dict) -> str:
    """Which rule has the lowest mean perplexity, per method."""
    parts = []
    for method in record["settings"]["methods"]:
        means = {
            rule: statistics.fmean(values)
            for rule in record["settings"]["rules"]
            if (values := [r["perplexity"] for r in record["runs"] if r["method"] == method and r["rule"] == rule])
        }
        if means:
            parts.append(f"{method} -> {min(means, key=means.get)}")
    return "Lowest mean perplexity: " + ", ".join(parts) + "." if parts else ""


def conclusion(rows: list[dict]) -> str:
    """One line per rule compared with ``routed``."""
    if not rows:
        return "No complete comparison yet."
    lines = []
    for rule in dict.fromkeys(row["rule"] for row in rows):
        chosen = [row for row in rows if row["rule"] == rule]
        verdicts = {row["better"] for row in chosen}
        spread = "beyond" if all(row["beyond_seed_spread"] for row in chosen) else "not always beyond"
        if verdicts == {ROUTED}:
            head = f"`routed` beats `{rule}` for every method, {spread} the seed spread"
        elif verdicts == {rule}:
            head = f"`{rule}` beats `routed` for every method, {spread} the seed spread"
        elif verdicts == {"within noise"}:
            head = f"`{rule}` and `routed` do not differ beyond noise for any method"
        else:
            head = f"`{rule}` vs `routed` is mixed: " + ", ".join(
                f"{row['method']} -> {row['better']}" for row in chosen
            )
        lines.append(f"{head} ({'; '.join(_describe(row) for row in chosen)}).")
    return " ".join(lines)


def describe_architecture(config: dict) -> str:
    return (
        f"hidden {config['hidden_size']}, expert intermediate {config['intermediate_size']}, "
        f"{config['num_hidden_layers']} layers, {config['num_attention_heads']} heads / "
        f"{config['num_key_value_heads']} KV heads, {config['num_local_experts']} experts top-"
        f"{config['num_experts_per_tok']}, context {config['max_position_embeddings']}"
        + (", tied embeddings" if config.get("tie_word_embeddings") else "")
    )


def never_routed(record: dict, block: str) -> str:
    """Experts of ``block`` that some run routed no calibration token to, with how many runs did so."""
    runs = [run["experts"][block]["routed_tokens"] for run in record["runs"] if block in run["experts"]]
    starved = Counter(expert for counts in runs for expert, count in enumerate(counts) if count == 0)
    return ", ".join(f"{expert} ({times}/{len(runs)} runs)" for expert, times in sorted(starved.items())) or "none"


def render_markdown(record: dict) -> str:
    settings, model, training = record["settings"], record["model"], record["training"]
    dense = record["dense"]["perplexity"]
    rows = compare(record)
    calibration_tokens = settings["nsamples"] * settings["seqlen"]
    top_k, experts = ARCHITECTURE["num_experts_per_tok"], ARCHITECTURE["num_local_experts"]
    lines = [
        "# Expert calibration rule on a tiny trained MoE (issue 17)",
        "",
        f"Model: {model['class']} trained from scratch here, {model['parameters']:,} parameters "
        f"({model['expert_parameters']:,} in experts): {describe_architecture(model['architecture'])}. Vocabulary: the "
        f"{DEFAULT_MODEL} tokenizer cut to its {settings['vocab'] - 1} most frequent ids in the training text plus "
        f"one 'other' id ({100 * record['data']['other_share_train']:.1f}% of training tokens, "
        f"{100 * record['data']['other_share_eval']:.1f}% of evaluation tokens).",
        "",
        f"Training: {settings['steps']} AdamW steps of {settings['batch']} x {settings['train_seqlen']} tokens "
        f"({training['tokens_seen']:,} tokens, {training['tokens_seen'] / record['data']['train_tokens']:.2f} "
        f"epochs) from {record['data']['train_text']}, lr {settings['lr']} (warmup {settings['warmup']}, cosine to "
        f"lr/10), weight decay {settings['weight_decay']}, router aux loss coefficient {settings['aux']}, seed "
        f"{settings['train_seed']}; final LM loss {training['log'][-1]['lm_loss']:.3f}, "
        f"{training['seconds']:.0f} s" + (" (loaded from the cache this run)" if training.get("cached") else "") + ".",
        "",
        f"Calibration: {settings['nsamples']} windows x {settings['seqlen']} tokens drawn from the training text "
        f"with seeds {settings['seeds']}; every rule of one seed prunes from the same windows. Evaluation: "
        f"{record['evaluation']}. Pattern {settings['pattern']}, every decoder linear and expert matrix (routers "
        "dense).",
        "",
        f"Machine: {record['machine']['cpu']}, {record['machine']['torch_threads']} torch thread(s), load average "
        f"{record['machine']['load_average'][0]:.2f} at start; torch {record['machine']['versions']['torch']}, "
        f"transformers {record['machine']['versions']['transformers']}. Command: `{record['command']}`. "
        f"Total {record.get('seconds', float('nan')):.0f} s.",
        "",
        f"Dense perplexity: **{dense:.2f}**."
        + (
            f" With every expert's weights zeroed (the MoE blocks contribute nothing, attention stays): "
            f"{record['experts_zeroed']['perplexity']:.2f}, the scale any expert pruning effect lives in."
            if "experts_zeroed" in record
            else ""
        ),
        "",
        "## Perplexity, mean ± std over calibration seeds",
        "",
        "| method | " + " | ".join(settings["rules"]) + " |",
        "|---|" + "---|" * len(settings["rules"]),
    ]
    for method in settings["methods"]:
        cells = []
        for rule in settings["rules"]:
            values = [r["perplexity"] for r in record["runs"] if r["method"] == method and r["rule"] == rule]
            cells.append(f"{mean_std(values)[0]:.2f} ± {mean_std(values)[1]:.2f}" if values else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Difference from `routed`, paired by calibration seed",
        "",
        "| method | rule | rule − routed | relative | larger seed std | abs diff / seed std | seeds routed lower "
        "| paired t p | better |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d, rel = row["difference_minus_routed"], row["relative_difference"]
        lines.append(
            f"| {row['method']} | {row['rule']} | {d[0]:+.2f} ± {d[1]:.2f} | "
            f"{100 * rel[0]:+.1f}% ± {100 * rel[1]:.1f}% | {row['seed_std']:.2f} | "
            f"{abs(d[0]) / row['seed_std'] if row['seed_std'] else float('inf'):.1f} | "
            f"{row['seeds_routed_lower']}/{len(row['seeds'])} | "
            f"{'–' if row['paired_t_p_value'] is None else format(row['paired_t_p_value'], '.2g')} | {row['better']} |"
        )
    lines += [
        "",
        f"**Conclusion.** {best_rules(record)} {conclusion(rows)} 'better' names a rule only when every seed "
        "agrees on the sign and a "
        "paired t-test over the seeds gives p < 0.05 (with 3 seeds a weak test); the seed std is the spread of one "
        "rule's perplexity over calibration draws, which the paired difference removes.",
        "",
        "## Per-seed runs",
        "",
        "| method | rule | seed | perplexity | x dense | mean recon error | experts on all tokens | prune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        fallback = sum(len(b["calibrated_on_all"]) for b in run["experts"].values())
        lines.append(
            f"| {run['method']} | {run['rule']} | {run['seed']} | {run['perplexity']:.2f} | "
            f"{run['perplexity'] / dense:.2f} | {run['mean_recon_error']:.4f} | "
            f"{'all' if run['rule'] == ALL_TOKENS else fallback} | {run['seconds']:.1f} |"
        )
    lines += [
        "",
        "## Tokens routed to each expert",
        "",
        f"Of {calibration_tokens:,} calibration tokens x top-{top_k} (an even split would give each of the "
        f"{experts} experts {calibration_tokens * top_k // experts:,}). "
        "Per block, min / median / max over experts of the routed tokens, over every run (blocks after the first "
        "see the pruned blocks' outputs, so counts differ a little between runs):",
        "",
        "| block | min | median | max | max / min | experts routed no token |",
        "|---|---|---|---|---|---|",
    ]
    for block, stats in record.get("routed_tokens_per_block", {}).items():
        ratio = stats["max"] / stats["min"] if stats["min"] else float("inf")
        lines.append(
            f"| {block} | {stats['min']:,} | {stats['median']:,.0f} | {stats['max']:,} | {ratio:.1f} | "
            f"{never_routed(record, block)} |"
        )
    first = next((run for run in record["runs"] if run["rule"] == ROUTED), None)
    if first:
        lines += [
            "",
            f"One run in full ({first['method']}, routed, seed {first['seed']}), routed tokens of experts 0..7:",
            "",
        ]
        lines += [f"- block {block}: {entry['routed_tokens']}" for block, entry in first["experts"].items()]
    shares = training["dense_routing_share"]
    lines += [
        "",
        f"Dense model's routing share per expert on {record['data']['probe_windows']} held-out windows (even = "
        f"{1 / ARCHITECTURE['num_local_experts']:.3f}):",
        "",
        *[f"- block {block}: {', '.join(f'{share:.3f}' for share in row)}" for block, row in enumerate(shares)],
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in record["notes"]],
    ]
    return "\n".join(lines) + "\n"


def write(record: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    record["comparison"] = compare(record)
    record["conclusion"] = f"{best_rules(record)} {conclusion(record['comparison'])}"
    record["notes"] = NOTES
    write_json_atomic(stem.with_suffix(".json"), record)
    stem.with_suffix(".md").write_text(render_markdown(record))


def summarise_counts(record: dict) -> None:
    by_block: dict[str, list[int]] = {}
    for run in record["runs"]:
        for block, entry in run["experts"].items():
            by_block.setdefault(block, []).extend(entry["routed_tokens"])
    record["routed_tokens_per_block"] = {block: spread(values) for block, values in by_block.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rules", default=",".join(EXPERT_CALIBRATIONS))
    parser.add_argument("--seeds", default="0,1,2", help="calibration draw seeds")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128, help="calibration and evaluation window length")
    parser.add_argument("--windows", type=int, default=0, help="held-out evaluation windows [default 0: all]")
    parser.add_argument("--vocab", type=int, default=8192, help="model vocabulary: most frequent ids + 'other'")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-seqlen", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--aux", type=float, default=0.01, help="router_aux_loss_coef (load balancing)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1, the machine is shared]")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "eggs-ptp-moe-calibration"))
    parser.add_argument("--name", default="moe_calibration", help="results file stem")
    parser.add_argument("--results", default=str(RESULTS), help="results folder [default: benchmarks/results]")
    parser.add_argument("--resume", action="store_true", help="continue the results file, skipping finished runs")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    hide_loading_bars()
    stem = Path(args.results) / args.name
    json_path = stem.with_suffix(".json")
    if args.render:
        write(json.loads(json_path.read_text()), stem)
        return
    if json_path.exists() and not args.resume:
        sys.exit(f"{json_path} exists; pass --resume to continue it or --name for a new file")
    began = time.perf_counter()

    tokenizer = load_tokenizer(resolve(DEFAULT_MODEL))
    train_source, eval_source = load_text("wiki", "calibration"), load_text("wiki", "evaluation")
    raw_train, raw_eval = tokenize(tokenizer, train_source.text), tokenize(tokenizer, eval_source.text)
    kept = compact_vocabulary(raw_train, args.vocab)
    train_tokens = remap(raw_train, kept, args.vocab, len(tokenizer))
    eval_tokens = remap(raw_eval, kept, args.vocab, len(tokenizer))
    plain = SequenceStart.of(tokenizer)
    start = SequenceStart(
        tuple(remap(torch.tensor(plain.ids, dtype=torch.long), kept, args.vocab, len(tokenizer)).tolist()), plain.tokens
    )
    probe_windows = 32
    probe = start.prepend(eval_tokens[: probe_windows * (args.seqlen - len(start))].view(probe_windows, -1))

    model, training, folder = trained_model(args, train_tokens, probe, kept)
    dense_state = {key: value.clone() for key, value in model.state_dict().items()}
    remapped = f"; SmolLM2 ids remapped to the {args.vocab - 1} most frequent training ids + 'other'"
    measure = lambda: perplexity(  # noqa: E731
        model, eval_tokens, args.seqlen, args.windows or None, eval_source.description + remapped, False, start
    )
    methods, rules = args.methods.split(","), args.rules.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    other = args.vocab - 1
    record = (
        json.loads(json_path.read_text())
        if args.resume and json_path.exists()
        else {
            "issue": 17,
            "settings": {**vars(args), "methods": methods, "rules": rules, "seeds": seeds},
            "command": " ".join([".venv/bin/python", "benchmarks/moe_calibration.py", *sys.argv[1:]]),
            "machine": machine(),
            "model": {
                "class": type(model).__name__,
                "architecture": ARCHITECTURE,
                "vocab_size": args.vocab,
                "parameters": sum(p.numel() for p in model.parameters()),
                "expert_parameters": sum(p.numel() for name, p in model.named_parameters() if ".experts." in name),
                "cache": str(folder),
            },
            "data": {
                "tokenizer": f"{DEFAULT_MODEL} ({type(tokenizer).__name__}, {len(tokenizer)} ids)",
                "train_text": train_source.description,
                "train_tokens": train_tokens.numel(),
                "eval_tokens": eval_tokens.numel(),
                "other_share_train": float((train_tokens == other).float().mean()),
                "other_share_eval": float((eval_tokens == other).float().mean()),
                "sequence_start": list(start.tokens),
                "probe_windows": probe_windows,
            },
            "training": training,
            "notes": NOTES,
            "runs": [],
        }
    )
    previous = record.get("seconds", 0.0)  # of earlier invocations, when resuming
    if "dense" not in record:
        record["dense"] = measure().to_dict()
        record["evaluation"] = (
            f"{record['dense']['text']}; first {record['dense']['windows']} non-overlapping windows of "
            f"{record['dense']['seqlen']} tokens"
        )
    print(f"dense: ppl {record['dense']['perplexity']:.2f}", flush=True)
    if "experts_zeroed" not in record:  # how much the experts matter at all: the scale of any rule's effect
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if ".experts." in name:
                    parameter.zero_()
        record["experts_zeroed"] = measure().to_dict()
        model.load_state_dict(dense_state)
        print(f"experts zeroed: ppl {record['experts_zeroed']['perplexity']:.2f}", flush=True)
    write(record, stem)
    done = {(run["method"], run["rule"], run["seed"]) for run in record["runs"]}
    for seed in seeds:
        for method in methods:
            for rule in rules:
                if (method, rule, seed) in done:
                    continue
                model.load_state_dict(dense_state)
                config = PruneConfig(
                    method=method,
                    pattern=args.pattern,
                    nsamples=args.nsamples,
                    seqlen=args.seqlen,
                    seed=seed,
                    experts=rule,
                )
                calibration = sample_windows(
                    train_tokens, args.nsamples, args.seqlen, seed, train_source.description + remapped, start
                )
                started = time.perf_counter()
                _, report = prune(model, tokenizer, config, RunOptions(progress=False), calibration=calibration)
                seconds = time.perf_counter() - started
                result = measure()
                summary = report.summary()
                record["runs"].append(
                    {
                        "method": method,
                        "rule": rule,
                        "seed": seed,
                        "perplexity": result.perplexity,
                        "seconds": seconds,
                        "mean_recon_error": summary["mean_recon_error"],
                        "kept_fraction": summary["kept_fraction"],
                        "pruned_layers": summary["pruned_layers"],
                        "expert_matrices": summary["expert_matrices"],
                        "routed_tokens_per_expert": summary["routed_tokens_per_expert"],
                        "experts": expert_counts(report),
                        "load_average": list(os.getloadavg()),
                    }
                )
                summarise_counts(record)
                record["seconds"] = previous + time.perf_counter() - began
                write(record, stem)
                print(f"{method}, {rule}, seed {seed}: ppl {result.perplexity:.2f}, {seconds:.1f} s", flush=True)
    model.load_state_dict(dense_state)
    record["seconds"] = previous + time.perf_counter() - began
    write(record, stem)
    print(record["conclusion"], flush=True)


if __name__ == "__main__":
    main()
