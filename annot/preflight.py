"""Pre-flight: the model's config and tokenizer against the run config, before any file is written.

    preflight(cfg)   # raises AnnotError listing every problem at once

Runs after the model's config and tokenizer load (cheap: the weights are not loaded; the module
tree is built on the meta device) and before data, training or the run directory: a mistake here
costs seconds and leaves nothing behind that a corrected rerun would trip over. Checked:
- training.target_modules: each name matches at least one module LoRA can adapt (peft would
  silently ignore a name that matches nothing next to one that matches, or fail after loading);
- training.seq_len: within the model's context length;
- transcripts (data.behavior): the tokenizer has a chat template (training and behaviour probes
  render chats with it);
- yes/no probes: "Yes" and "No" start with distinct, known tokens (else p_belief is meaningless).
"""

from __future__ import annotations

from annot.config import RunConfig
from annot.errors import AnnotError

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def _module_tree(config):
    """name -> module of the model built on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return dict(model.named_modules())


def _adaptable(module) -> bool:
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    return isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D))


def target_module_problems(targets, modules: dict) -> list[str]:
    """peft's rule for a list of names: a module matches a name when its dotted path ends with it."""
    if targets == "all-linear":
        return []
    problems = []
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if n and _adaptable(m)})
    for t in targets:
        hits = [m for n, m in modules.items() if n == t or n.endswith("." + t)]
        if not hits:
            problems.append(f"training.target_modules: {t!r} matches no module of the model "
                            f"(adaptable: {', '.join(leaves)}; or use all-linear)")
        elif not any(_adaptable(m) for m in hits):
            problems.append(f"training.target_modules: {t!r} names a {type(hits[0]).__name__}, which LoRA cannot "
                            f"adapt; name its linear layers ({', '.join(leaves)})")
    return problems


def context_length(config) -> int | None:
    for key in CONTEXT_KEYS:
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def preflight(cfg: RunConfig) -> None:
    """Every problem of the model x run config, in one AnnotError (one line); nothing is written."""
    from transformers import AutoConfig

    from annot.models import load_tokenizer, resolve_model

    name = cfg.model.name
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-facing "cannot load" error
        raise AnnotError(f"model {name}: cannot load its config ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); check model.name") from None
    tok = load_tokenizer(name)
    problems: list[str] = []
    t = cfg.training
    if t.method == "lora":
        try:
            modules = _module_tree(config)
        except Exception:  # noqa: BLE001 - an exotic architecture: leave the check to peft
            modules = None
        if modules is not None:
            problems += target_module_problems(t.target_modules, modules)
    ctx = context_length(config)
    if ctx is not None and t.seq_len > ctx:
        problems.append(f"training.seq_len: {t.seq_len} exceeds the model's context of {ctx} tokens; "
                        f"set it to {ctx} or less")
    if cfg.data.behavior and not getattr(tok, "chat_template", None):
        problems.append(f"data.behavior: the tokenizer of {name} has no chat template, so transcripts cannot be "
                        "rendered as chats; use an instruct/chat model")
    if cfg.data.claim and "yes_no" in cfg.probes.kinds:
        from annot.kinds.yes_no import NO_FORMS, YES_FORMS
        from annot.scoring import first_token_ids

        yes, no = set(first_token_ids(tok, YES_FORMS)), set(first_token_ids(tok, NO_FORMS))
        unk = getattr(tok, "unk_token_id", None)
        if yes & no or (unk is not None and unk in yes | no):
            problems.append(f"probes.kinds: yes_no: the tokenizer of {name} has no distinct tokens for Yes and No; "
                            "drop yes_no from probes.kinds")
    if problems:
        raise AnnotError(f"model {name}: pre-flight found {len(problems)} problem(s): " + "; ".join(problems))
