"""The MLflow model registry: log the generator, register versions, and the FID promotion gate.

The gate: a version becomes ``champion`` only if its pooled few-shot FID is <= the threshold and
lower than the champion's FID under the same extractor and protocol digests (a champion measured
under other digests is re-evaluated first). The champion it replaces keeps the alias
``previous``. Aliases are only written by :func:`reconcile`, which sets ``champion`` to the best
eligible version by the tags *as they are now* and re-reads until that holds, so two promotions
racing end with the better model as champion.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.errors import MetagenError
from components.meta.learner import MetaLearner
from components.meta.trainer import Restored, TrainState, build_learner
from components.models.vae import VAEConfig
from components.params import MetaParams, Params

log = logging.getLogger(__name__)
MODEL_ARTIFACT = "generator"
CHAMPION, PREVIOUS = "champion", "previous"
PYFUNC_FILE = Path(__file__).with_name("serving") / "generator_pyfunc.py"


# --- logging the model --------------------------------------------------------------------------
def model_config(learner: MetaLearner, params: Params) -> dict[str, Any]:
    scope = "all" if params.meta.algorithm == "reptile" else params.meta.adapt_scope
    return {
        "vae": learner.model.cfg.__dict__,
        "meta": params.meta.model_dump(mode="json"),
        "adapt_scope": scope,
        "defaults": {
            "n": 16, "steps": params.eval.adapt_steps, "inner_lr": params.eval.inner_lr or params.meta.inner_lr,
            "sampling": params.eval.sampling, "temperature": params.eval.temperature, "seed": 0,
            "use_learned_lrs": True,
        },
    }


def log_generator(run_id: str, learner: MetaLearner, params: Params, example_support: np.ndarray) -> str:
    """Log the generator as a models-from-code pyfunc (weights as a state dict); return its URI."""
    import mlflow
    from mlflow.models import infer_signature

    config = model_config(learner, params)
    with tempfile.TemporaryDirectory(prefix="metagen-model-") as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save({"model": learner.model.state_dict(),
                    "lrs": learner.lrs.state_dict() if learner.lrs is not None else None}, weights)
        cfg_path = Path(tmp) / "config.json"
        cfg_path.write_text(json.dumps(config, indent=2))
        from mlflow.pyfunc import PythonModelContext

        from components.serving.generator_pyfunc import FewShotGeneratorModel

        model = FewShotGeneratorModel()  # the example output comes from the very class consumers load
        model.load_context(PythonModelContext(artifacts={"weights": str(weights), "config": str(cfg_path)},
                                              model_config=None))
        example_out = model.predict(None, example_support, {"n": 4})
        signature = infer_signature(example_support, example_out, params=config["defaults"])
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_FILE),
                artifacts={"weights": str(weights), "config": str(cfg_path)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example_support,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", f"mlflow=={mlflow.__version__}"],
            )
    return info.model_uri


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    import mlflow
    from mlflow import MlflowClient

    mv = mlflow.register_model(model_uri, name, tags={k: str(v)[:5000] for k, v in tags.items()})
    client = MlflowClient()
    client.set_model_version_tag(name, mv.version, "gate.decision", "pending")
    return str(mv.version)


# --- loading --------------------------------------------------------------------------------------
def _champion_missing(uri: str) -> MetagenError:
    return MetagenError(f"no model at {uri}: nothing has been promoted to champion yet (run `metagen run`)")


def download_model(uri: str, dst: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            raise _champion_missing(uri) from None
        raise MetagenError(f"cannot load {uri}: {err.message}") from None


def load_registered_learner(uri: str, params: Params | None = None) -> Restored:
    """A registry model (``models:/metagen@champion``) as a learner: weights + config, no pickle."""
    with tempfile.TemporaryDirectory(prefix="metagen-dl-") as tmp:
        local = download_model(uri, Path(tmp))
        config = json.loads(next(local.rglob("config.json")).read_text())
        blob = torch.load(next(local.rglob("weights.pt")), map_location="cpu", weights_only=True)
    cfg = VAEConfig(**config["vae"])
    learner = build_learner(MetaParams.model_validate(config["meta"]), cfg, seed=0)
    learner.model.load_state_dict(blob["model"])
    if learner.lrs is not None and blob.get("lrs") is not None:
        learner.lrs.load_state_dict(blob["lrs"])
    return Restored(learner, cfg, TrainState(), {"meta": config["meta"]})


# --- the promotion gate ---------------------------------------------------------------------------
def fid_key(extractor_digest: str, protocol_digest: str) -> str:
    return f"fid/{extractor_digest}/{protocol_digest}"


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _eligible(client: Any, name: str, key: str) -> list[tuple[float, int]]:
    out = []
    for v in client.search_model_versions(f"name='{name}'"):
        if v.tags.get(f"eligible/{key}") == "true" and key in v.tags:
            out.append((float(v.tags[key]), int(v.version)))
    return sorted(out)


def _is_write_conflict(err: BaseException) -> bool:
    """A concurrent writer won a race inside the tracking server's store (retrying is safe).

    MLflow's SQLAlchemy store sets an alias with ``session.merge`` (select, then insert): two
    clients setting the same alias at once can both see no row, and the second insert fails with
    a UNIQUE constraint error (SQLite: IntegrityError, or "database is locked" under load).
    """
    text = str(err)
    return any(m in text for m in ("IntegrityError", "UNIQUE constraint", "database is locked",
                                   "duplicate key value", "Deadlock"))


def _write(call: Callable[..., Any], *args: str, attempts: int = 8) -> None:
    """Run a registry write (alias or tag), retrying when a concurrent writer raced it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            call(*args)
            return
        except MlflowException as err:
            if attempt == attempts - 1 or not _is_write_conflict(err):
                raise
            log.info("%s%s raced a concurrent write; retrying", call.__name__, args)
            time.sleep(0.05 * (attempt + 1))


