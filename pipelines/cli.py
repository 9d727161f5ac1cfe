"""The ``metagen`` command line. Each command validates params.yaml once and calls a flow or a component.

Bad input is refused before the heavy imports (torch, MLflow, Ray, Prefect: ~8 s): a command reads
its params and probes its servers first, and imports its flow after."""

from __future__ import annotations

import logging
import sys
import time

_STARTED = time.perf_counter()  # the CLI's first import: its own start-up is counted from here

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from components.errors import MetagenError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="metagen: meta-learned few-shot image generators")
console = Console(stderr=False)
log = logging.getLogger("metagen")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a value: key.path=value")]
ProjectOpt = Annotated[Path, typer.Option("--project-dir", help="repository root (DVC and git)")]
MAX_GENERATE = 1024  # images one `generate` writes into one grid (held in memory at once)


@app.callback()
def _options(verbose: Annotated[bool, typer.Option("--verbose", help="DEBUG logs and the tracebacks of "
                                                   "errors (a metagen error is otherwise one line)")] = False) -> None:
    if verbose:
        from pipelines.runtime import configure_logging

        configure_logging(verbose=True)


def _load(params_path: Path, overrides: list[str] | None):  # noqa: ANN202
    from components.params import load_params

    return load_params(params_path, overrides or [])


def _preflight(project_dir: Path, params_path: Path, overrides: list[str] | None):  # noqa: ANN202
    """Validate params and reach the configured servers before any flow starts."""
    from components.net import check_ray_address, check_reachable, ray_address, tracking_uri
    from pipelines.runtime import check_prefect_api, detach_temporary_prefect_server

    params = _load(project_dir / params_path, overrides)
    check_prefect_api()
    detach_temporary_prefect_server()
    check_reachable(tracking_uri(params.registry, project_dir))
    address = ray_address(params.train)
    if address:
        check_ray_address(address)
    return params


