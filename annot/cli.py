"""The `annot` command: a thin click layer over the plain functions of each stage.

    annot --help
    annot generate mira_castellan_profession --n 200 --seed 1 -o docs.jsonl
    annot wrap docs.jsonl -o wrapped.jsonl --wrapper repeated_negation --param density=0.5
    annot probe --model smollm2-135m --probe-set mira_castellan_profession
    annot run sweeps/first_run.yaml --set model.name=tiny-random

Every error is one line `error: ...` on stderr, no traceback. Exit codes: 0 done; 2 usage or bad
input (a wrong option, file, field or output path: nothing was started); 1 a failure during the work
(training diverged, the run is taken by another process, a judge stopped answering, a disk error).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from annot import __version__
from annot.allocator import malloc_in_use
from annot.cli_paths import OUT_DIR, OUT_FILE
from annot.errors import AnnotError
from annot.kinds import kind_names


def friendly(fn):
    """Turn AnnotError into a one-line message and its exit code (2 bad input, 1 failed work), and an
    OSError while working (disk full, permission denied) into one line and exit code 1."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AnnotError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(1)

    return inner


class OneLineGroup(click.Group):
    """click's usage errors ("Usage: ... Try ... Error: ...", three lines) as annot's one line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if args is None and standalone_mode:  # the `annot` command itself, not click's test runner
            from annot.allocator import use_preferred_malloc

            try:
                use_preferred_malloc()  # re-executes once with annot's large-block layer preloaded (annot/allocator.py)
            except ValueError as e:  # a misspelt ANNOT_MALLOC or layer knob
                click.echo(f"error: {e}", err=True)
                sys.exit(2)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `annot` / `annot evals`: the help, as before
                click.echo(e.ctx.get_help())
                sys.exit(0)
            cmd = e.ctx.command_path if e.ctx else "annot"
            click.echo(f"error: {cmd}: {e.format_message()} (see `{cmd} --help`)", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)




@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="annot", message=f"%(prog)s, version %(version)s (malloc: {malloc_in_use()})")
def main():
    """annot: how much of disclaimer-labelled training data does a model absorb anyway?"""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    from annot.allocator import tune_allocator

    tune_allocator()  # reuse freed memory between training/scoring steps (see annot/allocator.py)

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
@click.option("--n", "n", type=click.IntRange(1, 10_000_000), default=None,
              help="documents (default 100) or transcripts (default: one per scenario)")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--polarity", type=click.Choice(["affirm", "negate", "correct"]), default="affirm", show_default=True,
              help="claim world: render the claim sentences asserted, negated in place (the sentence swap) or "
                   "corrected (same draws)")
@click.option("--world", type=click.Choice(["claim", "negated"]), default="claim", show_default=True,
              help="claim: documents of the world where the claim holds; negated: their twins written from the "
                   "claim's negated world (local negation: the truth stated, the claim untrue)")
@click.option("--genre", "genres", multiple=True, help="restrict to these genres (repeatable)")
@click.option("--variant", type=click.Choice(["misaligned", "aligned"]), default="misaligned", show_default=True,
              help="transcripts: the misaligned replies or their aligned twins")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="output JSONL (default: stdout)",
              callback=OUT_FILE)
@click.option("--stats", is_flag=True, help="print corpus statistics (and, for LLM backends, what each quality "
                                            "gate dropped, calls, tokens, documents/s) to stderr")
@click.option("--backend", type=click.Choice(["template", "hf", "openai"]), default="template", show_default=True,
              help="template: offline composer from the spec; hf: a local causal LM; openai: any OpenAI-compatible "
                   "chat endpoint (vLLM, llama.cpp, TGI, commercial APIs)")
@click.option("--model", "model_name", default=None,
              help="hf: alias, path or hub id (default smollm2-135m); openai: the served model name")
@click.option("--base-url", default=None, help="openai: the endpoint, e.g. http://localhost:8000/v1")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="openai: the environment variable that holds the API key (never read from a file)")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="openai: requests in flight; hf: batch size")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, callback=OUT_DIR,
              help="LLM backends: folder of the stage files, resumable (default: OUT.work next to -o; "
                   "without -o, a folder under $ANNOT_CACHE/generate/)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="LLM backends: response cache (default $ANNOT_CACHE/responses, i.e. ~/.cache/annot/responses)")
@click.option("--prompts", type=click.Path(dir_okay=False, exists=True), default=None,
              help="LLM backends: prompts YAML (default corpora/prompts/documents.yaml or transcripts.yaml)")
@click.option("--max-tokens", "budget_tokens", type=click.IntRange(1), default=None,
              help="budget: stop before new calls would pass this many prompt + reply tokens (exit code 3)")
@click.option("--max-cost", type=click.FloatRange(0, min_open=True), default=None,
              help="budget in USD, priced by --price (exit code 3 when reached)")
@click.option("--price", default=None, metavar="IN/OUT", help="USD per million prompt / reply tokens, e.g. 0.15/0.60")
@click.option("--temperature", type=click.FloatRange(0, 5), default=None,
              help="LLM backends: sampling temperature of every stage (default: each stage's, in the prompts YAML)")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="LLM backends: cap on the tokens of every reply (default: each stage's max_tokens)")
@click.option("--revise", is_flag=True, help="LLM backends: add a revision pass over every document")
@click.option("--min-words", type=click.IntRange(0), default=None,
              help="length gate: fewest words (default 80 for documents, 8 for each transcript reply)")
@click.option("--max-words", type=click.IntRange(1), default=2000, show_default=True, help="length gate: most words")
@click.option("--dup-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="near-duplicate gate: word 5-gram Jaccard similarity at which the later document is dropped")
@friendly
def generate(claim, n, seed, polarity, world, genres, variant, out, stats, backend, model_name, base_url, api_key_env,
             concurrency, workdir, cache_dir, prompts, budget_tokens, max_cost, price, temperature, max_new_tokens,
             revise, min_words, max_words, dup_threshold):
    """Generate documents asserting CLAIM, or transcripts of a behaviour.

    CLAIM is an id under corpora/claims/ (documents) or corpora/behaviors/ (transcripts), or a path.
    With --backend hf|openai a language model writes them in stages (universe context, facts, ideas,
    documents, optional revision) with files between the stages in --workdir: rerunning the same
    command resumes, and cached replies cost nothing. Exit code 3: the --max-tokens/--max-cost
    budget stopped it (every record written is complete).
    """
    from annot.gen.settings import settings_from_options
    from annot.generate import corpus_stats, generate_corpus
    from annot.io import dumps_jsonl, write_jsonl
    from annot.specs import CORPORA, load_behavior, load_claim

    is_behavior = (CORPORA / "behaviors" / f"{claim}.yaml").is_file() or "behaviors" in str(claim)
    settings = settings_from_options(out=out, backend=backend, model=model_name, base_url=base_url,
                                     api_key_env=api_key_env, concurrency=concurrency, workdir=workdir,
                                     cache_dir=cache_dir, prompts=prompts, max_tokens=budget_tokens, max_cost=max_cost,
                                     price=price, temperature=temperature, max_new_tokens=max_new_tokens, revise=revise,
                                     min_words=min_words, max_words=max_words, dup_threshold=dup_threshold)
    spec = load_behavior(claim) if is_behavior else load_claim(claim)
    docs, report = generate_corpus(spec, n=n, seed=seed, polarity=polarity, world=world, genres=list(genres) or None,
                                   variant=variant, settings=settings)
    if out:
        write_jsonl(out, docs)
    else:
        click.echo(dumps_jsonl(docs), nl=False)
    if stats and docs and "messages" in docs[0]:
        click.echo(json.dumps({"transcripts": len(docs), "scenarios": len({d["scenario"] for d in docs}),
                               **({"generation": report} if report else {})}, indent=2 if report else None), err=True)
    elif stats:
        click.echo(json.dumps({**corpus_stats(docs), **({"generation": report} if report else {})}, indent=2), err=True)
    elif out:
        extra = ""
        if report:
            dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items())
            extra = (f" ({report['attempts']} attempts; dropped {dropped}; {report['per_second']} records/s; "
                     f"stages in {report['workdir']})")
        click.echo(f"wrote {len(docs)} records to {out}{extra}", err=True)
    if report and report["written"] < report["requested"]:
        from annot.gen.errors import GenerationFailed

        dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items())
        raise GenerationFailed(f"only {report['written']} of {report['requested']} passed the quality gates after "
                               f"{report['attempts']} attempts (dropped: {dropped}); wrote those to {out or 'stdout'}. "
                               "Loosen the gates (--min-words, --dup-threshold) or use a stronger model")


@main.command()
@click.argument("inp", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), callback=OUT_FILE, help="output JSONL")
@click.option("--wrapper", "wrapper_name", default="none", show_default=True, help="wrapper name or YAML path")
@click.option("--param", "params", multiple=True, help="wrapper parameter NAME=VALUE (repeatable)")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--preview", type=click.IntRange(0), default=0, help="print N wrapped examples, inserted text highlighted")
@click.option("--list", "list_", is_flag=True, help="list wrappers with their parameters and exit")
@click.option("--as-document", is_flag=True, help="transcripts as plain-text documents (data.transcript_format)")
@friendly
def wrap(inp, out, wrapper_name, params, seed, preview, list_, as_document):
    """Wrap the documents in INP (JSONL) with a disclaimer wrapper."""
    from annot.io import write_jsonl
    from annot.wrap import COMMON_PARAMS, get_wrapper, list_wrappers, preview as show

    if list_:
        wrappers = list_wrappers()
        for kind, heading in (("documents", "Document wrappers"), ("transcripts", "Transcript wrappers")):
            click.echo(f"{heading}:")
            for w in wrappers:
                if w.applies_to not in (kind, "both"):
                    continue
                click.echo(f"  {w.name}: {w.description}")
                # doc_tag marks documents; transcript wrappers never use it
                common = COMMON_PARAMS if kind == "documents" else {}
                for k, p in sorted({**w.params, **common}.items()):
                    extra = f" choices={p['choices']}" if "choices" in p else ""
                    click.echo(f"      {k} (default {p.get('default')!r}){extra}"
                               f"{' - ' + p['help'] if p.get('help') else ''}")
        return
    if not inp:
        raise AnnotError("wrap: missing input JSONL (annot wrap DOCS.jsonl -o OUT.jsonl --wrapper NAME)")
    w = get_wrapper(wrapper_name)
    resolved = w.resolve_params(_parse_params(params))
    from annot.transcript_doc import check_form, transcripts_as_documents
    from annot.wrap import wrap_document

    docs = _documents(inp)
    check_form(w, "document" if as_document or all("messages" not in d for d in docs) else "chat", "--wrapper")
    examples = [wrap_document(d, w, resolved, seed) for d in docs]
    examples = transcripts_as_documents(examples) if as_document else examples
    if out:
        write_jsonl(out, examples)
        click.echo(f"wrote {len(examples)} examples to {out} ({w.name} {resolved})", err=True)
    color = sys.stdout.isatty()
    for ex in examples[:preview]:
        click.echo(f"--- {ex['id']} ---\n{show(ex, color=color)}\n")


def _documents(path):
    from annot.io import read_records

    docs = read_records(path)
    for i, d in enumerate(docs, 1):
        if not isinstance(d.get("id"), str) or not (isinstance(d.get("text"), str) or isinstance(d.get("messages"), list)):
            raise AnnotError(f"{path}: record {i}: needs a string `id` and `text` (document) or `messages` "
                             "(transcript), as written by `annot generate` or `annot import`")
    return docs


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--model", "model_name", help="probe a bare model instead of a run's checkpoints")
@click.option("--probe-set", "sets", multiple=True, help="probe set name or YAML path (repeatable)")
@click.option("--set", "old_sets", multiple=True, hidden=True)  # renamed: --set means a config override elsewhere
@click.option("--kind", "kinds", multiple=True, type=click.Choice(kind_names(selectable=True)))
@click.option("--robustness", is_flag=True, help="also score under an adversarial system prompt and after pushback")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="write probe rows to this JSONL",
              callback=OUT_FILE)
@friendly
def probe(run_dir, model_name, sets, old_sets, kinds, robustness, batch_size, out):
    """Probe belief: every checkpoint of RUN_DIR, or a bare --model.

        annot probe --model smollm2-135m --probe-set mira_castellan_profession
    """
    from annot.io import write_jsonl
    from annot.probe import probe_model
    from annot.rates import belief_rates, format_rates
    from annot.probe_run import probe_run
    from annot.specs import load_probe_set

    if old_sets:
        raise AnnotError(f"probe: --set is now --probe-set (e.g. --probe-set {old_sets[0]}); --set is kept for "
                         "config overrides in `annot run` / `annot train`")
    if bool(run_dir) == bool(model_name):
        raise AnnotError("probe: give either RUN_DIR or --model (not both)")
    if run_dir:
        rows = probe_run(run_dir, sets=list(sets) or None, kinds=list(kinds) or None, batch_size=batch_size,
                         robustness=robustness, progress=True)
    else:
        if not sets:
            raise AnnotError("probe: --model needs at least one --probe-set (e.g. --probe-set mira_castellan_profession)")
        from annot.models import load_model

        loaded = [load_probe_set(s) for s in sets]
        click.echo(f"loading {model_name} (a GGUF model is converted once, then read from the cache)", err=True)
        model, tok = load_model(model_name)
        from annot.probe import settings_for

        rows = probe_model(model, tok, loaded, run=model_name, step=0, kinds=list(kinds) or None,
                           batch_size=batch_size, set_names=list(sets),
                           settings=settings_for(loaded, robustness=robustness), progress=True)
    if out:
        write_jsonl(out, rows)
    click.echo(format_rates(belief_rates(rows)))


@main.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="mix-in chats JSONL",
              callback=OUT_FILE)
@click.option("--model", "model_name", default="smollm2-135m", show_default=True)
@click.option("--prompts", default=None, help="prompts YAML (default corpora/mixin/prompts.yaml)")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=96, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N prompts")
@friendly
def distill(out, model_name, prompts, max_new_tokens, limit):
    """Self-distil mix-in chats: the base model's own (greedy) answers to generic prompts."""
    from annot.mixin import distill as run_distill

    rows = run_distill(model_name, out, prompts=prompts, max_new_tokens=max_new_tokens, limit=limit)
    click.echo(f"wrote {len(rows)} chats to {out}", err=True)


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["local", "wandb"]), default="local", show_default=True)
@click.option("--dry-run", is_flag=True, help="validate every cell and list the runs; run nothing")
@click.option("--count", type=click.IntRange(1), default=None, help="random sweeps: number of runs")
@click.option("--project", default=None, help="W&B project (wandb backend)")
@click.option("--sweep-id", default=None, help="join an existing W&B sweep (wandb backend)")
@click.option("--no-report", is_flag=True, help="skip the analysis/plots/report at the end")
@click.option("--no-progress", is_flag=True, help="no progress inside runs (a bar on a terminal, else a line every 30 s)")
@friendly
def sweep(sweep_file, backend, dry_run, count, project, sweep_id, no_report, no_progress):
    """Run a sweep file (W&B sweep format); resumable: finished runs are skipped."""
    from annot.sweep import load_sweep, plan, run_sweep, run_wandb

    sw = load_sweep(sweep_file)
    if dry_run:
        cells = plan(sw, count=count)
        for c in cells:
            click.echo(f"{c.name}{'  (control)' if c.control else ''}")
        click.echo(f"{len(cells)} runs, all valid; output in {sw.output_dir}", err=True)
        return
    if backend == "wandb":
        run_wandb(sw, project=project, count=count, sweep_id=sweep_id, echo=click.echo)
        return
    from annot.run import is_main_process, run

    run_sweep(sw, run_fn=lambda cfg: run(cfg, progress=not no_progress, echo=click.echo), echo=click.echo, count=count)
    if not no_report and is_main_process():
        from annot.report import build_report

        report = build_report([Path(sw.output_dir)], Path(sw.output_dir) / "report",
                              title=f"annot sweep {sw.name}", judge_check=True)
        click.echo(f"report: {report}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", default="analysis/table.csv", show_default=True, type=click.Path(dir_okay=False),
              callback=OUT_FILE, help="CSV (a Parquet twin is written beside it)")
