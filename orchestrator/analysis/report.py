"""`acla-orch report --task T [-o DIR]`: one self-contained HTML page (index.html) with its PNG figures, for a
person to see at a glance what the searches of one task variant found:

- the front of every trial (proxy PSNR against GMACs), the retrained scores as stars, a line per budget;
- the table of front members and of the retrained models;
- the latest ablation's table, where `ablate` was run for this variant, with each variant's paired gain over
  plain-matched and its 95% interval;
- the fidelity view of every ablation of this variant: each variant's gap against the training steps;
- for the best retrained model: crops of its input, its output and the ground truth side by side;
- a drawing of that network: where its attention modules sit and how many keys each reference layer kept.

It reads MLflow only (never re-tags a run), and writes into a new folder through a temporary one, so a failed
report leaves nothing half-written.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from orchestrator.runtime.errors import UsageError


def collect(client, experiment_id: str) -> dict:
    """The variant's trials, retrains, searches and latest ablation, from MLflow."""
    from orchestrator.tracking.runs import finished_trials
    trials = [{"run_id": r.info.run_id, "psnr": r.data.metrics["psnr"], "macs": r.data.metrics["macs"],
               "pareto": r.data.tags.get("pareto") == "true", "net": r.data.params.get("net", ""),
               "positions": r.data.params.get("positions", ""), "keys": r.data.params.get("keys", ""),
               "retrained_psnr": r.data.metrics.get("retrained_psnr"),
               **{k: r.data.metrics.get(k) for k in SCORES}}
              for r in finished_trials(client, experiment_id) if {"psnr", "macs"} <= set(r.data.metrics)]
    retrains = [{"run_id": r.info.run_id, "trial_run_id": r.data.tags.get("trial_run_id"),
                 "psnr": r.data.metrics.get("psnr"), "budget_macs": float(r.data.tags.get("budget_macs", "nan")),
                 **{k: r.data.metrics.get(k) for k in SCORES}}
                for r in client.search_runs([experiment_id], "tags.acla_kind = 'retrain' and attributes.status = 'FINISHED'")]
    budgets = sorted({float(r.data.tags["budget_macs"]) for r in client.search_runs([experiment_id], "tags.acla_kind = 'search'")
                      if "budget_macs" in r.data.tags})
    ablations = client.search_runs([experiment_id], "tags.acla_kind = 'ablation' and attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=MAX_ABLATIONS)
    from orchestrator.search.width import width_points
    return {"trials": trials, "retrains": [r for r in retrains if r["psnr"] is not None], "budgets": budgets,
            "width": width_points(client, experiment_id),
            "ablation_run": ablations[0].info.run_id if ablations else None,
            "ablation_runs": [run.info.run_id for run in ablations]}


SCORES = ("psnr_y", "psnr_rgb", "input_psnr_y", "input_psnr_rgb")  # both channels, the input's beside them
MAX_ABLATIONS = 24  # the fidelity view reads at most this many of the latest ablations


def front_figure(found: dict, path: Path, title: str) -> None:
    from orchestrator.tracking.pareto import plot_front, point_label
    trials = found["trials"]
    by_trial = {t["run_id"]: t for t in trials}
    retrained = [(r["psnr"], by_trial[r["trial_run_id"]]["macs"]) for r in found["retrains"] if r["trial_run_id"] in by_trial]
    plot_front(str(path), points=[(t["psnr"], t["macs"]) for t in trials], on_front=[t["pareto"] for t in trials],
               budget_macs=None, budgets=found["budgets"], title=title, retrained=retrained,
               labels=[point_label(t) for t in trials], width=[(w["psnr"], w["macs"]) for w in found["width"]])


def width_section(width: list[dict], trials: list[dict]) -> tuple[str, str]:
    """Each budget's width point against the best searched trial within that budget, and a sentence: the front
    that never beats its width line says so."""
    from orchestrator.search.width import gain_over_width
    rows, beaten = [], 0
    for point in width:
        gain = gain_over_width(point, trials)
        beaten += bool(gain["beats"])
        best = next((t for t in trials if t["run_id"] == gain["best"]), None)
        interval = gain.get("interval")
        rows.append([f"{point['budget_macs'] / 1e9:g}", point.get("net", ""), f"{point['macs'] / 1e9:.2f}",
                     f"{point['psnr']:.3f}", "" if best is None else f"{best['psnr']:.3f}",
                     "" if gain["gain"] is None else f"{gain['gain']:+.3f}",
                     f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}] ({interval['seeds']} seeds)"
                     if interval else "one seed (--width-seeds N gives it)"])
    if beaten == 0:
        verdict = f"The front never beats its width line: at none of {len(width)} budgets is a searched net above it."
    else:
        seeded = sum(1 for point in width if point.get("gain_low") is not None)
        bases = ([f"the mean over paired seeds at {seeded}"] if seeded else []) + (
            [f"one seed at {len(width) - seeded}"] if seeded < len(width) else [])
        verdict = f"A searched net is above the width line at {beaten} of {len(width)} budgets ({', '.join(bases)})."
    headers = ["budget (GMACs)", "plain net", "GMACs", "width PSNR", "best searched within budget", "gain (dB)",
               "gain over paired seeds [95%]"]
    return table(headers, rows), verdict


