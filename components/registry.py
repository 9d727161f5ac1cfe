"""The MLflow model registry: log the generator, register versions, and the FID promotion gate.

The gate (:mod:`components.gate`, pure): a version becomes ``champion`` only if its pooled
few-shot FID is <= the threshold and lower, beyond the noise of a paired bootstrap, than every
non-copying baseline's and the champion's under the same extractor and protocol digests (a champion
measured under other digests is re-evaluated first). The champion it replaces keeps the alias
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.audit import Move, history, record_move
from components.errors import MetagenError
from components.serving.data_facts import data_facts
from components.evaluation.report import gate_markdown
from components.meta.adaptation import AdaptationRule
from components.meta.learner import MetaLearner
from components.data.prepare import load_split
from components.evaluation.bootstrap import FidUnits, load_units
from components.evaluation.evaluate import UNITS_FILE, evaluate
from components.gate import Condition, GateRules, against_champion, intervals_of, meta_row, own_conditions, rows_of
from components.meta.trainer import Restored, TrainState, load_learner, rebuild_learner
from components.params import MetaParams, Params

log = logging.getLogger(__name__)
MODEL_ARTIFACT = "generator"
CHAMPION, PREVIOUS = "champion", "previous"
APPROVAL = "approval.status"  # pending | approved | rejected (registry.require_approval)
MODEL_DESCRIPTION = (
    "Few-shot image generator (metagen): a set-conditioned VAE meta-learned with MAML / Reptile / "
    "Meta-SGD. It reads K images of an unseen class and generates new ones: "
    "`mlflow.pyfunc.load_model(uri).predict(support, params={'n': 16, 'seed': 0})` or "
    "`metagen generate --support DIR`. The `champion` alias is moved only by the promotion gate "
    "(few-shot FID on held-out classes under the threshold, better than the champion and every "
    "non-copying baseline, copy rate under the limit); each version's description lists the conditions.")
PYFUNC_FILE = Path(__file__).with_name("serving") / "generator_pyfunc.py"


# --- logging the model --------------------------------------------------------------------------
def model_config(learner: MetaLearner, rule: AdaptationRule, meta: MetaParams,
                 facts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "data": facts,  # what it was trained on (components/serving/data_facts.py): supports far from it are warned of
        "vae": learner.model.cfg.__dict__,
        "meta": meta.model_dump(mode="json"),
        "adaptation": rule.to_dict(),
        "defaults": {"n": 16, "sampling": rule.sampling, "seed": 0},
    }


def log_generator(run_id: str, learner: MetaLearner, rule: AdaptationRule, params: Params,
                  example_support: np.ndarray, facts: dict[str, Any] | None = None) -> str:
    """Log the generator as a models-from-code pyfunc (weights as a state dict); return its URI."""
    import mlflow
    from mlflow.models import infer_signature

    config = model_config(learner, rule, params.meta, facts)
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
                pip_requirements=serving_requirements(),
            )
    return info.model_uri


# what the logged code (components/, the pyfunc's imports) needs beside Python: a test checks that
# every third-party module the served model imports is here
SERVING_DISTRIBUTIONS = ("torch", "torchvision", "numpy", "mlflow", "pydantic", "PyYAML", "rich", "pillow",
                         "scikit-learn")


def serving_requirements() -> list[str]:
    """The served model's pip requirements: the distributions it imports, at the versions it was
    logged (and tested) with."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_DISTRIBUTIONS]


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    import mlflow
    from mlflow import MlflowClient

    mv = mlflow.register_model(model_uri, name, tags={k: str(v)[:5000] for k, v in tags.items()})
    client = MlflowClient()
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    client.set_model_version_tag(name, mv.version, "gate.decision", "pending")
    return str(mv.version)


# --- loading --------------------------------------------------------------------------------------
def champion_tags(name: str) -> tuple[str, dict[str, str]] | None:
    """The champion's version and tags (None: no champion yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        v = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return str(v.version), dict(v.tags)


def missing_model(uri: str) -> MetagenError:
    """No model at ``uri``: one line that says so and, when versions exist, names the newest, what
    the gate decided and why, and how to use it anyway."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    if not versions:
        return MetagenError(f"no model at {uri}: nothing has been promoted to champion yet (run `metagen run`)")
    newest = max(versions, key=lambda v: int(v.version))
    why = newest.tags.get("gate.failed") or newest.tags.get("gate.reason") or "not gated yet"
    return MetagenError(f"no model at {uri}: nothing has been promoted to champion yet; the newest version, "
                        f"v{newest.version}, was {newest.tags.get('gate.decision', 'not gated')} by the gate "
                        f"({why}); to use it anyway: --model models:/{name}/{newest.version}")


