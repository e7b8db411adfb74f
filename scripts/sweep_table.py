#!/usr/bin/env python3
"""One Markdown table of several `longtail run` directories that differ in label budget
(scripts/budget_sweep.sh): per budget and arm, the AUC gain over the baseline and over the
random control on the time-split and hard tests, with the 95 % paired-bootstrap intervals the
report computed, and the share of the whole-stream upper bound's gain each arm closes.

Usage: python3 scripts/sweep_table.py RUN_DIR [RUN_DIR ...]   (standard library only)
"""
import json
import sys


def iv(x):
    if not x:
        return ""
    return f"{x['estimate']:+.3f} [{x['lower']:+.3f}, {x['upper']:+.3f}]"


def main():
    runs = sys.argv[1:]
    if not runs:
        sys.exit(__doc__)
    results = []
    for run in runs:
        try:
            with open(f"{run}/report/results.json", encoding="utf-8") as f:
                results.append(json.load(f))
        except OSError as e:
            sys.exit(f"error: {run} has no finished report ({e}): run `longtail run` there first")
    upper = {}
    for r in results:
        for a in r["arms"]:
            if a["arm"] == "oracle_all":
                upper = {"time": (a.get("auc_time_gain") or {}).get("mean"),
                         "hard": a["auc_hard_gain"]["mean"]}
    seeds = sorted({x["seed"] for r in results for x in r["runs"]})
    print(f"Budget sweep over {len(results)} runs (seeds {seeds}); Δ = AUC gain with its 95 % "
          "paired-bootstrap interval (test lines and seeds); gap closed = mean gain / the "
          "whole-stream upper bound's gain (blank where that gain is not positive), "
          "that bound taken from the run that has it.\n")
    print("| budget | arm | Δ time vs baseline | Δ time vs random | gap closed (time) "
          "| Δ hard vs baseline | Δ hard vs random | gap closed (hard) | Δ AUC easy |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    n_seeds = [len({x["seed"] for x in r["runs"]}) for r in results]
    unequal = len(set(n_seeds)) > 1  # runs of unequal seeds: say which is which
    for r, n in zip(results, n_seeds):
        budget = r["config"]["select"]["budget"]
        if unequal:
            budget = f"{budget} ({n} seeds)"
        base = next(a for a in r["arms"] if a["arm"] == "baseline")
        for a in r["arms"]:
            if a["arm"] in ("baseline", "oracle_all"):
                continue
            ci = a.get("gain_ci") or {}
            gain_t = (a.get("auc_time_gain") or {}).get("mean")
            closed = (f"{100 * gain_t / upper['time']:.0f} %"
                      if gain_t is not None and (upper.get("time") or 0) > 0 else "")
            gain_h = a["auc_hard_gain"]["mean"]
            closed_h = f"{100 * gain_h / upper['hard']:.0f} %" if (upper.get("hard") or 0) > 0 else ""
            name = a["arm"] + (" (LLM)" if a.get("labeler") == "llm" else "")
            easy = a["auc_easy"]["mean"] - base["auc_easy"]["mean"]
            rows.append((budget, name, iv(ci.get("time_vs_baseline")), iv(ci.get("time_vs_random")),
                         closed, iv(ci.get("hard_vs_baseline")), iv(ci.get("hard_vs_random")),
                         closed_h, f"{easy:+.4f}"))
    for row in sorted(rows, key=lambda x: (int(str(x[0]).split()[0]), x[1])):
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
