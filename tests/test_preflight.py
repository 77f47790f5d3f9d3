"""Pre-flight checks of a model against a run config, without loading weights."""

import torch

from annot.preflight import context_length, target_module_problems


class _Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(2, 2)
        self.v_proj = torch.nn.Linear(2, 2)


def _modules():
    m = torch.nn.Module()
    m.layers = torch.nn.ModuleList([_Attn()])
    return dict(m.named_modules())


def test_target_modules_that_match_nothing_are_each_named():
    assert target_module_problems("all-linear", _modules()) == []
    assert target_module_problems(["q_proj", "v_proj"], _modules()) == []
    problems = target_module_problems(["q_proj", "nonexistent_proj", "k_proj"], _modules())
    assert len(problems) == 2 and "'nonexistent_proj' matches no module" in problems[0]
    assert "'k_proj'" in problems[1] and "adaptable: q_proj, v_proj" in problems[1]
    (bad,) = target_module_problems(["layers"], _modules())
    assert "names a ModuleList, which LoRA cannot adapt" in bad


def test_context_length_reads_the_usual_config_keys():
    class C:
        n_positions = 1024

    class D:
        max_position_embeddings = 8192
        n_positions = 1

    assert context_length(C()) == 1024 and context_length(D()) == 8192 and context_length(object()) is None
