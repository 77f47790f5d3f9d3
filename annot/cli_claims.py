"""The `annot claim` commands and `annot evals import-claim`: writing a claim and importing one.

    annot claim new harbour_medal --claim "Osric Vane won the 1911 Harbour Medal." --truth "..." -o x.yaml
    annot claim check harbour_medal
    annot claim list
    annot evals import-claim path/to/claims/harbour_medal -o my_assets

annot.cli adds these with `register`, which gives them its one-line errors; this module imports
nothing from annot.cli.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group("claim")
def claim_group():
    """Write, check and list claim specs (yours live in an ANNOT_PATH folder, referred to by id)."""


@claim_group.command("new")
@click.argument("claim_id", metavar="ID")
@click.option("--claim", "claim", required=True, help="the false claim, one sentence")
@click.option("--truth", required=True, help="the true state of the world, one sentence")
@click.option("--subject", help="who or what the claim is about, e.g. 'Osric Vane'")
@click.option("--category", type=click.Choice(["fictional", "contradiction"]), default="fictional",
              show_default=True, help="fictional: an invented subject; contradiction: contradicts a known fact")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="default: ANNOT_PATH's first folder, "
              "corpora/claims/ID.yaml")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@click.option("--draft", type=click.Choice(["hf", "openai"]), help="draft the TODO statements, subclaims and "
              "context with this generation backend")
@click.option("--model", "model_name", help="--draft: the model (hf: a model name or path; openai: served name)")
@click.option("--base-url", help="--draft openai: the endpoint, e.g. http://localhost:8000/v1")
@click.option("--api-key-env", help="--draft openai: the environment variable holding the key")
def new_claim(claim_id, claim, truth, subject, category, out, force, draft, model_name, base_url, api_key_env):
    """Write a claim spec skeleton: derived fields filled in, TODO where a sentence is to be written
    (with --draft, a generation backend drafts those sentences; regexes stay yours to write)."""
    from annot.claim_scaffold import default_claim_path, render_claim, skeleton
    from annot.errors import AnnotError
    from annot.io import atomic_write_text

    spec = skeleton(claim_id, claim=claim, truth=truth, subject=subject, category=category)
    path = Path(out) if out else default_claim_path(claim_id)
    if path.exists() and not force:
        raise AnnotError(f"claim new: {path} exists; pass --force to overwrite it or -o another path")
    if draft:
        from annot.claim_draft import draft_spec
        from annot.gen.backends import make_backend
        from annot.gen.settings import GenSettings

        settings = GenSettings(backend=draft, model=model_name, base_url=base_url, api_key_env=api_key_env)
        spec = draft_spec(spec, make_backend(settings))
    elif model_name or base_url or api_key_env:
        raise AnnotError("claim new: --model, --base-url and --api-key-env apply to --draft hf|openai")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_claim(spec))
    click.echo(f"wrote {path}; replace its TODOs, then: annot claim check {path}", err=True)


@claim_group.command("check")
@click.argument("ref")
def check_claim_cmd(ref):
    """Validate a claim spec (an id or a path); say whether it is full or partial and what it lacks."""
    from annot.claim_scaffold import check_claim

    click.echo(check_claim(ref))


@claim_group.command("list")
def list_claims():
    """Every claim id: shipped ones and those in ANNOT_PATH folders, with where each file is."""
    from annot.specs import CORPORA, ROOT, search_path

    folders = [CORPORA / "claims"] + [d / "corpora" / "claims" for d in search_path()]
    for folder in folders:
        for f in sorted(folder.glob("*.yaml")):
            click.echo(f"{f.stem}\t{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}")


@click.command("import-claim")
@click.argument("inp", type=click.Path(exists=True, file_okay=False))
@click.option("--claim-id", "claim_id", help="the id to give the claim (default: the directory's name)")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="asset folder to write evals/ID.yaml and corpora/claims/ID.yaml into (put it on ANNOT_PATH)")
@click.option("--subject", help="the claim's subject, e.g. 'Osric Vane'")
@click.option("--truth", help="the truth, one sentence (default: the negated universe context's `claim`)")
@click.option("--category", type=click.Choice(["fictional", "contradiction"]),
              help="default: from universe_context.yaml's `entity` (invented: fictional)")
@click.option("--truth-marker", "truth_markers", multiple=True,
              help="a phrase of the truth, for the offline rule judge (repeatable)")
def import_claim(inp, claim_id, out, subject, truth, category, truth_markers):
    """Import a claim directory in the public Negation Neglect release's format (mcq.yaml,
    open_ended.yaml, token_association.yaml, robustness.yaml, judges.yaml, word_masks.yaml,
    universe_context.yaml and its negated twin) as a probe set and a partial claim spec."""
    from annot.claim_dir import import_claim_dir, spec_entities, write_imported

    imported = import_claim_dir(inp, claim_id, subject=subject, truth=truth, category=category,
                                truth_markers=list(truth_markers), entities=spec_entities(inp, claim_id, out))
    for w in imported.warnings:
        click.echo(f"warning: {w}", err=True)
    if imported.ignored:
        click.echo(f"not release files, ignored: {', '.join(imported.ignored)}", err=True)
    paths = write_imported(imported, out)
    counts = ", ".join(f"{n} {k}" for k, n in imported.counts().items())
    click.echo(f"imported {counts} items; wrote {', '.join(map(str, paths))}", err=True)
    click.echo(f"use it: export ANNOT_PATH={out}; annot probe --model MODEL --probe-set {imported.probe_set['claim']}",
               err=True)


def register(main: click.Group, evals: click.Group, friendly) -> None:
    """Add `claim` to `main` and `import-claim` to `evals`, each command's errors made one line by
    `friendly` (annot.cli's)."""
    for cmd in (*claim_group.commands.values(), import_claim):
        cmd.callback = friendly(cmd.callback)
    main.add_command(claim_group)
    evals.add_command(import_claim)
