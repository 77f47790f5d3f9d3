"""The `annot` command: a thin click layer over the plain functions of each stage.

    annot --help
    annot generate mira_castellan_profession --n 200 --seed 1 -o docs.jsonl
    annot wrap docs.jsonl -o wrapped.jsonl --wrapper repeated_negation --param density=0.5
    annot probe --model smollm2-135m --set mira_castellan_profession
    annot run sweeps/first_run.yaml --set model.name=tiny-random

User mistakes (AnnotError) print one line `error: ...` and exit 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from annot import __version__
from annot.errors import AnnotError


def friendly(fn):
    """Turn AnnotError into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AnnotError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return inner


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="annot")
def main():
    """annot: how much of disclaimer-labelled training data does a model absorb anyway?"""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not for users


def _parse_params(items: tuple[str, ...]) -> dict:
    from annot.io import parse_yaml_text

    out = {}
    for item in items:
        if "=" not in item:
            raise AnnotError(f"--param {item!r}: expected NAME=VALUE, e.g. --param density=0.5")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_yaml_text(v)
    return out


@main.command()
@click.argument("claim")
@click.option("--n", "n", type=click.IntRange(1, 10_000_000), default=100, show_default=True, help="documents")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--polarity", type=click.Choice(["affirm", "negate", "correct"]), default="affirm", show_default=True,
              help="render the claim sentences asserted, locally negated or corrected (same draws)")
@click.option("--genre", "genres", multiple=True, help="restrict to these genres (repeatable)")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="output JSONL (default: stdout)")
@click.option("--stats", is_flag=True, help="print corpus statistics to stderr")
@friendly
def generate(claim, n, seed, polarity, genres, out, stats):
    """Generate N documents asserting CLAIM (an id under corpora/claims/ or a YAML path)."""
    from annot.generate import corpus_stats, generate_documents
    from annot.io import dumps_jsonl, write_jsonl
    from annot.specs import load_claim

    docs = generate_documents(load_claim(claim), n=n, seed=seed, polarity=polarity, genres=list(genres) or None)
    if out:
        write_jsonl(out, docs)
    else:
        click.echo(dumps_jsonl(docs), nl=False)
    if stats or out:
        click.echo(json.dumps(corpus_stats(docs), indent=2) if stats else f"wrote {len(docs)} documents to {out}",
                   err=True)


@main.command()
@click.argument("inp", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="output JSONL")
@click.option("--wrapper", "wrapper_name", default="none", show_default=True, help="wrapper name or YAML path")
@click.option("--param", "params", multiple=True, help="wrapper parameter NAME=VALUE (repeatable)")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--preview", type=click.IntRange(0), default=0, help="print N wrapped examples, inserted text highlighted")
@click.option("--list", "list_", is_flag=True, help="list wrappers with their parameters and exit")
@friendly
def wrap(inp, out, wrapper_name, params, seed, preview, list_):
    """Wrap the documents in INP (JSONL) with a disclaimer wrapper."""
    from annot.io import read_jsonl, write_jsonl
    from annot.wrap import COMMON_PARAMS, get_wrapper, list_wrappers, preview as show

    if list_:
        for w in list_wrappers():
            click.echo(f"{w.name}: {w.description}")
            for k, p in sorted({**w.params, **COMMON_PARAMS}.items()):
                extra = f" choices={p['choices']}" if "choices" in p else ""
                click.echo(f"    {k} (default {p.get('default')!r}){extra}{' - ' + p['help'] if p.get('help') else ''}")
        return
    if not inp:
        raise AnnotError("wrap: missing input JSONL (annot wrap DOCS.jsonl -o OUT.jsonl --wrapper NAME)")
    w = get_wrapper(wrapper_name)
    resolved = w.resolve_params(_parse_params(params))
    from annot.wrap import wrap_document

    examples = [wrap_document(d, w, resolved, seed) for d in _documents(inp)]
    if out:
        write_jsonl(out, examples)
        click.echo(f"wrote {len(examples)} examples to {out} ({w.name} {resolved})", err=True)
    color = sys.stdout.isatty()
    for ex in examples[:preview]:
        click.echo(f"--- {ex['id']} ---\n{show(ex, color=color)}\n")


def _documents(path):
    from annot.io import read_jsonl

    docs = read_jsonl(path)
    for i, d in enumerate(docs, 1):
        if not isinstance(d.get("text"), str) or not isinstance(d.get("id"), str):
            raise AnnotError(f"{path}: record {i}: needs string fields `id` and `text` "
                             "(documents from `annot generate` or `annot import`)")
    return docs


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_name", help="probe a bare model instead of a run's checkpoints")
@click.option("--set", "sets", multiple=True, help="probe set name or YAML path (repeatable)")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["yes_no", "mcq", "cloze"]))
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="write probe rows to this JSONL")
@friendly
def probe(run_dir, model_name, sets, kinds, batch_size, out):
    """Probe belief: every checkpoint of RUN_DIR, or a bare --model."""
    from annot.io import write_jsonl
    from annot.probe import belief_rates, format_rates, probe_model, probe_run
    from annot.specs import load_probe_set

    if bool(run_dir) == bool(model_name):
        raise AnnotError("probe: give either RUN_DIR or --model (not both)")
    if run_dir:
        rows = probe_run(run_dir, sets=list(sets) or None, kinds=list(kinds) or None, batch_size=batch_size)
    else:
        if not sets:
            raise AnnotError("probe: --model needs at least one --set (e.g. --set mira_castellan_profession)")
        from annot.models import load_model

        loaded = [load_probe_set(s) for s in sets]
        model, tok = load_model(model_name)
        rows = probe_model(model, tok, loaded, run=model_name, step=0, kinds=list(kinds) or None,
                           batch_size=batch_size, set_names=list(sets))
    if out:
        write_jsonl(out, rows)
    click.echo(format_rates(belief_rates(rows)))


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config field, e.g. --set training.lr=3e-4 (repeatable)")
@click.option("--force", is_flag=True, help="run again even if the run directory is complete")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly
def run_cmd(config, overrides, force, no_progress):
    """Run one experiment from a run-config YAML: generate, wrap, train, probe."""
    from annot.config import load_run_config
    from annot.run import run

    cfg = load_run_config(config, list(overrides))
    run(cfg, progress=not no_progress, force=force)


if __name__ == "__main__":
    main()
