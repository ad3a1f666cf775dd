"""`acla-orch search` end to end on a real local Ray and real MLflow (sqlite, then a real `mlflow server`)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.procs import kill_mentioning, mentioning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 2_000_000_000


def acla(*args, home, extra_env=None, timeout=600):
    env = {**os.environ, "ACLA_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT, **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=home)
    if os.environ.get("ACLA_TEST_TIMING"):  # where the suite's time goes, command by command
        with open(os.environ["ACLA_TEST_TIMING"], "a") as log:
            log.write(f"{time.time() - started:7.2f} {os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]} "
                      f"{' '.join(args[:3])}\n")
    return done


def independent_front(points):
    """Sort by cost, then keep each point that beats every cheaper one (ties in cost: the best PSNR only)."""
    best, front = float("-inf"), set()
    for run_id, psnr, macs in sorted(points, key=lambda p: (p[2], -p[1])):
        if psnr > best:
            front.add(run_id)
            best = psnr
    return front


def check_search(summary, tracking_uri):
    from mlflow.tracking import MlflowClient
    import mlflow
    from search_space.genotype import Genotype
    from search_space.cost import genotype_macs
    import torch
    from search_space.ops import attention_backend
    from search_space.precision import resolve_precision
    from workers.checkpoint import model_from_checkpoint

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("acla-car-q10")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {"budget_macs", "task", "profile", "git_commit", "command_line"} <= set(parent.data.tags)
    # --precision auto, resolved once for this machine: bf16 on a CPU with AVX512-BF16 or AMX, fp32 elsewhere
    precision = resolve_precision("auto", "cpu")
    assert summary["precision"] == parent.data.params["precision"] == precision
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.acla_kind = 'trial'")
    assert len(children) == len(summary["trials"]) == 2
    for child in children:
        genotype_path = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="genotype.json",
                                                            tracking_uri=tracking_uri)
        genotype = Genotype.from_json(open(genotype_path).read())
        assert genotype_macs(genotype) <= BUDGET == int(child.data.tags["budget_macs"])
        assert child.data.metrics["macs"] == genotype_macs(genotype)
        assert "backbone" in child.data.params and "penalty_weight" in child.data.params
        assert {f"position_score_{i}" for i in range(genotype.blocks)} <= set(child.data.metrics)
        assert {f"position_active_keys_{i}" for i in range(genotype.blocks)} <= set(child.data.metrics)
        assert child.data.metrics["macs_expected"] <= child.data.metrics["macs"]
        assert "proxy_macs" in child.data.metrics
        # Where it ran and which attention implementation served it (the dispatcher's choice in that process).
        assert child.data.params["device"] == "cpu" and child.data.params["precision"] == precision
        assert child.data.params["significance_rule"] == "holm-0.05"
        assert child.data.params["decision"].startswith(("no position pays at this budget", "significant gains at"))
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        assert child.data.params["attention_backend"] == attention_backend("cpu", dtype)
    every = client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'trial'")
    want = independent_front([(r.info.run_id, r.data.metrics["psnr"], r.data.metrics["macs"]) for r in every])
    assert {r.info.run_id for r in every if r.data.tags["pareto"] == "true"} == want
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/pareto_front.parquet", "pareto/pareto_front.png", "pareto/pareto_front_retrained.png"} <= artifacts
    retrain = client.search_runs([experiment.experiment_id],
                                 filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.acla_kind = 'retrain'")
    assert len(retrain) == 1 and retrain[0].data.tags["trial_run_id"] in {c.info.run_id for c in children}
    # the retraining started from its trial's weights, which the driver stored with a manifest
    assert retrain[0].data.params["init"].startswith("from its trial's weights")
    assert retrain[0].data.params["precision"] == precision
    assert summary["retrained"][0]["init"] == retrain[0].data.params["init"]
    checkpoint = mlflow.artifacts.download_artifacts(run_id=retrain[0].info.run_id, artifact_path="checkpoint/model.pt",
                                                     tracking_uri=tracking_uri)
    model, genotype, task, payload = model_from_checkpoint(checkpoint)
    assert task.name == "car" and payload["profile"] == "smoke"
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())  # trained in bf16 or not, stored fp32
    assert 0.5 * BUDGET <= genotype_macs(genotype) <= BUDGET  # the registered model spends its budget
    version = aliased_version(client, summary["retrained"][0], "budget-2G", retrain[0].info.run_id)
    assert version.run_id == retrain[0].info.run_id
    check_legible_in_the_ui(client, experiment, parent, children, retrain[0], version, tracking_uri)
    return client


def aliased_version(client, retrained: dict, alias: str, run_id: str):
    """The model version behind the budget's alias. The alias goes only to a model that beats its degraded input
    in Y and RGB on the validation images; a smoke model, trained for 8 steps, often does not. Then the
    summary says so, with both channels, and no alias exists: this points it by hand, as a person would after
    reading that line, so that the rest of the check can resolve models:/...@alias."""
    if retrained["alias"] is None:
        withheld = retrained["alias_withheld"]
        worse = [c for c in ("y", "rgb") if retrained[f"psnr_{c}"] <= retrained[f"input_psnr_{c}"]]
        assert worse and withheld.startswith("no alias") and all(c.upper() in withheld for c in worse), withheld
        assert alias not in client.get_registered_model("acla-car-q10").aliases
        version = next(v for v in client.search_model_versions("name='acla-car-q10'") if v.run_id == run_id)
        client.set_registered_model_alias("acla-car-q10", alias, version.version)
    else:
        assert retrained["alias_withheld"] is None
        assert all(retrained[f"psnr_{c}"] > retrained[f"input_psnr_{c}"] for c in ("y", "rgb"))
    return client.get_model_version_by_alias("acla-car-q10", alias)


def check_legible_in_the_ui(client, experiment, parent, children, retrain, version, tracking_uri):
    """What a person compares in the MLflow UI: the experiment opens on its runs, the parent carries the
    search's figures and command line, trial runs lived while their trial ran and logged its losses as it
    trained, short names, the retrained score as a metric, a network drawing, a described model version."""
    import mlflow
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name.startswith("search-2G-") and "mlflow.note.content" in parent.data.tags
    assert {"budget", "task", "profile", "trials", "search_steps"} <= set(parent.data.params)
    assert parent.data.params["budget"] == "2G"
    assert {"best_psnr", "trial_count", "front_size"} <= set(parent.data.metrics)
    assert parent.data.metrics["trial_count"] == len(children)
    assert parent.data.metrics["best_psnr"] == max(c.data.metrics["psnr"] for c in children)
    for child in children:
        assert {"backbone", "net", "positions", "keys", "attention"} <= set(child.data.params)
        assert child.data.params["node_ip"] == "127.0.0.1" and child.data.params["hostname"]  # where it ran
        assert len(child.data.params["node_id"]) >= 32
        assert not any(k.startswith("genotype.") for k in child.data.params)
        assert {"macs_g", "psnr_y", "ssim_y"} <= set(child.data.metrics) and "pareto" in child.data.tags
        history = client.get_metric_history(child.info.run_id, "search_loss")
        assert len(history) >= 2 and history[0].step < history[-1].step  # logged while the search ran
        assert client.get_metric_history(child.info.run_id, "train_loss")
        # created when the trial started: its run spans the trial's own time
        span = (child.info.end_time - child.info.start_time) / 1000
        assert span >= 0.8 * child.data.metrics["trial_seconds"], (span, child.data.metrics["trial_seconds"])
        assert "network.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    trial = client.get_run(retrain.data.tags["trial_run_id"])
    assert "retrained_psnr" in trial.data.metrics and "retrained_psnr" not in trial.data.tags
    assert "within 2GMACs" in version.description and "car-q10" in version.description
    mlflow.set_tracking_uri(tracking_uri)
    info = mlflow.models.get_model_info(f"models:/acla-car-q10/{version.version}")
    assert info.signature is not None and info.saved_input_example_info is not None


def test_search_end_to_end_sqlite(run_dir):
    out = acla("search", "--budget", "2GFLOPs", "--task", "car", "--profile", "smoke", "--search-steps", "4",
               "--search-warmup", "2", "--width-seeds", "2", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # stdout is the JSON alone
    from mlflow.tracking import MlflowClient
    tags = MlflowClient(f"sqlite:///{run_dir}/mlflow.db").get_run(summary["parent_run_id"]).data.tags
    assert (tags["search_steps"], tags["search_warmup"]) == ("4", "2")  # the overrides reached the search
    assert set(summary) == {"experiment", "parent_run_id", "task", "budget_macs", "profile", "precision", "trials",
                            "retrained", "width"}
    check_width(summary, f"sqlite:///{run_dir}/mlflow.db")
    assert set(summary["trials"][0]) == {"trial", "run_id", "backbone", "positions", "keys", "macs", "proxy_macs",
                                         "params", "psnr", "ssim", "pareto", "retrained_psnr", "artifact_uri", "attention_backend",
                                         "position_scores", "macs_expected", "expected_keys",
                                         "psnr_rgb", "retrained_psnr_rgb"}  # car is a colour task
    for trial in summary["trials"]:  # one score per position, with how settled it is
        blocks = trial["backbone"]["blocks"]
        assert [s["position"] for s in trial["position_scores"]] == list(range(blocks))
        assert all({"score", "spread", "stderr", "prob", "active_keys"} <= set(s) for s in trial["position_scores"])
        # each position's verdict under the named rule, recomputed here from its score and error
        from search_space.significance import holm_passes
        scores = trial["position_scores"]
        assert all(isinstance(s["passed"], bool) and s["rule"] == "holm-0.05" for s in scores)
        assert all(s["decision_error"] >= s["stderr"] for s in scores)
        assert [s["passed"] for s in scores] == holm_passes([s["score"] for s in scores],
                                                            [s["decision_error"] for s in scores])
        assert set(trial["positions"]) <= {s["position"] for s in scores if s["passed"]}
        assert all(0 < s["active_keys"] <= 4 for s in trial["position_scores"])  # the smoke profile's 4 keys
        # an adaptive genotype is costed at its caps; its expected MACs, at the keys kept on validation images,
        # are never above them
        assert trial["macs_expected"] <= trial["macs"]
        assert [len(k) for k in trial["expected_keys"]] == [len(k) for k in trial["keys"]]
        assert all(s["score"] > s["stderr"] for s in trial["position_scores"] if s["position"] in trial["positions"])
        # the outer search offers backbones that spend the budget: 50-100% of it, bare
        assert 0.5 * BUDGET <= trial["macs"] <= BUDGET
    assert summary["retrained"][0]["alias"] in ("models:/acla-car-q10@budget-2G", None)  # see aliased_version
    check_search(summary, f"sqlite:///{run_dir}/mlflow.db")
    # pareto and status read the same store
    shown = json.loads(acla("pareto", "--task", "car", "--json", home=run_dir).stdout)
    assert {r["run_id"] for r in shown["front"]} == {t["run_id"] for t in summary["trials"] if t["pareto"]}
    # the width line recorded beside the table, as the search drew it: the same run as MLflow's width point
    assert [w["run_id"] for w in shown["width"]] == [summary["width"]["run_id"]]
    shown = json.loads(acla("pareto", "--task", "car", "--source", "mlflow", "--json", home=run_dir).stdout)
    assert [w["run_id"] for w in shown["width"]] == [summary["width"]["run_id"]]  # the width line beside it
    status = json.loads(acla("status", "--json", home=run_dir).stdout)
    assert [s["status"] for s in status["searches"]] == ["FINISHED"]
    assert os.path.isdir(os.path.join(run_dir, "ray")) and os.path.exists(os.path.join(run_dir, "optuna.db"))
    check_report(run_dir, summary)


def check_width(summary, tracking_uri):
    """The width line: the plain backbone filling the budget, trained as a Ray task and recorded under the parent;
    the gain is the best trial within the budget minus it (independent of width.py: recomputed here)."""
    from mlflow.tracking import MlflowClient
    from workers.backbones import bare_macs, feasible_backbones, parse_backbone
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    width = summary["width"]
    task, profile = task_from_options("car"), get_profile("smoke")
    costs = [bare_macs(task, *parse_backbone(b), profile.stages) for b in feasible_backbones(task, profile, BUDGET)[0]]
    assert width["macs"] == max(costs) <= BUDGET and width["steps"] == 4 + profile.train_steps  # --search-steps 4
    best = max((t for t in summary["trials"] if t["macs"] <= BUDGET), key=lambda t: t["psnr"])
    assert abs(width["gain"] - (best["psnr"] - width["psnr"])) < 1e-3
    client = MlflowClient(tracking_uri)
    check_width_seeds(width, best, tracking_uri)
    run = client.get_run(width["run_id"])
    assert run.data.tags["acla_kind"] == "width" and run.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
    assert run.info.status == "FINISHED" and run.data.params["positions"] == "none"
    assert abs(client.get_run(summary["parent_run_id"]).data.metrics["width_psnr"] - width["psnr"]) < 1e-6


def check_width_seeds(width, best, tracking_uri):
    """--width-seeds 2: the best trial's genotype and the width net, each trained from scratch with seeds 0 and 1
    (the oracle: the same training called here), give the paired gain's mean and its t-interval."""
    import dataclasses
    import math
    import statistics
    from pathlib import Path

    import mlflow
    from scipy import stats

    from orchestrator.search.trial import TrialSettings
    from orchestrator.search.width import train_width
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec
    profile = dataclasses.replace(get_profile("smoke"), search_steps=4, search_warmup=2)
    settings = TrialSettings(task=task_from_options("car"), budget_macs=BUDGET, profile=profile,
                             data=DataSpec(*embedded_sets()), seed=0)
    genotype = Path(mlflow.artifacts.download_artifacts(run_id=best["run_id"], artifact_path="genotype.json",
                                                        tracking_uri=tracking_uri)).read_text()
    diffs = [train_width(settings, width["backbone"], genotype_json=genotype, seed=s)["psnr"]
             - train_width(settings, width["backbone"], seed=s)["psnr"] for s in (0, 1)]
    half = stats.t.ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
    interval = width["interval"]
    assert interval["seeds"] == 2 and abs(interval["mean"] - statistics.fmean(diffs)) < 1e-3
    assert abs(interval["low"] - (statistics.fmean(diffs) - half)) < 1e-3
    assert abs(interval["high"] - (statistics.fmean(diffs) + half)) < 1e-3
    assert width["beats"] == (interval["mean"] > 0)
    parent = mlflow.tracking.MlflowClient(tracking_uri).get_run(width["run_id"]).data.tags["mlflow.parentRunId"]
    logged = mlflow.tracking.MlflowClient(tracking_uri).get_run(parent).data.metrics
    assert abs(logged["width_gain_low"] - interval["low"]) < 1e-6