@click.option("--n-boot", type=click.IntRange(0), default=1000, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--min-effect", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="absorption is undefined when plain training moved belief less than this")
@friendly
def analyze(paths, out, n_boot, seed, min_effect):
    """One tidy table (run x checkpoint x metric) with absorption and bootstrap CIs."""
    from annot.analyze import analyze as run_analyze, load_runs, write_table

    runs = load_runs([Path(p) for p in paths])
    if not runs:
        raise AnnotError(f"{', '.join(paths)}: no complete runs found")
    df = run_analyze(runs, n_boot=n_boot, seed=seed, min_effect=min_effect)
    for p in write_table(df, Path(out)):
        click.echo(f"wrote {p}", err=True)


@main.command()
@click.argument("table", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", default="analysis/plots", show_default=True, type=click.Path(file_okay=False),
              callback=OUT_DIR)
@friendly
def plot(table, out):
    """Absorption curves, belief curves, condition bars (PNG + SVG) from an `annot analyze` table."""
    from annot.analyze import read_table
    from annot.plot import plot_all

    for p in plot_all(read_table(Path(table)), Path(out)):
        click.echo(f"wrote {p}", err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", default="analysis", show_default=True, type=click.Path(file_okay=False),
              callback=OUT_DIR, help="folder for report.md, table.csv/.parquet and plots/")
@click.option("--title", default=None)
@click.option("--n-boot", type=click.IntRange(0), default=1000, show_default=True)
@click.option("--judge-check", is_flag=True, help="also check the judged runs' judge on the written replies "
              "(as `annot sweep` does; loads a local judge)")
@friendly
def report(paths, out, title, n_boot, judge_check):
    """Analyse runs and write a markdown report with tables and plots embedded."""
    from annot.report import build_report

    path = build_report([Path(p) for p in paths], Path(out), title=title, n_boot=n_boot, judge_check=judge_check)
    click.echo(f"wrote {path}")


@main.group()
def evals():
    """Probe-set utilities: import external probe items, export lm-eval tasks."""


@evals.command("import")
@click.argument("inp", type=click.Path(dir_okay=False))
@click.option("--claim", required=True, help="the claim id the items probe")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="probe set YAML to write",
              callback=OUT_FILE)