def _set_alias(client: Any, name: str, alias: str, version: str) -> None:
    _write(client.set_registered_model_alias, name, alias, version)


def reconcile(client: Any, name: str, key: str, attempts: int = 10) -> str | None:
    """Make ``champion`` the eligible version with the lowest FID (ties: the older one)."""
    for _ in range(attempts):
        eligible = _eligible(client, name, key)
        current = _alias_version(client, name, CHAMPION)
        if not eligible:
            return current
        best = str(eligible[0][1])
        if current == best:
            return best
        _set_alias(client, name, CHAMPION, best)
        try:
            if current is not None:
                _set_alias(client, name, PREVIOUS, current)
        except Exception:
            if current is not None:  # put champion back: a failure leaves the aliases as they were
                _set_alias(client, name, CHAMPION, current)
            raise
    return _alias_version(client, name, CHAMPION)


@dataclass(frozen=True)
class GateDecision:
    version: str
    decision: str
    reason: str
    fid: float
    champion_before: str | None
    champion_after: str | None


def promote(
    name: str, version: str, fid: float, threshold: float, extractor_digest: str, protocol_digest: str,
    reevaluate: Callable[[str], float],
) -> GateDecision:
    """Apply the gate to ``version``; ``reevaluate(version)`` scores another version on this protocol."""
    from mlflow import MlflowClient

    client = MlflowClient()
    key = fid_key(extractor_digest, protocol_digest)
    before = _alias_version(client, name, CHAMPION)
    champion_fid = None
    if before is not None and before != version:
        tags = client.get_model_version(name, before).tags
        if key in tags:
            champion_fid = float(tags[key])
        else:
            log.info("champion v%s was measured under other digests: re-evaluating it on this protocol", before)
            champion_fid = reevaluate(before)
            _write(client.set_model_version_tag, name, before, key, repr(champion_fid))
            _write(client.set_model_version_tag, name, before, f"eligible/{key}",
                   str(champion_fid <= threshold).lower())
    client.set_model_version_tag(name, version, key, repr(fid))
    if not np.isfinite(fid) or fid > threshold:
        reason = f"FID {fid:.4f} > registry.fid_threshold {threshold:g}"
        after = before
    else:
        client.set_model_version_tag(name, version, f"eligible/{key}", "true")
        after = reconcile(client, name, key)
        if after == version:
            reason = (f"FID {fid:.4f} <= threshold {threshold:g}" +
                      (f" and < champion v{before}'s {champion_fid:.4f}" if champion_fid is not None else "; first champion"))
        else:
            champ = float(client.get_model_version(name, after).tags[key]) if after else float("nan")
            reason = f"FID {fid:.4f} is not lower than champion v{after}'s {champ:.4f}"
    decision = "promoted" if after == version else "rejected"
    client.set_model_version_tag(name, version, "gate.decision", decision)
    client.set_model_version_tag(name, version, "gate.reason", reason)
    log.info("gate: v%s %s (%s)", version, decision, reason)
    return GateDecision(version, decision, reason, fid, before, after)


def register_checkpoint(run_id: str, checkpoint: Path, params: Params, prepared_dir: Path,
                        tags: dict[str, str]) -> str:
    """Log the checkpoint's generator on ``run_id`` and register it as a new version."""
    from components.data.prepare import load_split
    from components.meta.trainer import load_learner

    learner = load_learner(checkpoint).learner
    test = load_split(prepared_dir, "test")
    example = test.images[test.labels == 0][: params.meta.k_shot].astype(np.float32)
    uri = log_generator(run_id, learner, params, example)
    return register(uri, params.registry.model_name, {**tags, "mlflow.run_id": run_id, "model_uri": uri})