def crops_figure(model, task, path: Path, *, seed: int = 0) -> None:
    """Input, output and ground truth of the embedded validation photo, side by side at the same place."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from workers.data import embedded_sets, to_tensor
    from workers.restore import restore_array
    from workers.train import to_uint8_image
    name, image = embedded_sets()[1].images()[0]
    target = task.prepare_target(image)
    degraded = task.degrade(target, np.random.default_rng([seed, 0]))
    output = restore_array(model, degraded, scale=task.scale, tile=512)
    shown = degraded if degraded.dtype == np.uint8 else to_uint8_image(to_tensor(degraded))
    if shown.shape[:2] != target.shape[:2]:  # sr: the LR input, enlarged by pixel repetition to the same place
        shown = shown.repeat(task.scale, 0).repeat(task.scale, 1)
    size = min(128, *target.shape[:2])
    top, left = (target.shape[0] - size) // 2, (target.shape[1] - size) // 2
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.3), dpi=110)
    for axis, (label, picture) in zip(axes, (("input", shown), ("output", output), ("ground truth", target))):
        axis.imshow(picture[top:top + size, left:left + size], cmap="gray" if picture.ndim == 2 else None,
                    vmin=0, vmax=255, interpolation="nearest")
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{task.label}: {name}, centre {size}x{size} crop", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}} img{{max-width:100%}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
th{{background:#f3f3f3}}</style></head>
<body><h1>{title}</h1>
<p>{summary}</p>
{sections}
<script>
// Marks the page once every figure has loaded (a browser check reads it).
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.figuresLoaded = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.dataset.figures = images.length;
}});
</script></body></html>
"""


def ranking_note(task) -> str:
    """What the front ranks by, and why."""
    if task.in_channels == 3 and task.headline_metric == "psnr_y":
        return ("The front ranks by PSNR on Y (luma), the field's convention for colour artifact reduction and "
                "super-resolution, so that figures compare with published ones; RGB is shown beside it, with the "
                "input's, because a model that gains in Y can still lose colour (a retrained model worse than its "
                "input in either channel does not take the budget's alias).")
    if task.in_channels == 3:
        return "The front ranks by RGB PSNR, the field's convention for colour denoising and demosaicing."
    return "The front ranks by PSNR on the grey image."


def front_section(front: list[dict], retrains: list[dict], *, color: bool) -> str:
    """The front's trials with their proxy and retrained scores: Y (and RGB for a colour task), the input's
    beside each."""
    by_trial = {r["trial_run_id"]: r for r in retrains}
    channels = ("y", "rgb") if color else ("y",)
    headers = ["MLflow run", "net", "modules after blocks", "keys", "GMACs"]
    for channel in channels:
        name = channel.upper()
        headers += [f"proxy PSNR-{name}", f"retrained PSNR-{name}", f"input {name}"]

    def cell(value) -> str:
        return "" if value is None else f"{value:.3f}"
    rows = []
    for t in front:
        retrained = by_trial.get(t["run_id"], {})
        row = [t["run_id"], t["net"], t["positions"], t["keys"], f"{t['macs'] / 1e9:.2f}"]
        for channel in channels:
            source = t if t.get(f"input_psnr_{channel}") is not None else retrained  # the same validation images
            row += [cell(t.get(f"psnr_{channel}")), cell(retrained.get(f"psnr_{channel}")),
                    cell(source.get(f"input_psnr_{channel}"))]
        rows.append(row)
    return table(headers, rows)


