"""Markdown rendering of benchmarks/throughput.py's report (kept apart so the measuring script stays short)."""

from __future__ import annotations

TIMED = {"fwd_bwd": "forward + backward", "adamw": "AdamW step", "": "whole step"}

def render(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Throughput ({'quick' if report['quick'] else 'full'} run)", "",
             f"torch {env['torch']}, {env['cpu']}, {env['cpus']} CPUs, {env['threads']} thread(s); "
             f"load average before {env['loadavg_before']} / after {env['loadavg_after']}"
             f"{' — OTHER LOAD PRESENT: numbers are pessimistic' if env['other_load'] else ''}; "
             f"median of {report['reps']} timed steps after {report['warmup']} warm-up; "
             f"wall time {report['wall_s']:.0f} s.", ""]
    for sec in report["sections"]:
        if "note" in sec:
            lines += [f"**{sec['device']}**: {sec['note']}", ""]
            continue
        mem = "peak CUDA MiB" if sec["device"] == "cuda" else "peak RSS MiB"
        lines += [f"## {sec['device']}", "",
                  "Peak dense GEMM (F.linear, the models' shapes): " + ", ".join(
                      f"{d} {p['gflops']:.0f} GFLOP/s at {'×'.join(map(str, p['shape']))}"
                      for d, p in sec["peaks"].items()) + f"; peak = {sec['peak_gflops']:.0f} GFLOP/s.", "",
                  f"| model | stage | batch | params M | step ms | of which AdamW ms | img/s | GFLOP/img | GFLOP/s "
                  f"| % of peak | {mem} |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['stage']} | {r['batch']} | error: {r['error']} |||||||")
                continue
            memory = r.get("peak_cuda_mib", r["peak_rss_mib"])
            adamw = f"{r['adamw_seconds'] * 1e3:.0f}" if "adamw_seconds" in r else "-"
            lines.append(f"| {r['model']} | {r['stage']} | {r['batch']} | {r['params_m']:.1f} | "
                         f"{r['seconds'] * 1e3:.0f} | {adamw} | {r['images_per_s']:.1f} | {r['gflop_per_image']:.2f} | "
                         f"{r['achieved_gflops']:.1f} | {r['percent_of_peak']:.0f} | {memory:.0f} |")
        if sec["rows"] and sec["device"] == "cpu":
            base = min(r.get("rss_import_mib", 1e9) for r in sec["rows"])
            lines += ["", f"RSS includes the Python + torch process ({base:.0f} MiB right after the imports). "
                      "Sampling = one Heun evaluation with CFG (2 forwards per image); a 75-NFE sample costs "
                      "≈ 37.5 of them."]
        if sec["pairs"]:
            lines += ["", "| model | stage | switch | before | after | timed | before ms | after ms | after/before |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for p in sec["pairs"]:
                ratio = f"{p['ratio']:.2f}×" if "ratio" in p else f"error: {p['error']}"
                ms = [f"{v * 1e3:.1f}" if v else "-" for v in (p["before_s"], p["after_s"])]
                lines.append(f"| {p['model']} | {p['stage']} | {p['switch']} | {p['before']} | {p['after']} | "
                             f"{TIMED[p['timed']]} | {ms[0]} | {ms[1]} | "
                             f"{ratio} |")
        lines.append("")
    return "\n".join(lines)
