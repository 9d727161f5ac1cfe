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