def check_report(run_dir, summary):
    """`report` writes one page with its figures, and a real browser loads every figure."""
    from pathlib import Path

    from tests.browser import needs_browser, rendered_dom
    out = acla("report", "--task", "car", "-o", "report", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    shown = json.loads(out.stdout)
    assert shown["figures"] == ["front.png", "crops.png", "network.png"] and shown["front"] >= 1
    page = Path(run_dir) / "report" / "index.html"
    assert all((page.parent / name).stat().st_size > 1000 for name in shown["figures"])
    text = page.read_text()
    # a colour task's front shows both channels, proxy and retrained, beside the input's; it says what it ranks by
    assert all(h in text for h in ("proxy PSNR-Y", "retrained PSNR-RGB", "input RGB", "ranks by PSNR on Y"))
    assert shown["width"] == 1 and "Width line: does search beat width?" in text and f"{summary['width']['psnr']:.3f}" in text
    verdict = "is above the width line at 1 of 1" if summary["width"]["beats"] else "never beats its width line"
    assert verdict in text
    interval = summary["width"]["interval"]  # --width-seeds 2: the paired gain and its interval, in the table
    assert f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}] (2 seeds)" in text
    retrained = summary["retrained"][0]
    on_front = any(t["pareto"] and t["run_id"] == retrained["trial_run_id"] for t in summary["trials"])
    assert not on_front or all(f"{retrained[k]:.3f}" in text for k in ("psnr_y", "psnr_rgb", "input_psnr_rgb"))
    out = acla("report", "--task", "car", "-o", "report", home=run_dir)
    assert out.returncode == 2 and "already exists" in out.stderr  # never overwritten
    if needs_browser.args[0]:
        return
    dom = rendered_dom(page.as_uri())
    assert 'data-figures="3"' in dom and 'data-figures-loaded="3"' in dom, dom[-2000:]
    assert "Pareto front" in dom and shown["best_run_id"] in dom and "Width line" in dom