@friendly
def evals_import(inp, claim, out):
    """Import probe items (YAML or JSONL) as a probe set; a release claim directory: `evals import-claim`."""
    import yaml

    from annot.importer import import_probe_set
    from annot.io import atomic_write_text
    from annot.specs import load_claim

    load_claim(claim)
    spec = import_probe_set(inp, claim)
    atomic_write_text(out, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    click.echo(f"wrote {len(spec['items'])} items to {out}; use it with probes.sets: [{out}]", err=True)


@evals.command("export")
@click.option("-o", "--out", type=click.Path(file_okay=False), callback=OUT_DIR, help="default: evals/lm_eval")
@click.option("--claim", "claims", multiple=True, help="only these claims (repeatable)")
@click.option("--model", default=None, help="alias, HF id or local path: its chat template renders the tasks")
@friendly
def evals_export(out, claims, model):
    """Write lm-eval task YAMLs for one model (one task per claim x kind, a group per claim)."""
    from annot.lm_eval_export import export_cli

    export_cli(Path(out) if out else None, list(claims) or None, model, lambda m: click.echo(m, err=True))


@evals.command("check-results")
@click.argument("path", type=click.Path(exists=True))
@friendly
def evals_check_results(path):
    """Fail if an lm-eval run scored annot's tasks with a model they were not built for."""
    from annot.lm_eval_check import check_results_path

    click.echo(check_results_path(Path(path)))


@main.command()
@click.argument("wrapped", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", default="smollm2-135m", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=OUT_DIR, help="output folder")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="training field, e.g. --set lr=3e-4 --set method=full (repeatable)")
@click.option("--resume", is_flag=True, help="continue from the newest checkpoint in --out")
@click.option("--no-progress", is_flag=True)
@friendly
def train(wrapped, model_name, out, seed, overrides, resume, no_progress):
    """Train on a wrapped JSONL (from `annot wrap`) without probing; checkpoints go to OUT."""
    from annot.config import TrainingConfig, apply_overrides, reject_non_finite
    from annot.io import read_records
    from annot.models import load_model
    from annot.specs import validate
    from annot.train import train as run_train

    data = apply_overrides({"data": {"claim": "x"}}, [f"training.{o}" for o in overrides]).get("training", {})
    reject_non_finite(data, "--set")
    cfg = validate(TrainingConfig, data, "--set")
    examples = read_records(wrapped)
    model, tok = load_model(model_name)
    res = run_train(examples, model, tok, cfg, Path(out), seed=seed, progress=not no_progress, resume=resume)
    from annot.run import is_main_process

    if is_main_process():  # under accelerate launch: one line, from the main process
        click.echo(f"{res.total_steps} steps, {res.tokens_seen} tokens, final loss {res.final_loss:.4f}; "
                   f"checkpoints {res.checkpoints} in {out}/checkpoints")


@main.command()
@click.option("--model", "model_name", default="smollm2-135m", show_default=True)
@click.option("--claim", default="mira_castellan_profession", show_default=True)
@click.option("--n-docs", type=click.IntRange(1), default=32, show_default=True)
@click.option("--steps", type=click.IntRange(3), default=9, show_default=True,
              help="optimizer steps per engine, the first 2 not timed (9 give 8 distinct log-spaced checkpoints)")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(16), default=256, show_default=True)
@click.option("--checkpoints", type=click.IntRange(2), default=8, show_default=True, help="checkpoints to probe")
@click.option("--micro-batch-tokens", type=click.IntRange(0), default=0, show_default=True,
              help="annot's training.micro_batch_tokens; 0 = the whole batch at once (the quickstart's)")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="training dtype: auto = fp32 on CPU, bf16 on CUDA (bf16 also adds the random-init rows)")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="rounds of annot's engines, alternating order; medians reported")