def download_model(uri: str, dst: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            raise missing_model(uri) from None
        raise MetagenError(f"cannot load {uri}: {err.message}") from None


def load_registered_learner(uri: str) -> tuple[Restored, AdaptationRule]:
    """A registry model (``models:/metagen@champion``) as a learner and its adaptation rule:
    weights + config, no pickle."""
    with tempfile.TemporaryDirectory(prefix="metagen-dl-") as tmp:
        local = download_model(uri, Path(tmp))
        config = json.loads(next(local.rglob("config.json")).read_text())
        blob = torch.load(next(local.rglob("weights.pt")), map_location="cpu", weights_only=True)
    learner, cfg = rebuild_learner(config["meta"], config["vae"], blob, what=uri)
    return Restored(learner, cfg, TrainState(), {"meta": config["meta"]}), AdaptationRule.from_dict(config["adaptation"])


# --- the promotion gate ---------------------------------------------------------------------------
def fid_key(extractor_digest: str, protocol_digest: str) -> str:
    """The tag that holds a version's FID under one extractor and protocol (FIDs under others do
    not compare); ``gate.eligible <same>`` says whether it passed the gate's own conditions."""
    return f"gate.fid extractor-{extractor_digest} protocol-{protocol_digest}"


def eligible_key(key: str) -> str:
    return key.replace("gate.fid ", "gate.eligible ", 1)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _eligible(client: Any, name: str, key: str) -> list[tuple[float, int]]:
    out = []
    for v in client.search_model_versions(f"name='{name}'"):
        if v.tags.get(eligible_key(key)) == "true" and key in v.tags:
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


def retry_write(call: Callable[..., Any], *args: str, attempts: int = 8) -> None:
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
    retry_write(client.set_registered_model_alias, name, alias, version)


def move_champion(client: Any, name: str, before: str | None, after: str, decision: str, reason: str,
                  run_id: str | None) -> Move:
    """``champion`` to ``after`` and ``previous`` to ``before``, recorded in the audit trail."""
    _set_alias(client, name, CHAMPION, after)
    try:
        if before is not None:
            _set_alias(client, name, PREVIOUS, before)
    except Exception:
        if before is not None:  # put champion back: a failure leaves the aliases as they were
            _set_alias(client, name, CHAMPION, before)
        raise
    return record_move(client, name, CHAMPION, before, after, decision, reason, run_id)


def reconcile(client: Any, name: str, key: str, reason: str = "", run_id: str | None = None,
              attempts: int = 10) -> str | None:
    """Make ``champion`` the eligible version with the lowest FID (ties: the older one);
    ``reason``, ``run_id``: the gate's, recorded with the move."""
    for _ in range(attempts):
        eligible = _eligible(client, name, key)
        current = alias_version(client, name, CHAMPION)
        if not eligible:
            return current
        best = str(eligible[0][1])
        if current == best:
            return best
        move_champion(client, name, current, best, "promoted", f"lowest FID of the eligible versions; {reason}", run_id)
    return alias_version(client, name, CHAMPION)


def rollback(name: str, to: str | None, reason: str) -> Move:
    """``champion`` back to ``previous`` (or version ``to``), recorded; the version it leaves is no
    longer eligible, so that a later gate's reconcile does not promote it again."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        current = alias_version(client, name, CHAMPION)
        if current is None:
            raise MetagenError(f"model {name} has no champion to roll back")
        target = to or alias_version(client, name, PREVIOUS)
        if target is None:
            raise MetagenError(f"model {name}: v{current} is champion and no version is `previous`; name one: --to N")
        if str(target) == current:
            raise MetagenError(f"model {name}: v{target} is already champion")
        try:
            client.get_model_version(name, str(target))
        except MlflowException:
            raise MetagenError(f"model {name} has no version {target}") from None
        why = reason or f"rolled back from v{current}"
        for tag, value in client.get_model_version(name, current).tags.items():
            if tag.startswith("gate.eligible ") and value == "true":
                retry_write(client.set_model_version_tag, name, current, tag, "false")
        retry_write(client.set_model_version_tag, name, current, "gate.rolled_back", why[:5000])
        return move_champion(client, name, current, str(target), "rollback", why, None)
    except MlflowException as err:
        raise MetagenError(f"cannot roll back {name}'s champion: {err.message}") from None


def alias_history(name: str) -> list[Move]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return history(MlflowClient(), name)
    except MlflowException as err:
        raise MetagenError(f"cannot read {name}'s history: {err.message}") from None


@dataclass(frozen=True)
class GateDecision:
    version: str
    decision: str
    reason: str
    fid: float
    champion_before: str | None
    champion_after: str | None
    failed: tuple[str, ...] = ()


def promote(
    name: str, version: str, report: dict[str, Any], units: FidUnits, rules: GateRules,
    champion_units: Callable[[str], FidUnits],
) -> GateDecision:
    """Apply the gate (:mod:`components.gate`) to ``version``, scored by ``report`` and ``units``;
    ``champion_units(v)`` gives the champion's units on this extractor and protocol (read back or
    re-evaluated), for the paired comparison. MLflow I/O only: tags, description, aliases."""
    from mlflow import MlflowClient

    client = MlflowClient()
    key = fid_key(report["extractor"]["digest"], report["protocol"]["digest"])
    fid = meta_row(rows_of(report), rules.sampling).fid
    verdict = own_conditions(rows_of(report), intervals_of(report), rules)
    before = alias_version(client, name, CHAMPION)
    if before is not None and before != version:
        iv, condition = against_champion(before, units, champion_units(before), rules)
        if key not in client.get_model_version(name, before).tags:
            retry_write(client.set_model_version_tag, name, before, key, repr(iv.other_fid))
            retry_write(client.set_model_version_tag, name, before, eligible_key(key),
                   str(iv.other_fid <= rules.fid_threshold).lower())
        verdict = verdict.plus(condition)
    elif before is None:
        verdict = verdict.plus(Condition("no champion yet", True))
    retry_write(client.set_model_version_tag, name, version, key, repr(fid))
    retry_write(client.set_model_version_tag, name, version, "gate.key", key)
    after = before
    if verdict.passed and rules.require_approval:  # a person decides (metagen approve): nothing moves yet
        retry_write(client.set_model_version_tag, name, version, APPROVAL, "pending")
    elif verdict.passed:
        retry_write(client.set_model_version_tag, name, version, eligible_key(key), "true")
        after = reconcile(client, name, key, verdict.reason, client.get_model_version(name, version).run_id)
        if after != version:  # a better version raced this one
            other = float(client.get_model_version(name, after).tags.get(key, "nan"))
            verdict = verdict.plus(Condition(f"v{after} (FID {other:.2f}) became champion first", False))
    decision = ("promoted" if after == version else
                "awaiting approval" if verdict.passed and rules.require_approval else "rejected")
    retry_write(client.set_model_version_tag, name, version, "gate.decision", decision)
    retry_write(client.set_model_version_tag, name, version, "gate.reason", verdict.reason[:5000])
    if verdict.failed:
        retry_write(client.set_model_version_tag, name, version, "gate.failed", "; ".join(verdict.failed)[:5000])
    run_id = client.get_model_version(name, version).run_id
    client.update_model_version(name, version, description=gate_markdown(decision, verdict.reason)
                                + f"\nEvaluated and logged by MLflow run `{run_id}`.\n")
    log.info("gate: v%s %s (%s)", version, decision, verdict.reason)
    return GateDecision(version, decision, verdict.reason, fid, before, after, verdict.failed)


def register_checkpoint(run_id: str, checkpoint: Path, params: Params, prepared_dir: Path,
                        tags: dict[str, str], rule: AdaptationRule) -> str:
    """Log the checkpoint's generator on ``run_id``, adapting and sampling by ``rule`` (the one its
    evaluation scored: the report's ``adaptation``), and register it as a new version."""
    learner = load_learner(checkpoint).learner
    test = load_split(prepared_dir, "test")
    example = test.images[test.labels == 0][: params.meta.k_shot].astype(np.float32)
    train = load_split(prepared_dir, "train")
    facts = {**data_facts(train.images), "train_classes": len(train.classes)}
    uri = log_generator(run_id, learner, rule, params, example, facts)
    return register(uri, params.registry.model_name, {**tags, "mlflow.run_id": run_id, "model_uri": uri})