# In MLflow's runs table: open "Columns", tick the `pareto` tag, close, scroll right; then read the column.
PARETO_COLUMN = r"""(() => {
  const now = Date.now(), step = (name, wait) => { if (!window[name]) { window[name] = now; return false; }
                                                   return now - window[name] >= wait; };
  if (!document.body.innerText.includes('trial-')) return '';
  if (!window.acla_opened) { [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Columns').click(); }
  if (!step('acla_opened', 1000)) return '';
  if (!window.acla_ticked) {
    const title = [...document.querySelectorAll('.du-bois-light-tree-title')].filter(e => e.innerText.trim() === 'pareto').pop();
    title.closest('.du-bois-light-tree-treenode').querySelector('.du-bois-light-tree-checkbox').click();
  }
  if (!step('acla_ticked', 1000)) return '';
  if (!window.acla_closed) { document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true})); document.body.click(); }
  if (!step('acla_closed', 1500)) return '';
  if (!window.acla_scrolled) { document.querySelectorAll('.ag-center-cols-viewport, .ag-body-horizontal-scroll-viewport, .ag-header-viewport').forEach(v => v.scrollLeft = 5000); }
  if (!step('acla_scrolled', 1500)) return '';
  const columns = [...document.querySelectorAll('.ag-header-cell')].map(c => c.getAttribute('col-id'));
  const cells = [...document.querySelectorAll('.ag-cell[col-id="tags.`pareto`"]')].map(c => c.innerText.trim());
  return columns.includes('tags.`pareto`') && cells.includes('true') ? cells.join(',') : '';
})()"""
FRONT_PLOT = "[...document.images].filter(i => i.complete && i.naturalWidth >= 500).length"