def build_report(client, experiment, task, tracking_uri: str, folder: Path) -> dict:
    """The page and its figures in `folder`; returns what it shows."""
    from search_space.budget import short_budget

    from orchestrator.tracking.drawing import draw_network
    found = collect(client, experiment.experiment_id)
    if not found["trials"]:
        raise UsageError(f"experiment {experiment.name} has no finished trial; run a search first")
    sections = []
    front_figure(found, folder / "front.png", f"{experiment.name}: PSNR vs MACs")
    sections.append('<h2>Pareto front</h2><img src="front.png" alt="front">')
    front = sorted((t for t in found["trials"] if t["pareto"]), key=lambda t: t["macs"])
    sections.append(f"<p>{html.escape(ranking_note(task))}</p>")
    sections.append(front_section(front, found["retrains"], color=task.in_channels == 3))
    if found["width"]:
        rows, verdict = width_section(found["width"], found["trials"])
        sections.append(f"<h2>Width line: does search beat width?</h2><p>{html.escape(verdict)} Each budget's plain "
                        f"backbone that best fills it, trained as the trials are (proxy width, their steps and "
                        f"seed); the gain is one paired difference, <code>acla-orch ablate --seeds 3</code> gives "
                        f"its interval.</p>")
        sections.append(rows)
    shown = {"trials": len(found["trials"]), "front": len(front), "figures": ["front.png"],
             "width": len(found["width"])}
    if found["ablation_run"]:
        import mlflow

        from orchestrator.analysis.fidelity import fidelity_rows, gap_text, plot
        reports = [json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="ablation/ablation.json", tracking_uri=tracking_uri)).read_text())
            for run_id in found["ablation_runs"]]
        report = reports[0]
        sections.append(f"<h2>Ablation ({html.escape(str(report['eval_data']))}, {report['seeds']} paired seeds, "
                        f"{report['steps']} steps)</h2>")
        sections.append(table(["variant", "positions", "GMACs", "PSNR-Y (dB)", "spread", "SSIM-Y",
                               "vs plain-matched, Y [95%]", "PSNR-RGB (dB)", "vs plain-matched, RGB [95%]"],
                              [[r["name"], "random" if r["name"] == "acla-random" else r["genotype"]["positions"],
                                f"{r['macs'] / 1e9:.2f}", f"{r['psnr_y']:.3f}", f"{r['psnr_y_spread']:.3f}",
                                f"{r['ssim_y']:.4f}", gap_text(r.get("gap_y")),
                                f"{r['psnr_rgb']:.3f}" if "psnr_rgb" in r else "-", gap_text(r.get("gap_rgb"))]
                               for r in report["variants"]]))
        shown["ablation"] = found["ablation_run"]
        rows = [r for r in fidelity_rows(reports) if r["gap"]]
        if rows:
            plot(reports, folder / "fidelity.png")
            sections.append(f"<h2>Fidelity: gap over plain-matched against training steps ({len(reports)} "
                            f"ablations)</h2><img src=\"fidelity.png\" alt=\"fidelity\">")
            sections.append(table(["steps", "seeds", "kind", "variant", f"gap, {rows[0]['metric']} [95%]"],
                                  [[r["steps"], r["seeds"], r["attention"], r["variant"], gap_text(r["gap"])]
                                   for r in rows]))
            shown["figures"].append("fidelity.png")
    if found["retrains"]:
        from workers.checkpoint import model_from_checkpoint

        from orchestrator.tracking.models import resolve_model
        best = max(found["retrains"], key=lambda r: r["psnr"])
        resolved = resolve_model(best["run_id"], tracking_uri=tracking_uri, workdir=str(folder / ".model"))
        model, genotype, model_task, _ = model_from_checkpoint(resolved.checkpoint)
        shutil.rmtree(folder / ".model", ignore_errors=True)
        crops_figure(model, model_task, folder / "crops.png")
        draw_network(genotype, str(folder / "network.png"))
        sections.append(f"<h2>Best retrained model ({best['psnr']:.3f} dB, run {best['run_id']})</h2>"
                        '<img src="crops.png" alt="crops"><img src="network.png" alt="network">')
        shown["figures"] += ["crops.png", "network.png"]
        shown["best_run_id"] = best["run_id"]
    budgets = ", ".join(short_budget(b) for b in found["budgets"]) or "none recorded"
    summary = (f"{len(found['trials'])} finished trials, {len(front)} on the front, {len(found['retrains'])} "
               f"retrained; budgets {budgets}MACs. Task {task.label}; tracking {html.escape(tracking_uri)}.")
    (folder / "index.html").write_text(PAGE.format(title=html.escape(f"acla-orch: {experiment.name}"),
                                                   summary=summary, sections="\n".join(sections)))
    return shown