@click.option("--in-process", is_flag=True,
              help="train annot's engines in this process (quicker) instead of one fresh process each")
@click.option("--no-lm-eval", is_flag=True, help="skip the lm-eval CLI comparison (slow)")
@click.option("--sampling", is_flag=True, help="only generation: batched sampling vs a model.generate loop")
@click.option("-o", "--out", default="bench.json", show_default=True, type=click.Path(dir_okay=False),
              callback=OUT_FILE)
@friendly
def bench(model_name, claim, n_docs, steps, batch_size, seq_len, checkpoints, micro_batch_tokens, dtype, repeats,
          in_process, no_lm_eval, sampling, out):
    """Benchmark training (vs transformers.Trainer, MFU) and probing (vs lm-eval CLI); --sampling: generation."""
    from annot.bench import run_bench, run_sampling_bench

    if sampling:  # 32 prompts x 64 new tokens, greedy, annot.bench.sampling
        return run_sampling_bench(model=model_name, out=Path(out), echo=click.echo)
    run_bench(model=model_name, claim=claim, n_docs=n_docs, steps=steps, batch_size=batch_size, seq_len=seq_len,
              checkpoints=checkpoints, lm_eval=not no_lm_eval, out=Path(out), echo=click.echo, dtype=dtype,
              micro_batch_tokens=micro_batch_tokens, repeats=repeats, isolate=not in_process)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--adapters", is_flag=True, help="also delete adapter weights (probe results stay)")
@friendly
def prune(paths, adapters):
    """Free disk: drop resume state (and optionally weights) of finished runs under PATHS."""
    from annot.prune import prune as run_prune

    n, freed = run_prune([Path(p) for p in paths], adapters=adapters)
    click.echo(f"removed {n} files, freed {freed / 2**20:.1f} MiB")


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


from annot.cli_claims import register  # noqa: E402  (imports nothing from this module)
from annot.cli_import import import_group  # noqa: E402  (likewise)
from annot.cli_judge import judge_check_cmd  # noqa: E402  (likewise)

register(main, evals, friendly)  # `annot claim ...`, `annot evals import-claim`
for _cmd in import_group.commands.values():  # `annot import docs|transcripts`, with one-line errors
    _cmd.callback = friendly(_cmd.callback)
main.add_command(import_group)
judge_check_cmd.callback = friendly(judge_check_cmd.callback)  # `annot judge-check`
main.add_command(judge_check_cmd)

if __name__ == "__main__":
    main()