def check_mlflow_ui(uri, summary):
    """A real browser on the MLflow UI of the finished search: the trial runs' table shows the `pareto` column
    with the front marked, and the parent's front plot renders."""
    from mlflow.tracking import MlflowClient

    from tests.browser import needs_browser, wait_in_page
    if needs_browser.args[0]:
        return
    experiment_id = MlflowClient(uri).get_experiment_by_name(summary["experiment"]).experiment_id
    runs = f"{uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&orderByKey=tags.%60pareto%60&orderByAsc=false"
    flags = wait_in_page(runs, PARETO_COLUMN, timeout=90).split(",")
    assert flags.count("true") == sum(t["pareto"] for t in summary["trials"]), flags
    plot = f"{uri}/#/experiments/{experiment_id}/runs/{summary['parent_run_id']}/artifacts/pareto/pareto_front.png"
    assert wait_in_page(plot, FRONT_PLOT, timeout=90) >= 1


def start_search_to_interrupt(run_dir):
    """A smoke search in a subprocess, returned once it is inside Tune's fit()."""
    env = {**os.environ, "ACLA_HOME": run_dir, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    search = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "search", "--budget", "2G", "--task", "car",
                               "--profile", "smoke", "--trials", "8", "--concurrency", "1", "--search-steps", "30"],
                              env=env, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              # as a terminal delivers Ctrl-C: a test run in the background (CI) starts its children
                              # with SIGINT ignored, which Python keeps
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(run_dir, "tune")) and time.time() < deadline and search.poll() is None:
        time.sleep(0.5)
    time.sleep(5)  # inside Tune's fit()
    assert search.poll() is None, "the search ended before it could be interrupted"
    return search


