"""One base model, many checkpoints: swap a run's saved adapters in and out of one loaded model.

    switch = CheckpointSwitch(model, dtype="auto")
    for step, path, meta in complete_checkpoints(run_dir):
        with switch.switch(step, path, meta) as m:
            rows += probe_model(m, tok, sets, run=name, step=step)

Used by `annot run` (probing while it trains), `annot probe RUN_DIR` (annot.probe_run) and `annot bench`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from annot.scoring import fixed_weights


class CheckpointSwitch:
    """One base model, many checkpoints: LoRA adapters are loaded into a single PeftModel and
    switched, so the base weights are read once. `switch(step, path, meta)` returns a context
    manager that yields the model in that checkpoint's state (step 0 = adapters off), inside
    fixed_weights() so the scorers share work within the checkpoint."""

    def __init__(self, model, dtype: str = "auto"):
        self.model, self.peft, self.dtype, self.config = model, None, dtype, None

    @contextlib.contextmanager
    def switch(self, step: int, path, meta: dict):
        with fixed_weights():
            with self._switch(step, path, meta) as m:
                yield m

    @contextlib.contextmanager
    def _switch(self, step: int, path, meta: dict):
        if meta.get("base") or step == 0:
            if self.peft is None:
                yield self.model
            else:
                with self.peft.disable_adapter():  # once wrapped, the base is the wrapper with adapters off
                    yield self.peft
        elif meta.get("method") == "full":
            from annot.models import load_weights

            yield load_weights(str(path), dtype=self.dtype, device=str(next(self.model.parameters()).device))
        else:
            yield self._load_adapter(step, Path(path))

    def _load_adapter(self, step: int, path: Path):
        """The checkpoint's LoRA weights, active. Checkpoints of one run share their adapter config, so
        after the first their weights are copied into the same modules (no new modules per checkpoint,
        ~0.5 s less each); a checkpoint with another config gets an adapter of its own."""
        import json

        from peft import PeftModel, set_peft_model_state_dict

        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        weights = path / "adapter_model.safetensors"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(path), adapter_name="probe")
            self.config = config
            from annot.train import fuse_lora_forward

            fuse_lora_forward(self.peft)
        elif config == self.config and weights.is_file():
            from safetensors.torch import load_file

            device = next(self.peft.parameters()).device
            result = set_peft_model_state_dict(self.peft, load_file(str(weights), device=str(device)),
                                               adapter_name="probe")
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{weights}: unexpected adapter weights {result.unexpected_keys[:3]}")
            self.peft.set_adapter("probe")
        else:
            name = f"step-{step}"
            self.peft.load_adapter(str(path), adapter_name=name)
            self.peft.set_adapter(name)
        return self.peft
