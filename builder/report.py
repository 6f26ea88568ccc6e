"""Verification reports for people: terminal text, Markdown for a pull request, history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from builder.svg import Series, chart
from builder.verdicts import Check, OutputCheck, Verification

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """A one-line plot of durations (or anything): oldest left."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BARS[min(7, int((v - low) / span * 7 + 0.5))] for v in values)


def _check_line(c: Check) -> str:
    mark = "ok" if c.ok else "DRIFT"
    if isinstance(c, OutputCheck):
        line = f"{mark:<6} output {c.name} (seed {c.seed}): {c.detail}"
        for t in (c.tensors or {}).get("tensors", []):
            if not t.get("equal", False):
                line += (f"\n         {t['name']}: {t.get('differ', '?')} of "
                         f"{t.get('elements', '?')} elements differ, max abs "
                         f"{t.get('max_abs', '?'):.3g}, max rel {t.get('max_rel', '?'):.3g}"
                         if "max_abs" in t else f"\n         {t['name']}: {t}")
        return line
    return (f"{mark:<6} metric {c.name}: mean {c.mean:.6g} vs baseline "
            f"{c.baseline_mean:.6g} (n={c.n} vs {c.n_baseline}; spread "
            f"{c.spread:.3g} vs {c.baseline_spread:.3g}); |difference| "
            f"{c.difference:.3g} <= {c.threshold:.3g}? {'yes' if c.ok else 'no'}")


def _inputs_only(report: Verification) -> str:
    if report.causes and all(c.ok for c in report.checks):
        return ("the results still match the baseline, but the recipe's inputs changed; if "
                "the change is intended, record it with `repro baseline set`")
    return ""


def text(report: Verification) -> str:
    lines = [f"{report.verdict}: {report.recipe} ({report.standard}) against "
             f"{report.baseline}"]
    if report.hardware:
        lines.append(f"hardware class differs: {report.hardware}")
    lines += [f"cause  {c.kind}: {c.detail}" for c in report.causes]
    lines += [_check_line(c) for c in report.checks]
    if _inputs_only(report):
        lines.append(_inputs_only(report))
    lines += [f"declared nondeterminism: {n['source']} ({n['reason']})"
              for n in report.nondeterminism]
    lines += [f"note: {note}" for note in report.notes]
    run = f"{report.duration:.2f}s (baseline {report.baseline_duration:.2f}s)"
    if report.timings:
        lines.append(f"time to reproduce {sum(report.timings.values()):.2f}s: "
                     f"{phases(report)}; the run itself {run}")
    else:
        lines.append(f"time to reproduce {run}")
    if report.over_target:
        lines.append(f"warning: {over_target(report)}")
    return "\n".join(lines)


def over_target(report: Verification) -> str:
    return (f"time to reproduce {report.total:.2f}s is over the recipe's target "
            f"{report.target:g}s ([reproducibility] time-to-reproduce)")


def phases(report: Verification) -> str:
    """Wall time by phase: `fetch 0.52s, environment 3.10s, training 1.02s, …`."""
    order = ("fetch", "environment", "training", "comparison")
    ranked = sorted(report.timings.items(),
                    key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return ", ".join(f"{k} {v:.2f}s" for k, v in ranked)


def history_svg(recipe: str, history: Sequence[Verification],
                metrics: Sequence[Mapping[str, float]]) -> str:
    """Verdicts, times to reproduce and the re-runs' metrics (`metrics[i]` for
    `history[i]`), one panel each, oldest left."""
    labels = [h.started[:16].replace("T", " ") for h in history]
    series = [Series("verdict", [1.0] * len(history),
                     marks=["ok" if h.reproduced else "bad" for h in history]),
              Series("time to reproduce", [h.total for h in history], "s")]
    for name in sorted({k for m in metrics for k in m}):
        series.append(Series(f"metric {name}", [m.get(name) for m in metrics]))
    return chart(f"{recipe}: {len(history)} verifications", labels, series)


def markdown(report: Verification, history: Sequence[Verification],
             plot: str | None = None) -> str:
    """A report a reviewer reads in a pull request; `plot` names the history chart
    (`history_svg`) beside it, embedded under the history."""
    icon = "✅" if report.reproduced else "❌"
    out = [f"# {icon} `{report.recipe}`: **{report.verdict}**", "",
           f"Standard: `{report.standard}` · baseline: `{report.baseline}` · "
           f"verified {report.started}", ""]
    out += ["## What changed", ""]
    if report.causes:
        out += ["| identity | change |", "|---|---|"]
        out += [f"| {c.kind} | {c.detail} |" for c in report.causes]
    else:
        out.append("No identity changed: same environment, code, data, params and seed.")
    out += ["", "## Comparison", "", "```", *(_check_line(c) for c in report.checks), "```",
            ""]
    if _inputs_only(report):
        out += [f"Note: {_inputs_only(report)}.", ""]
    out += ["## Declared nondeterminism", ""]
    out += [f"- **{n['source']}**: {n['reason']}"
            + (f" (metric `{n['metric']}`)" if n["metric"] else "")
            + (f", abs ≤ {n['abs']}" if n["abs"] is not None else "")
            + (f", rel ≤ {n['rel']}" if n["rel"] is not None else "")
            for n in report.nondeterminism] or ["None declared."]
    if report.notes:
        out += ["", "## Not covered by any identity", "", *(f"- {n}" for n in report.notes)]
    out += ["", "## Time to reproduce", "",
            f"{report.total:.2f}s"
            + (f" ({phases(report)})" if report.timings else "")
            + f"; the run itself {report.duration:.2f}s, baseline "
              f"{report.baseline_duration:.2f}s"
            + (f"; target {report.target:g}s" if report.target is not None else ""), ""]
    if report.over_target:
        out += [f"⚠️ {over_target(report)}.", ""]
    if history:
        out += [f"History ({len(history)} verifications, oldest first): "
                f"`{sparkline([h.total for h in history])}`", "",
                "| when | verdict | seconds |", "|---|---|---|"]
        out += [f"| {h.started} | {h.verdict} | {h.total:.2f} |"
                for h in history[-10:]]
    if plot:
        out += ["", f"![verdicts, times to reproduce and metrics over time]({plot})"]
    return "\n".join(out) + "\n"