def publish_model_card(name: str, version: str, card: str) -> None:
    """The card as the version's description and as ``model_card.md`` on the version's run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.update_model_version(name, version, description=card)
    client.log_text(client.get_model_version(name, version).run_id, card, "model_card.md")


def registered_facts(name: str, version: str) -> dict[str, Any] | None:
    """The data facts a version was logged with (its model's config.json)."""
    with tempfile.TemporaryDirectory(prefix="metagen-card-") as tmp:
        local = download_model(f"models:/{name}/{version}", Path(tmp))
        return json.loads(next(local.rglob("config.json")).read_text()).get("data")


def score_registered(uri: str, params: Params, root: Path) -> FidUnits:
    """Re-evaluate a registered version on the current protocol (meta-model only), adapting it by
    the rule it was registered with: its FID units, for the gate's paired comparison."""
    restored, rule = load_registered_learner(uri)
    rule = replace(rule, sampling=params.eval.sampling)
    with tempfile.TemporaryDirectory(prefix="metagen-reeval-") as tmp:
        evaluate(restored.learner, rule, params, root / params.data.prepared_dir, Path(tmp),
                 root / params.eval.features_dir, root / params.train.checkpoint_dir, baselines=False, choose=False)
        return load_units(Path(tmp) / UNITS_FILE)


def champion_units(name: str, version: str, params: Params, root: Path, extractor: str, protocol: str) -> FidUnits:
    """The units the version's own evaluation logged (``eval/fid_units.npz`` on its run) when they
    are under these digests; else the version re-evaluated on this protocol."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = MlflowClient().get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory(prefix="metagen-units-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"eval/{UNITS_FILE}", dst_path=tmp)
            units = load_units(local)
            if (units.extractor, units.protocol) == (extractor, protocol):
                return units
        except (MlflowException, MetagenError, OSError):
            pass
    log.info("champion v%s was measured under other digests: re-evaluating it on this protocol", version)
    return score_registered(f"models:/{name}/{version}", params, root)
