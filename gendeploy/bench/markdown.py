"""``bench.md``: the report people read, rendered from the report dictionary alone."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines + [""]


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def _met(value: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not judged"}[value]


def summary_table(model: dict[str, Any]) -> list[str]:
    """Runner x batch: images/s and the speed-up over eager in the same run."""
    batches = sorted({c["batch"] for c in model["cells"]})
    runners = list(dict.fromkeys(c["runner"] for c in model["cells"]))
    by = {(c["runner"], c["batch"]): c for c in model["cells"]}
    rows = []
    for r in runners:
        row: list[Any] = [f"`{r}`", by.get((r, batches[0]), {}).get("precision", "")]
        for b in batches:
            c = by.get((r, b))
            row.append(f"{_fmt(c['images_per_s'])} (x{c['speedup']:.2f})" if c else "")
        rows.append(row)
    return _table(["runner", "precision", *[f"batch {b}: img/s (x eager)" for b in batches]], rows)


def machine_lines(report: dict[str, Any]) -> list[str]:
    m, busy = report["machine"], report.get("busy", {})
    cpu = m["cpu"]
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    share = busy.get("other_processes_cpu_share")
    lines = [
        f"- CPU: {cpu['model']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores,"
        f" {m['memory_gib']} GiB; flags: {' '.join(cpu['flags'])}",
        f"- GPU: {gpus}",
        f"- Threads: {report['threads']} (torch intra-op, ONNX Runtime intra-op, OpenVINO,"
        " Triton's ONNX Runtime), pinned for the whole run",
        f"- Load average at start {m['load_average_1m_5m_15m']}, at end "
        f"{busy.get('load_average_end', '?')}; CPU time taken by other processes during the run: "
        + (f"{share:.0%} of the machine" if share is not None else "not recorded")
        + (" (**the machine was shared: absolute figures are disturbed**)" if (share or 0) > 0.1 else ""),
        f"- Versions: {versions}",
    ]
    peaks = report.get("peaks", {})
    if peaks:
        lines.append(
            "- Matmul peak measured in this run (2048^2, best of start/end): "
            + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s" for k, v in peaks.items())
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    rule = report["rule"]
    out = [
        f"# gendeploy bench: suite `{report['suite']}`",
        "",
        f"Run {report['started']} in {report.get('duration_s', 0):.0f} s with `{report['command']}`.",
        f"Each cell: warm-up, then windows of {rule['window_s']} s until {rule['stable_windows']}"
        f" consecutive windows agree within {rule['tolerance']:.0%} (cap {rule['max_windows']}"
        " windows), runners timed in alternation. Speed-ups and max |diff| are against eager FP32"
        " from the same run.",
        "",
        "## Machine",
        "",
        *machine_lines(report),
        "",
    ]
    if report.get("goals"):
        out += ["## Goals (DCGAN-64, ratios from this run)", ""]
        rows = [
            [g["goal"], g["target"], "" if g["measured"] is None else g["measured"], g["by"],
             _met(g["met"]), g["detail"]]
            for g in report["goals"]
        ]  # fmt: skip
        out += _table(["goal", "target", "measured", "by", "result", "how"], rows)
    for model in report["models"]:
        out += model_section(model, report.get("runners", {}))
    return "\n".join(out).rstrip() + "\n"


def model_section(model: dict[str, Any], runners: dict[str, Any]) -> list[str]:
    name = model["name"]
    cfg = model["config"]
    out = [
        f"## `{name}`",
        "",
        f"{cfg['arch']} {cfg['image_channels']}x{cfg['image_size']}x{cfg['image_size']}, width"
        f" {cfg['width']}, {cfg['num_classes']} classes; weights: {model['source']};"
        f" {model['flops_per_image'] / 1e6:.1f} MFLOP per image (2 per multiply-add).",
        "",
        *summary_table(model),
        f"![throughput]({name}_throughput.png) ![latency]({name}_latency.png)",
        "",
        "<details><summary>Every cell</summary>",
        "",
    ]
    header = ["runner", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "GFLOP/s",
              "% FP32 peak", "x eager", "max abs diff", "peak RSS MiB", "stable (windows)"]  # fmt: skip
    rows = [
        [c["runner"], c["batch"], _fmt(c["p50_ms"], 3), _fmt(c["p90_ms"], 3), _fmt(c["p99_ms"], 3),
         _fmt(c["images_per_s"]), _fmt(c["gflops"]), f"{c['peak_fraction']:.0%}",
         f"{c['speedup']:.2f}", f"{c['max_abs_diff']:.2g}", _fmt(c["peak_rss_mib"], 0),
         f"{'yes' if c['stable'] else 'NO'} ({c['windows']})"]
        for c in model["cells"]
    ]  # fmt: skip
    out += _table(header, rows) + ["</details>", ""]
    if model.get("skipped"):
        out += ["Skipped here (with the reason):", ""]
        out += _table(["runner", "reason"], [[f"`{s['runner']}`", s["reason"]] for s in model["skipped"]])
    out += served_section(model)
    out += profile_section(model)
    return out


def served_section(model: dict[str, Any]) -> list[str]:
    served = model.get("served")
    if not served:
        return []
    out = [f"### Served through Triton: {served['model']}", ""]
    if served.get("skipped"):
        return [*out, f"Not measured: {served['skipped']}", ""]
    out.append(
        f"Triton {served.get('triton_version', '?')}, load from {served['tool']}"
        + (f" ({served['perf_analyzer_version']})" if served.get("perf_analyzer_version") else "")
        + f"; batch 1 per request. Served output vs eager: max abs diff "
        + ", ".join(f"{k} {v:.2g}" for k, v in served.get("max_abs_diff", {}).items())
        + "."
    )
    out.append("")
    rows = [
        [r["protocol"], r["concurrency"], _fmt(r["images_per_s"]), _fmt(r["p50_ms"], 3),
         _fmt(r["p90_ms"], 3), _fmt(r["p99_ms"], 3), "yes" if r["stable"] else "NO", r["tool"]]
        for r in served["results"]
    ]  # fmt: skip
    out += _table(["protocol", "concurrency", "img/s", "p50 ms", "p90 ms", "p99 ms", "stable",
                   "measured by"], rows)  # fmt: skip
    out += [f"![served]({model['name']}_served.png)", ""]
    out += [f"- {e}" for e in served.get("errors", [])]
    return out


def profile_section(model: dict[str, Any]) -> list[str]:
    profiles = model.get("profile") or []
    if not profiles:
        return []
    out = ["### Where the time goes", ""]
    rows = [
        [p["runner"], p["batch"], _fmt(p["ms_per_call"], 2),
         ", ".join(f"{o['op']} {o['share']:.0%}" for o in p["ops"][:4])]
        for p in profiles
    ]  # fmt: skip
    return out + _table(["runner", "batch", "profiled ms/call", "top ops (share of op time)"], rows)
