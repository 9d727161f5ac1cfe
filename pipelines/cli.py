"""The ``metagen`` command line. Each command validates params.yaml once and calls a flow or a component."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from components.errors import MetagenError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="metagen: meta-learned few-shot image generators")
console = Console(stderr=False)
log = logging.getLogger("metagen")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a value: key.path=value")]
ProjectOpt = Annotated[Path, typer.Option("--project-dir", help="repository root (DVC and git)")]


def _load(params_path: Path, overrides: list[str] | None):  # noqa: ANN202
    from components.params import load_params

    return load_params(params_path, overrides or [])


@app.command()
def ingest(
    source: Annotated[Optional[str], typer.Option(help="digits | image_folder | celeba | archive")] = None,
    path: Annotated[Optional[str], typer.Option(help="the source's folder or archive")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Refresh data/ from a source, `dvc add` it, `dvc repro prepare`, print the data version."""
    from components.data.ingest import ingest as run_ingest
    from components.params import apply_overrides, read_params_dict, validate_params

    overrides = list(set_ or [])
    if source is not None:
        overrides.append(f"data.source={source}")
        if source == "digits" and path is None:
            overrides.append("data.path=null")
    if path is not None:
        overrides.append(f"data.path={str(Path(path).resolve())}")
    raw = apply_overrides(read_params_dict(params_path), overrides)
    params = validate_params(raw, source=str(params_path))
    updates = {}
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("data."):
            node = raw
            for part in key.split("."):
                node = node[part]
            updates[key] = node
    result = run_ingest(project_dir, params, param_updates=updates or None)
    if result.data_changed:
        console.print(f"[yellow]data changed[/]: data.dvc md5 {result.previous_raw_md5} -> {result.version.raw_md5}")
    console.print(f"data version: {result.version.short} ({result.num_classes} classes)")
    console.print_json(data=result.version.__dict__)


@app.command()
def prepare(params_path: ParamsOpt = Path("params.yaml"), project_dir: ProjectOpt = Path(".")) -> None:
    """The dvc.yaml `prepare` stage: data/ -> prepared/ (run by `dvc repro`)."""
    from components.data.prepare import prepare as run_prepare

    params = _load(params_path, None)
    manifest = run_prepare(project_dir / params.data.raw_dir, project_dir / params.data.prepared_dir, params.data)
    console.print({k: v["num_images"] for k, v in manifest["splits"].items()})


@app.command()
def version(project_dir: ProjectOpt = Path("."), params_path: ParamsOpt = Path("params.yaml")) -> None:
    """Print the data version (DVC md5s, git commit, dirty flag)."""
    from components.data.lineage import data_version

    params = _load(params_path, None)
    console.print_json(data=data_version(project_dir, params.data.prepared_dir).__dict__)


@app.command()
def features(params_path: ParamsOpt = Path("params.yaml"), project_dir: ProjectOpt = Path(".")) -> None:
    """The dvc.yaml `features` stage: train the domain feature extractor on meta-train classes."""
    from components.evaluation.evaluate import build_domain_features

    params = _load(params_path, None)
    metrics = build_domain_features(params, project_dir / params.data.prepared_dir, project_dir / params.eval.features_dir)
    console.print_json(data=metrics)


@app.command()
def train(
    local: Annotated[bool, typer.Option("--local", help="in-process trainer instead of Ray Train")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Meta-train the generator (Ray Train; `--local`: in this process) and write a checkpoint."""
    params = _load(params_path, set_)
    prepared = project_dir / params.data.prepared_dir
    out = project_dir / params.train.checkpoint_dir
    if local:
        from components.meta.trainer import train_local

        result = train_local(params, prepared, out, progress=True)
    else:
        from components.training import train_distributed

        result = train_distributed(params, prepared, out)
    console.print(f"checkpoint: {result.checkpoint} (step {result.step}, final val -ELBO {result.final_val_loss})")


@app.command()
def tune(
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Ray Tune over tune.search_space with ASHA; prints the best config and writes the results table."""
    from components.tuning import run_tune

    params = _load(params_path, set_)
    outcome = run_tune(params, project_dir / params.data.prepared_dir, project_dir / params.eval.reports_dir)
    console.print(f"best {outcome.best_config} ({outcome.best_metric:.2f}); table: {outcome.table_path}")
    console.print("train with: metagen train " + " ".join(f"--set {k}={v}" for k, v in outcome.best_config.items()))


@app.command()
def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Option(help="a checkpoint file or folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="a registry URI, e.g. models:/metagen@champion")] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="evaluate the meta-model only")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Few-shot FID/KID/ELBO/augmentation table: meta-model vs pretrain vs scratch vs support replay."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from components.evaluation.evaluate import evaluate as run_evaluate
    from components.meta.trainer import load_learner

    params = _load(params_path, set_)
    if model is not None:
        from components.registry import load_registered_learner

        restored = load_registered_learner(model, params)
    else:
        restored = load_learner(checkpoint or project_dir / params.train.checkpoint_dir)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("evaluating", total=None)
        out = run_evaluate(
            restored.learner, params, project_dir / params.data.prepared_dir, project_dir / params.eval.reports_dir,
            project_dir / params.eval.features_dir, project_dir / params.train.checkpoint_dir,
            history=restored.state.history, baselines=not no_baselines,
            step=lambda msg: bar.update(task, description=f"evaluating: {msg}"),
        )
    console.print(out.markdown_path.read_text())
    console.print(f"report: {out.report_path}; pictures: {', '.join(str(p) for p in out.pictures)}")


def main() -> None:
    from pipelines.runtime import apply_offline_defaults, configure_logging

    apply_offline_defaults()
    configure_logging()
    try:
        app(standalone_mode=False)
    except MetagenError as err:
        console.print(f"[bold red]error[/]: {err}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
