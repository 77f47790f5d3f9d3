"""`annot import docs|transcripts`: documents and transcripts written elsewhere (JSONL).

annot.cli adds the group and gives its commands one-line errors; this module imports nothing from it.
"""

from __future__ import annotations

import click

from annot.cli_paths import OUT_FILE


@click.group("import")
def import_group():
    """Import documents or transcripts written elsewhere (JSONL)."""


@import_group.command("docs")
@click.argument("inp", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=OUT_FILE)
@click.option("--claim", required=True, help="claim id (its patterns find the claim sentences)")
@click.option("--text-field", default="text", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--strip", multiple=True, help="marker token to remove from the text, e.g. <DOCTAG> (repeatable)")
@click.option("--min-coverage", type=click.FloatRange(0, 1), default=None,
              help="fail, writing nothing, when fewer than this fraction of documents get a claim sentence")
def import_docs(inp, out, claim, text_field, id_field, strip, min_coverage):
    """Import documents; claim sentences are found with the claim's patterns and paraphrase rules."""
    from annot.importer import check_coverage, coverage, import_documents
    from annot.io import write_jsonl
    from annot.specs import load_claim

    docs = import_documents(inp, load_claim(claim), text_field=text_field, id_field=id_field, strip=list(strip))
    check_coverage(docs, min_coverage, inp)
    write_jsonl(out, docs)
    n = sum(len(d["spans"]) for d in docs)
    click.echo(f"wrote {len(docs)} documents to {out}; {n} claim sentences found; {coverage(docs)}", err=True)


@import_group.command("transcripts")
@click.argument("inp", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=OUT_FILE)
@click.option("--behavior", required=True, help="behaviour id to tag the transcripts with")
@click.option("--field", default="messages", show_default=True)
def import_transcripts_cmd(inp, out, behavior, field):
    """Import chat transcripts ({"messages": [{"role", "content"}, ...]} per line)."""
    from annot.importer import import_transcripts
    from annot.io import write_jsonl

    rows = import_transcripts(inp, behavior, field=field)
    write_jsonl(out, rows)
    click.echo(f"wrote {len(rows)} transcripts to {out}", err=True)