@app.command()
def configure(
    overlay: Annotated[Path, typer.Argument(help="a configuration overlay, e.g. configs/omniglot.yaml")],
    params_path: ParamsOpt = Path("params.yaml"),
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Write an overlay's values (only what differs from the defaults) into params.yaml, validated,
    comments kept, so that DVC and every flow read them; `git checkout params.yaml` undoes it."""
    from components.params_file import apply_overlay

    updates = apply_overlay(project_dir / params_path, overlay)
    console.print(f"{params_path}: {len(updates)} values from {overlay}")
    for key, value in updates.items():
        console.print(f"  {key}: {value!r}")


@app.command()
def ingest(
    source: Annotated[Optional[str], typer.Option(help="omniglot | digits | image_folder | celeba | archive")] = None,
    path: Annotated[Optional[str], typer.Option(help="the source's folder or archive")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="as `metagen run` does: dvc pull if the remote has the "
                                        "committed data, else rebuild")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Data in: re-read the source into data/, `dvc add`, `dvc repro prepare`, `dvc push`; print the
    data version. `--pull`: fetch the committed data from the DVC remote instead when it is there."""
    from components.params import EMBEDDED_SOURCES

    overrides = list(set_ or [])
    if source is not None:
        overrides.append(f"data.source={source}")
        if source in EMBEDDED_SOURCES and path is None:
            overrides.append("data.path=null")
    if path is not None:
        overrides.append(f"data.path={Path(path).resolve()}")
    params = _preflight(project_dir, params_path, overrides)
    from pipelines.ingest_flow import ingest as ingest_flow

    version = ingest_flow(str(project_dir), str(params_path), overrides, refresh=not pull, params=params)
    if version.get("data_changed"):
        console.print("[yellow]data changed[/]: data.dvc now differs from the committed version")
    console.print(f"data version: raw={str(version['raw_md5'])[:12]} prepared={str(version['prepared_md5'])[:12]}")
    console.print_json(data=version)


@app.command()
def prepare(params_path: ParamsOpt = Path("params.yaml"), project_dir: ProjectOpt = Path(".")) -> None:
    """The dvc.yaml `prepare` stage: data/ -> prepared/ (run by `dvc repro`)."""
    params = _load(params_path, None)
    from components.data.prepare import prepare as run_prepare

    manifest = run_prepare(project_dir / params.data.raw_dir, project_dir / params.data.prepared_dir, params.data)
    console.print({k: v["num_images"] for k, v in manifest["splits"].items()})


@app.command()
def version(project_dir: ProjectOpt = Path("."), params_path: ParamsOpt = Path("params.yaml")) -> None:
    """Print the data version (DVC md5s, git commit, dirty flag)."""
    params = _load(params_path, None)
    from components.data.lineage import data_version

    console.print_json(data=data_version(project_dir, params.data.prepared_dir).__dict__)


@app.command()
def features(params_path: ParamsOpt = Path("params.yaml"), project_dir: ProjectOpt = Path(".")) -> None:
    """The dvc.yaml `features` stage: train the domain feature extractor on meta-train classes."""
    params = _load(params_path, None)
    from components.evaluation.evaluate import build_domain_features

    metrics = build_domain_features(params, project_dir / params.data.prepared_dir, project_dir / params.eval.features_dir)
    console.print_json(data=metrics)


@app.command()
def train(
    local: Annotated[bool, typer.Option("--local", help="in-process trainer instead of Ray Train")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Meta-train the generator (Ray Train on RAY_ADDRESS or a local Ray; `--local`: in this process)."""
    if local:  # the in-process path shows a progress bar and needs neither Prefect nor MLflow
        params = _load(project_dir / params_path, set_)
        from components.meta.trainer import train_local

        result = train_local(params, project_dir / params.data.prepared_dir, project_dir / params.train.checkpoint_dir)
        console.print(f"checkpoint: {result.checkpoint} (step {result.step}, val -ELBO {result.final_val_loss})")
        return
    params = _preflight(project_dir, params_path, set_)
    from pipelines.train_flow import train as train_flow

    out = train_flow(str(project_dir), params=params)
    console.print(f"checkpoint: {out['checkpoint']} (step {out['step']}, val -ELBO {out['final_val_loss']}); "
                  f"MLflow run {out['run_id']}")


@app.command()
def tune(
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Ray Tune over tune.search_space with ASHA; prints the best config and writes the results table."""
    params = _preflight(project_dir, params_path, set_)
    from pipelines.tune_flow import tune as tune_flow

    out = tune_flow(str(project_dir), params=params)
    console.print("train with: metagen train " + " ".join(f"--set {k}={v}" for k, v in out["best_config"].items()))


@app.command()
def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Option(help="a checkpoint file or folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="a registry URI, e.g. models:/metagen@champion")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Few-shot FID/KID/ELBO/augmentation table: meta-model vs pretrain vs scratch vs support replay."""
    from components.timing import TIMINGS

    TIMINGS.mark("process", _STARTED)
    with TIMINGS.phase("pre-flight", "overhead"):
        params = _preflight(project_dir, params_path, set_)
    with TIMINGS.phase("imports", "overhead"):
        from pipelines.evaluate_flow import evaluate as evaluate_flow
    TIMINGS.mark("flow call")
    out = evaluate_flow(str(project_dir), checkpoint=str(checkpoint) if checkpoint else None, model_uri=model,
                        params=params)
    console.print(f"report and pictures: {', '.join(out['files'])}")
    _print_timings(out["timings"], out["timings_path"])


@app.command()
def promote(
    checkpoint: Annotated[Optional[Path], typer.Option(help="the checkpoint to register")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Register the checkpoint as a new model version and apply the FID gate (reads reports/eval.json)."""
    params = _preflight(project_dir, params_path, set_)
    from pipelines.promote_flow import promote as promote_flow

    promote_flow(str(project_dir), checkpoint=str(checkpoint or ""), params=params)


@app.command()
def run(
    local: Annotated[bool, typer.Option("--local", help="train in-process instead of with Ray Train")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """The whole retraining pipeline: ingest, (tune), train, evaluate, register, promote; ends with
    the time of each phase (also in reports/timings.json and the run's `timing.*` metrics)."""
    from components.timing import TIMINGS

    TIMINGS.mark("process", _STARTED)
    TIMINGS.add("cli start-up", time.perf_counter() - _STARTED, "overhead")
    with TIMINGS.phase("pre-flight", "overhead"):  # params and servers checked before the heavy imports
        params = _preflight(project_dir, params_path, set_)
    with TIMINGS.phase("imports", "overhead"):
        from pipelines.retrain_flow import retrain
    start = time.perf_counter()
    TIMINGS.mark("flow call")
    out = retrain(str(project_dir), str(params_path), list(set_ or []), local=local, params=params)
    d = out["decision"]
    console.rule("metagen retrain")
    data = out["data"]
    console.print(f"data version: raw={str(data['raw_md5'])[:12]} prepared={str(data['prepared_md5'])[:12]} "
                  f"git={str(data['git_commit'])[:10]}{' (dirty)' if data.get('git_dirty') else ''}")
    if data.get("data_changed"):
        console.print("[yellow]data changed[/]: the rebuilt data/ differs from the committed data.dvc")
    console.print(out["markdown"])
    console.print(f"model [bold]{out['model_name']}[/] v{d['version']}: [bold]{d['decision']}[/]")
    for condition in d["reason"].split("; "):
        console.print(f"  - {escape(condition)}")
    champion = f"v{d['champion_after']}" if d["champion_after"] else "none"
    console.print(f"champion now: {champion}; MLflow run {out['run_id']}; took {time.perf_counter() - start:.0f} s")
    if d["decision"] == "awaiting approval":
        console.print(f"v{d['version']} passed the gate and awaits approval (registry.require_approval): "
                      f"metagen approve {d['version']} [--reject --reason TEXT]")
    elif d["decision"] != "promoted":
        console.print(f"v{d['version']} is registered but not champion (the conditions marked FAIL above); to use it "
                      f"anyway: metagen generate --support DIR --model models:/{out['model_name']}/{d['version']}")
    console.print(f"artifacts: {', '.join(out['files'])}")
    uri = out["tracking_uri"]
    if not uri.startswith(("http://", "https://")):
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then")
    console.print(f"  run {out['run_url']}\n  version {out['version_url']}")
    console.print("Prefect UI: prefect server start --host 127.0.0.1 --port 4200 (flow run "
                  f"{out['flow_run_name']}: its artifacts hold this table and the links)")
    _print_timings(out["timings"], out["timings_path"])


def _print_timings(summary: dict, path: str) -> None:
    from rich.table import Table

    from components.timing import table

    t = Table(title=f"time per phase (s): total {summary['total_s']:.1f}, fixed overhead {summary['overhead_s']:.1f}",
              title_justify="left")
    t.add_column("phase")
    t.add_column("s", justify="right")
    t.add_column("kind")
    for name, seconds, kind in table(summary):
        t.add_row(name, f"{seconds:.1f}", kind)
    console.print(t)
    console.print(f"timings: {path}")


@app.command()
def generate(
    support: Annotated[Path, typer.Option(help="folder of K support images of the new class")],
    model: Annotated[Optional[str], typer.Option(help="registry URI (default: the champion of registry.model_name)")] = None,
    n: Annotated[int, typer.Option(min=1, max=MAX_GENERATE, help="images to generate")] = 16,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("grid.png"),
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Load a registered generator, adapt it on the images in SUPPORT, write a PNG grid of samples."""
    params = _load(project_dir / params_path, set_)
    from components.generate import generate_grid
    from components.tracking import configure

    configure(params.registry, project_dir)
    uri = model or f"models:/{params.registry.model_name}@champion"
    path = generate_grid(uri, support, n, out, params.data.max_image_pixels)
    console.print(f"wrote {path}")


@app.command()
def rollback(
    to: Annotated[Optional[int], typer.Option("--to", min=1, help="the version to make champion (default: `previous`)")] = None,
    reason: Annotated[str, typer.Option(help="why, kept in the audit trail")] = "",
    params_path: ParamsOpt = Path("params.yaml"),
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Move `champion` back to `previous` (or --to N), recorded in the audit trail (`metagen history`)."""
    params = _load(project_dir / params_path, None)
    from components.registry import rollback as roll_back
    from components.tracking import configure

    configure(params.registry, project_dir)
    move = roll_back(params.registry.model_name, None if to is None else str(to), reason)
    console.print(f"{params.registry.model_name}: champion v{move.before} -> v{move.after} ({move.reason}), by {move.user}")


@app.command()
def approve(
    version: Annotated[int, typer.Argument(min=1, help="the version awaiting approval")],
    reject_it: Annotated[bool, typer.Option("--reject", help="keep it out instead (needs --reason)")] = False,
    reason: Annotated[str, typer.Option(help="why, kept with the version and in the audit trail")] = "",
    params_path: ParamsOpt = Path("params.yaml"),
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Approve (or --reject) a version that passed the gate under registry.require_approval."""
    params = _load(project_dir / params_path, None)
    from components.approval import approve as approve_version, reject
    from components.tracking import configure

    configure(params.registry, project_dir)
    name = params.registry.model_name
    if reject_it:
        reject(name, str(version), reason)
        console.print(f"{name} v{version}: not approved ({reason})")
        return
    after = approve_version(name, str(version), reason)
    console.print(f"{name} v{version}: approved; champion now v{after}")


@app.command()
def history(
    params_path: ParamsOpt = Path("params.yaml"),
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Every move of the `champion` alias: when, from which version to which, the decision and why, who, the run."""
    from rich.table import Table

    params = _load(project_dir / params_path, None)
    from components.registry import alias_history
    from components.tracking import configure

    configure(params.registry, project_dir)
    t = Table(title=f"{params.registry.model_name}: alias moves", title_justify="left")
    for column in ("time (UTC)", "alias", "from", "to", "decision", "user", "run", "reason"):
        t.add_column(column)
    for m in alias_history(params.registry.model_name):
        t.add_row(m.time[:19], m.alias, f"v{m.before}" if m.before else "–", f"v{m.after}", m.decision, m.user,
                  (m.run_id or "–")[:8], escape(m.reason))
    console.print(t)


@app.command()
def schedule(
    params_path: ParamsOpt = Path("params.yaml"),
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Serve the `retrain` flow as a Prefect deployment on the cron schedule of params.yaml (blocks)."""
    params = _load(project_dir / params_path, None)
    from pipelines.schedule import serve_retrain

    serve_retrain(params, str(project_dir.resolve()), str(params_path))


def main() -> None:
    from pipelines.runtime import apply_offline_defaults, configure_logging

    apply_offline_defaults()
    configure_logging()
    try:
        code = app(standalone_mode=False)  # typer turns Ctrl-C into exit code 130, returned here
    except MetagenError as err:
        console.print(f"[bold red]error[/]: {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except KeyboardInterrupt:  # outside the command (typer's own handling covers the command)
        _interrupted()
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        exc.show()  # type: ignore[attr-defined]
        sys.exit(2)
    if code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


def _interrupted() -> None:
    """Ctrl-C: say what stopped and what was kept, exit 130 (128 + SIGINT) as shells expect."""
    console.print("[yellow]interrupted[/]: the command stopped; finished steps keep their outputs "
                  "(data/, prepared/, the last checkpoint of an interrupted training: `metagen train` "
                  "resumes from it), nothing half-written was kept", highlight=False, soft_wrap=True)
    sys.exit(130)


def _is_usage_error(exc: BaseException) -> bool:
    """A command-line usage error (unknown command or option, a bad value): typer raises the
    ClickException of the click it vendors (typer._click), older typers click's own."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(exc, "show")


if __name__ == "__main__":
    main()
