"""The readable table `annot bench` prints, from the figures it writes to JSON."""

from __future__ import annotations

from annot.bench.settings import KINDS, WARMUP_STEPS


def jsonable(obj):
    """Dict keys as strings (steps are ints), NaN as None, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def format_bench(r: dict) -> str:
    """The readable table printed by run_bench (from the JSON figures)."""
    p, m, fpt = r["params"], r["machine"], r["flops_per_token"]
    lines = [f"annot bench: {p['model']}, {p['n_docs']} docs of {p['claim']}, {p['steps']} steps x "
             f"{p['batch_size']} x {p['seq_len']} tokens, LoRA r={p['training']['lora_r']}",
             f"machine: {m['device_name']} ({m['device']}, {m['cpus_usable']} CPUs, {m['torch_threads']} torch "
             f"threads), torch {m['torch']}, transformers {m['transformers']}",
             f"matmul peak {r['peak']['flops'] / 1e9:.1f} GFLOP/s ({r['peak']['dtype']}); training FLOPs/token "
             f"{fpt['per_token'] / 1e6:.2f} M = 4*{fpt['n_frozen']} + 6*{fpt['n_trainable']} + {fpt['attention']}",
             "",
             f"{f'training (steps {WARMUP_STEPS + 1}..N)':<28}{'tokens/s':>10}{'MFU':>9}{'vs best':>9}{'matmul now':>12}"
             f"{'peak RSS':>11}"]
    sections = [("pretrained weights", r["train"])] + ([("random init, same config", r["random_init_bf16"])]
                                                       if r.get("random_init_bf16") else [])
    ind, w = ("    ", 24) if len(sections) > 1 else ("  ", 26)
    micro = p.get("micro_batch_tokens")
    for name, t in sections:
        if len(sections) > 1:
            lines.append(f"  {name} ({p.get('train_dtype', r['peak']['dtype'])})")
        for label, key in ((f"annot, micro {micro}" if micro else "annot, whole batch", "annot"),
                           ("annot, whole batch", "annot_whole_batch"), ("annot before #22", "annot_before"),
                           ("transformers.Trainer", "trainer")):
            if key not in t:
                continue
            x = t[key]
            rss = x.get("peak_rss_mib")
            lines.append(f"{ind}{label:<{w}}{x['tokens_per_s']:>10.1f}{_pct(x['mfu']):>9}"
                         f"{_pct(x['mfu_vs_best_peak']):>9}{x['local_peak_mean'] / 1e9:>9.1f} GF"
                         + (f"{rss:>7.0f} MiB" if rss is not None else "") + (f"  {x['malloc']}" if x.get("malloc") else ""))
        lines.append(f"{ind}{'annot / Trainer':<{w}}{t['speed_ratio_raw']:>9.2f}x   (rescaled to one matmul rate "
                     f"{t['speed_ratio']:.2f}x; Trainer batches {_pct(t['trainer']['padding_share'])} padding)")
        if "vs_before" in t:
            lines.append(f"{ind}{'annot / before #22':<{w}}{t['vs_before']['tokens_per_s']:>9.2f}x   (rescaled "
                         f"{t['vs_before']['tokens_per_s_normalised']:.2f}x; before: whole batch, full logits, "
                         + ("the MLP's own forward, glibc malloc)" if p.get("isolate") else "the MLP's own forward)"))
            rss_now, rss_before = t["annot"].get("peak_rss_mib"), t["annot_before"].get("peak_rss_mib")
            if rss_now and rss_before:
                lines.append(f"{ind}{'  peak RSS':<{w}}{rss_now / rss_before:>9.2f}x   ({rss_now:.0f} vs "
                             f"{rss_before:.0f} MiB, {rss_now / 1024:.2f} vs {rss_before / 1024:.2f} GiB)")
            per_round = t["vs_before"].get("per_round") or []
            if len(per_round) > 1:
                lines.append(f"{ind}{'  each round':<{w}}" + " ".join(f"{x:.2f}x" for x in per_round)
                             + f"   (medians of {len(per_round)} rounds above; peak RSS: the highest round)")
    lines.append("  MFU: against the mean matmul rate sampled around the steps; vs best: against the peak above")
    pr = r["probe"]
    lines += ["", f"{'probing ' + str(pr['n_checkpoints']) + ' checkpoints':<28}{'seconds':>10}",
              f"  {'annot engine':<26}{pr['annot']['seconds']:>10.1f}"]
    if pr["lm_eval"] is not None:
        lines += [f"  {'lm-eval CLI':<26}{pr['lm_eval']['seconds']:>10.1f}",
                  f"  {'speed-up':<26}{pr['speedup']:>9.1f}x   equal: {str(pr['equal']).lower()}"]
        lines += [f"  mismatch step {x['step']} {x['kind']}: annot {x['annot']} vs lm-eval {x['lm_eval']}"
                  for x in pr["mismatches"]]
    lines += ["", f"{'step':>6}" + "".join(f"{k:>10}" for k in KINDS) + "   (annot accuracy" +
              (" = lm-eval acc)" if pr["lm_eval"] is not None else ")")]
    by_step: dict = {}
    for row in pr["accuracy"]:
        by_step.setdefault(row["step"], {})[row["kind"]] = row["annot"]
    for step, accs in by_step.items():
        lines.append(f"{step:>6}" + "".join(f"{accs.get(k, float('nan')):>10.3f}" for k in KINDS))
    mem = r["memory"]
    line = f"memory: peak RSS {mem['peak_rss_mib']:.0f} MiB"
    after_annot = mem.get("peak_rss_mib_after", {}).get("pretrained_annot_train")
    if after_annot is not None:
        line += f" (after annot's training {after_annot:.0f} MiB, before the Trainer's)"
    if mem.get("lm_eval_peak_rss_mib") is not None:
        line += f", lm-eval run {mem['lm_eval_peak_rss_mib']:.0f} MiB"
    if mem.get("cuda_max_allocated_mib"):
        line += ", CUDA max allocated " + ", ".join(f"{k} {v:.0f} MiB" for k, v in
                                                     mem["cuda_max_allocated_mib"].items())
    engine = {k: v for k, v in (mem.get("peak_rss_mib_engine") or {}).items() if v is not None}
    if engine:
        where = "annot's engines: whole process of their own" if p.get("isolate") else "each in its own window"
        line += f"\npeak RSS per engine ({where}): " + ", ".join(
            f"{k} {v:.0f} MiB" for k, v in engine.items())
    lines += ["", line]
    return "\n".join(lines)
