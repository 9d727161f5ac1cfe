"""Typed model of ``params.yaml``, the one config file that DVC and the flows share.

Every section is a frozen pydantic model with ``extra="forbid"``. ``load_params`` reports every
error with its key path (``meta.inner_lr: must be > 0, got -1``); ``apply_overrides`` handles
``--set key.path=value`` and re-validates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.errors import ParamsError
from components.lr_schedule import Schedule

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class SplitParams(_Section):
    seed: int
    fractions: tuple[float, float, float]
    classes: dict[Literal["train", "val", "test"], list[str]] | None

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if any(f < 0 for f in self.fractions):
            raise ValueError(f"fractions must be >= 0, got {list(self.fractions)}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {list(self.fractions)} (sum {sum(self.fractions):g})")
        if self.classes is not None:
            missing = {"train", "val", "test"} - set(self.classes)
            if missing:
                raise ValueError(f"classes must list train, val and test; missing {sorted(missing)}")
            seen: dict[str, str] = {}
            for split, names in self.classes.items():
                for name in names:
                    if name in seen:
                        raise ValueError(f"class {name!r} is in both {seen[name]} and {split}")
                    seen[name] = split
        return self


EMBEDDED_SOURCES = ("omniglot", "digits")  # shipped with metagen: no data.path
SET_FINETUNES = ("joint", "leave_one_out")  # eval.set_finetune: a support scored under all K supports' context, or the other K - 1's


class DataParams(_Section):
    source: Literal["omniglot", "digits", "image_folder", "celeba", "archive"]
    path: str | None
    raw_dir: str
    prepared_dir: str
    channels: Literal[1, 3]
    image_size: Literal[28, 32, 64]
    min_images_per_class: int = Field(ge=1)
    on_bad_image: Literal["skip", "fail"]
    on_duplicate: Literal["skip", "fail"]
    max_image_pixels: int = Field(ge=1)
    max_archive_members: int = Field(ge=1)
    max_archive_bytes: int = Field(ge=1)
    split: SplitParams

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.source not in EMBEDDED_SOURCES and not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        return self


class ModelParams(_Section):
    latent_dim: int = Field(ge=1)
    width: int = Field(ge=4)
    likelihood: Literal["bernoulli", "gaussian"]
    groupnorm_groups: int = Field(ge=0)
    context_dim: int = Field(ge=0)
    kl_weight: float = Field(gt=0, le=1)  # beta of the set-VAE's training objective (baselines: 1)
    support_attention: bool  # the set-VAE's decoder attends over the supports' feature maps
    binarize: bool  # binary pixels, drawn with each grey level's probability: anew in training, once for evaluation
    arch: Literal["conv", "ladder"]  # conv: one latent vector an image; ladder: two levels of spatial latents, the context at every scale
    set_pool: Literal["mean", "mean_max"]  # the ladder's pooling of the supports' maps: their mean, or their mean and maximum
    context_warp: bool  # the ladder: an affine latent of each image warps the class context onto it before it is read
    global_latent: int = Field(ge=0)  # the ladder: a latent vector of this size above both grids (0: none)
    pixel_scale: bool = False  # gaussian: the decoder predicts each pixel's scale (learned variance); false: one per channel

    @model_validator(mode="after")
    def _check(self) -> ModelParams:
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("model.binarize needs model.likelihood bernoulli (the likelihood of binary pixels)")
        if self.set_pool != "mean" and self.arch != "ladder":
            raise ValueError(f"model.set_pool {self.set_pool!r} is for model.arch ladder (conv pools the supports by their mean)")
        if self.context_warp and self.arch != "ladder":
            raise ValueError("model.context_warp is for model.arch ladder (conv's context is a vector, not maps)")
        if self.global_latent and self.arch != "ladder":
            raise ValueError("model.global_latent is for model.arch ladder (conv's one latent is a vector already)")
        if self.pixel_scale and self.likelihood != "gaussian":
            raise ValueError("model.pixel_scale needs model.likelihood gaussian (a Bernoulli pixel has no scale)")
        return self


class MetaParams(_Section):
    algorithm: Literal["maml", "fomaml", "reptile", "metasgd"]
    k_shot: int = Field(ge=1)
    k_query: int = Field(ge=1)
    meta_batch_size: int = Field(ge=1)
    inner_steps: int = Field(ge=0)
    inner_lr: float = Field(gt=0)
    outer_lr: float = Field(gt=0)
    adapt_scope: Literal["all", "decoder", "head", "film", "context"]
    grad_clip: float = Field(gt=0)
    rotate_classes: bool
    context_dropout: float = Field(ge=0, lt=1)  # share of tasks that start from a null context
    upright_steps: int = Field(ge=0)  # with rotate_classes: the last N meta-steps draw upright classes only


@dataclass(frozen=True)
class Cadence:
    """What a meta-step ends with (:meth:`TrainParams.due`): a record, a validation, a checkpoint."""

    report: bool
    validate: bool
    checkpoint: bool

    @property
    def any(self) -> bool:
        return self.report or self.validate or self.checkpoint


class TrainParams(_Section):
    """Training; the cadences are counted in meta-steps and apply alike in-process and on Ray Train."""

    seed: int
    steps: int = Field(ge=1)
    val_every: int = Field(ge=1)
    val_tasks: int = Field(ge=1)
    report_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    checkpoint_dir: str
    pretrain_steps: int = Field(ge=0)
    pretrain_batch_size: int = Field(ge=1)
    num_threads: int = Field(ge=0)
    lr_schedule: Schedule  # the outer Adam's rate over the run (meta-model and `pretrain` alike)
    num_workers: int = Field(ge=1)
    use_gpu: bool
    cpus_per_worker: float = Field(gt=0)
    max_failures: int = Field(ge=0)
    ray_address: str | None
    storage_path: str
    fail_at_step: int | None

    def due(self, step: int) -> Cadence:
        """The one cadence rule. After meta-step ``step``: validate every ``val_every`` steps,
        checkpoint every ``checkpoint_every`` steps, both at the last step; a record (history,
        MLflow, ``ray.train.report``) every ``report_every`` steps and whenever one of those happens."""
        last = step == self.steps
        validate = step % self.val_every == 0 or last
        checkpoint = step % self.checkpoint_every == 0 or last
        return Cadence(report=step % self.report_every == 0 or validate or checkpoint, validate=validate,
                       checkpoint=checkpoint)


class SearchDim(_Section):
    """A log-/uniform range (``low``, ``high``) or an explicit grid (``values``)."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    integer: bool = False
    values: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchDim:
        if self.values is not None:
            if not self.values:
                raise ValueError("values must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high, or values")
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log-uniform needs low > 0, got {self.low}")
        return self