@pytest.mark.parametrize("signum,status,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_cancel_the_search(run_dir, signum, status, word):
    """SIGINT or SIGTERM during the trials: exit 130 or 143, the parent run KILLED, nothing retrained or
    registered, no Ray process left."""
    from mlflow.tracking import MlflowClient
    search = start_search_to_interrupt(run_dir)
    search.send_signal(signum)
    _, stderr = search.communicate(timeout=120)
    assert search.returncode == status, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"acla-orch: {word}" and "Traceback" not in stderr
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("acla-car-q10")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'search'")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert not client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'retrain'")
    assert not client.search_registered_models()
    assert mentioning(run_dir, within=15) == []  # Ray shut down: nothing of this run still running


def test_a_second_ctrl_c_forces_the_exit(run_dir):
    """Ctrl-C twice: the second one does not wait for the cleanup the first started."""
    search = start_search_to_interrupt(run_dir)
    search.send_signal(signal.SIGINT)
    time.sleep(0.3)
    search.send_signal(signal.SIGINT)
    _, stderr = search.communicate(timeout=60)
    last = stderr.strip().splitlines()[-1]
    # 130 from the forced exit or the finished cancellation; or, where the cleanup was already done ("interrupted"
    # printed) and the interpreter was exiting, killed by the second SIGINT itself (Python restores the default
    # handler as it shuts down), which a shell reports as 130 too
    assert search.returncode == 130 or (search.returncode == -signal.SIGINT and last == "acla-orch: interrupted"), \
        stderr[-2000:]
    assert "forced exit" in stderr or last == "acla-orch: interrupted"
    kill_mentioning(run_dir)  # a forced exit may leave Ray's daemons: the user asked for that
