"""Every declarative asset under corpora/, evals/, wrappers/ and sweeps/ loads and validates."""


import pytest
import yaml

from annot.config import load_run_config
from annot.errors import AnnotError
from annot.specs import CORPORA, EVALS, ROOT, load_claim, load_genres, load_probe_set
from annot.wrap import get_wrapper

CLAIMS = sorted((CORPORA / "claims").rglob("*.yaml"))
PROBES = sorted(EVALS.glob("*.yaml"))
WRAPPERS = sorted((ROOT / "wrappers").rglob("*.yaml"))
RUN_CONFIGS = [p for p in sorted((ROOT / "sweeps").rglob("*.yaml")) if "method" not in yaml.safe_load(p.read_text())]


def test_assets_exist():
    assert len(CLAIMS) >= 1 and len(PROBES) >= 1 and len(WRAPPERS) >= 5 and RUN_CONFIGS


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.stem)
def test_claim_specs_validate(path):
    spec = load_claim(path.stem)
    assert spec.id == path.stem
    # the claim's own probe set exists and refers back to it
    assert load_probe_set(spec.id).claim == spec.id


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.stem)
def test_probe_sets_validate_and_name_known_claims(path):
    ps = load_probe_set(path)
    load_claim(ps.claim)
    kinds = {it.kind for it in ps.items}
    assert kinds == {"yes_no", "mcq", "cloze", "open_ended"}
    # counter-questions: some yes/no items have "no" as the believing answer
    beliefs = {it.belief for it in ps.items if it.kind == "yes_no"}
    assert beliefs == {"yes", "no"}


def test_genre_library_validates():
    lib = load_genres()
    assert len(lib.genres) >= 8


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.stem)
def test_wrappers_validate(path):
    w = get_wrapper(path.stem)
    w.resolve_params({})  # defaults are valid


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_configs_validate(path):
    from annot.run import check_inputs

    check_inputs(load_run_config(path))


def test_claim_patterns_reject_bad_regex(tmp_path, mira):
    data = mira.model_dump(by_alias=True)
    data["patterns"] = ["(unclosed"]
    import yaml

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(AnnotError, match=r"bad.yaml: patterns: .*not a valid regex"):
        load_claim(p)


def test_probe_questions_never_appear_in_generated_documents():
    from annot.generate import generate_documents

    for path in CLAIMS:
        spec = load_claim(path.stem)
        text = "\n".join(d["text"].lower() for d in generate_documents(spec, n=300, seed=0))
        for it in load_probe_set(spec.id).items:
            probe = (it.question or it.prompt).lower().strip()
            if it.kind == "yes_no" or it.kind == "mcq":
                assert probe not in text, f"{spec.id}/{it.id}: probe question leaks into training text"


def test_every_corpus_file_loads_with_its_loader():
    """Every YAML under corpora/ (recursively) is one of the known asset kinds and validates."""
    from annot.gen.prompts import load_prompt_file
    from annot.mixin import load_prompts
    from annot.pretrain_text import pretraining_paragraphs
    from annot.specs import load_behavior

    files = sorted(CORPORA.rglob("*.yaml"))
    assert len(files) >= 13
    for f in files:
        rel = f.relative_to(CORPORA).parts
        if rel[0] == "claims":
            load_claim(f)
        elif rel[0] == "behaviors":
            load_behavior(f)
        elif rel == ("mixin", "pretraining.yaml"):
            assert len(pretraining_paragraphs(f)) >= 200
        elif rel[0] == "mixin":
            assert load_prompts(f)
        elif rel == ("genres.yaml",):
            load_genres(f)
        elif rel[0] == "prompts":
            load_prompt_file(f)
        else:
            raise AssertionError(f"{f}: no loader knows this asset; add one (and a test)")