class TuneParams(_Section):
    enabled: bool
    num_samples: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    val_every: int = Field(ge=1)
    grace_period: int = Field(ge=1)
    reduction_factor: int = Field(ge=2)
    search_space: dict[str, SearchDim]

    @model_validator(mode="after")
    def _check(self) -> TuneParams:
        allowed = {"meta.inner_lr", "meta.outer_lr", "meta.inner_steps", "meta.meta_batch_size", "model.latent_dim",
                   "model.width", "meta.grad_clip"}
        unknown = sorted(set(self.search_space) - allowed)
        if unknown:
            raise ValueError(f"search_space: cannot search {unknown}; searchable: {sorted(allowed)}")
        return self


class EvalParams(_Section):
    seed: int
    repeats: int = Field(ge=1)
    adapt_steps: int = Field(ge=0)
    inner_lr: float | None = Field(gt=0)
    samples_per_class: int = Field(ge=2)
    sampling: Literal["prior", "support"]
    temperatures: list[float] = Field(min_length=1)
    spatial_temperature: float | None = Field(ge=0)  # the ladder's grids' noise scale in sampling; None: the temperature
    extractor: Literal["auto", "domain", "inception"]
    inception_weights: str | None
    features_dir: str
    feature_steps: int = Field(ge=1)
    min_extractor_accuracy: float = Field(ge=0, le=1)
    max_classes: int | None = Field(ge=1)
    nll_samples: int = Field(ge=1)
    nll_proposal_scales: list[float] = Field(min_length=1)
    nll_max_images: int = Field(ge=1)
    nll_choice_images: int = Field(ge=0)  # 0: the NLL at the sampling settings; > 0: at the likelihood-best lr on meta-val
    nll_choice_samples: int = Field(ge=1)
    prdc_k: int = Field(ge=1)
    copy_percentile: float = Field(gt=0, lt=100)
    copy_max_shift: int = Field(ge=0, le=8)
    kid_subsets: int = Field(ge=1)
    kid_subset_size: int = Field(ge=2)
    finetune_lrs: list[float]
    lr_choice_classes: int = Field(ge=1)
    finetune_steps: int = Field(ge=0)
    set_finetune: Literal[SET_FINETUNES]  # how a set-conditioned meta-model fine-tunes on its K supports
    scratch_steps: int = Field(ge=0)
    augment_steps: int = Field(ge=1)
    pretrain_lr: float = Field(gt=0)
    bootstrap_samples: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1)
    reports_dir: str
    distributed: bool  # spread classes and scoring over Ray (RAY_ADDRESS or a local Ray); false: in-process

    @field_validator("temperatures")
    @classmethod
    def _check_temperatures(cls, temps: list[float]) -> list[float]:
        if any(not t > 0 for t in temps):
            raise ValueError("expected sampling temperatures > 0")
        return temps

    @field_validator("nll_proposal_scales")
    @classmethod
    def _check_proposal_scales(cls, scales: list[float]) -> list[float]:
        if any(not s > 0 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError("expected distinct scales > 0 of the IWAE proposal's standard deviation")
        return scales

    @field_validator("finetune_lrs")
    @classmethod
    def _check_finetune_lrs(cls, lrs: list[float]) -> list[float]:
        # 0 is a fair candidate for `pretrain` (no fine-tuning) but not for `scratch` (an untrained network)
        if any(lr < 0 for lr in lrs) or not any(lr > 0 for lr in lrs):
            raise ValueError("expected learning rates >= 0, at least one > 0")
        return lrs


class RegistryParams(_Section):
    model_name: str
    fid_threshold: float = Field(gt=0)
    max_copy_rate: float = Field(ge=0, le=1)
    require_beats_baselines: bool
    min_improvement: float = Field(ge=0, lt=1)
    require_approval: bool
    approval_wait_s: int = Field(ge=0)
    tracking_uri: str | None
    experiment: str


class ScheduleParams(_Section):
    cron: str
    timezone: str


class Params(_Section):
    data: DataParams
    model: ModelParams
    meta: MetaParams
    train: TrainParams
    tune: TuneParams
    eval: EvalParams
    registry: RegistryParams
    schedule: ScheduleParams

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.meta.adapt_scope in ("film", "context") and self.model.context_dim == 0:
            raise ValueError(f"meta.adapt_scope {self.meta.adapt_scope!r} needs a set-conditioned VAE: "
                             "set model.context_dim > 0")
        if self.model.support_attention and self.model.context_dim == 0:
            raise ValueError("model.support_attention needs a set-conditioned VAE: set model.context_dim > 0")
        if self.eval.spatial_temperature is not None and self.model.arch != "ladder":
            raise ValueError(f"eval.spatial_temperature {self.eval.spatial_temperature:g} needs spatial latents "
                             f"(model.arch ladder, not {self.model.arch}): set it to null")
        need = self.meta.k_shot + self.meta.k_query
        if need > self.data.min_images_per_class:
            raise ValueError(
                f"meta.k_shot + meta.k_query = {need} must be <= data.min_images_per_class "
                f"({self.data.min_images_per_class}): every class must hold a support and a query set"
            )
        return self

    def extractor_kind(self) -> Literal["domain", "inception"]:
        """``eval.extractor`` resolved: ``auto`` is the standard Inception network for RGB data (the
        field's FID) and the domain CNN for grayscale (Inception says little about pen strokes)."""
        if self.eval.extractor != "auto":
            return self.eval.extractor
        return "inception" if self.data.channels == 3 else "domain"

    def digest(self) -> str:
        """Stable hash of every value, for lineage tags and cache keys."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "params"
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = msg.replace("Input should be greater than", "must be >").replace("Input should be", "must be")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        shown = "" if e["type"] in {"extra_forbidden", "missing"} or "input" not in e else f", got {e['input']!r}"
        if isinstance(e.get("input"), dict):
            shown = ""
        lines.append(f"{loc}: {msg}{shown}")
    return "; ".join(lines)  # one line, however many problems


def validate_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"invalid {source}: {format_validation_error(err)}") from None


def read_params_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``dotted`` (e.g. ``meta.inner_lr``) set to ``value``."""
    out = json.loads(json.dumps(raw))
    keys = dotted.split(".")
    node = out
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ParamsError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        raw = set_path(raw, key.strip(), value)
    return raw


def overlay_updates(overlay: str | Path, base: dict[str, Any]) -> dict[str, Any]:
    """A configuration overlay (``configs/*.yaml``: only what differs from params.yaml) as dotted
    updates of ``base``; every key must be one of ``base``'s values (``tune.search_space`` whole)."""
    raw = read_params_dict(overlay)
    updates: dict[str, Any] = {}

    def walk(prefix: str, node: Any, into: Any) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if not isinstance(into, dict) or key not in into:
                raise ParamsError(f"{overlay}: {dotted} is not a key of params.yaml")
            if isinstance(value, dict) and isinstance(into[key], dict) and dotted != "tune.search_space":
                walk(f"{dotted}.", value, into[key])
            else:
                updates[dotted] = value

    walk("", raw, base)
    return updates


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                overlay: str | Path | None = None) -> Params:
    """Validate ``path`` with an ``overlay`` file's values, then ``overrides``, applied; an error
    says which is at fault."""
    base = read_params_dict(path)
    if overlay is not None:
        for key, value in overlay_updates(overlay, base).items():
            base = set_path(base, key, value)
    raw = apply_overrides(base, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        detail = format_validation_error(err)
    if overrides:
        try:
            Params.model_validate(base)
        except ValidationError:
            pass
        else:  # the file alone is valid: the overrides broke it
            raise ParamsError(f"invalid --set override ({' '.join(overrides)}) on {path}: {detail}") from None
    raise ParamsError(f"invalid {path}: {detail}") from None


def with_updates(params: Params, updates: dict[str, Any]) -> Params:
    """Apply dotted-key updates (e.g. a Tune sample) and re-validate."""
    raw = params.model_dump(mode="json")
    for key, value in updates.items():
        raw = set_path(raw, key, value)
    return validate_params(raw, source="updated params")


def flatten(params: Params) -> dict[str, Any]:
    """``{"meta.inner_lr": 0.1, ...}``: for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", params.model_dump(mode="json"))
    return out
