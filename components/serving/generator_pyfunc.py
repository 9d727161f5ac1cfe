"""MLflow models-from-code file: the registered generator as an ``mlflow.pyfunc`` model.

``predict(support, params={"n": 16, "seed": 0, "sampling": ...})``: adapt the meta-learned VAE on
the K support images (``(K, C, H, W)`` float32 in [0, 1], already converted like the training
data) by the adaptation rule it was evaluated and registered with, and return ``n`` generated
images ``(n, C, H, W)``. Weights are a state dict read with ``torch.load(..., weights_only=True)``:
loading runs no pickled code.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from components.meta.adaptation import AdaptationRule
from components.meta.trainer import rebuild_learner
from components.models.vae import param_dict
from components.serving.data_facts import far_from_training


MAX_N, MAX_SUPPORT = 1024, 64  # images one request generates (held in memory at once) / adapts on


def _refuse(reason: str) -> None:
    """A bad request: MLflow's scoring server answers 400 with this reason (not a stack trace)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(reason, error_code=INVALID_PARAMETER_VALUE)


class FewShotGeneratorModel(PythonModel):
    def load_context(self, context: Any) -> None:
        with open(context.artifacts["config"]) as fh:
            self.config = json.load(fh)
        blob = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        learner, _ = rebuild_learner(self.config["meta"], self.config["vae"], blob, what="registered model")
        self.model = learner.model.eval()
        self.lrs = learner.inner_lrs()
        self.rule = AdaptationRule.from_dict(self.config["adaptation"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - untyped: MLflow reads hints as a schema
        cfg = self.config
        p = {**cfg["defaults"], **(params or {})}
        support = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        expected = (cfg["vae"]["channels"], cfg["vae"]["image_size"], cfg["vae"]["image_size"])
        if support.ndim != 4 or tuple(support.shape[1:]) != expected:
            _refuse(f"support images must be (K, {', '.join(map(str, expected))}), got {tuple(support.shape)}")
        if not 1 <= len(support) <= MAX_SUPPORT:
            _refuse(f"support: {len(support)} images; expected 1 to {MAX_SUPPORT}")
        if not torch.isfinite(support).all() or support.min() < 0 or support.max() > 1:
            _refuse("support: pixel values must be finite and in [0, 1]")
        if not isinstance(p["n"], (int, np.integer)) or not 1 <= int(p["n"]) <= MAX_N:
            _refuse(f"params.n: {p['n']!r}; expected an integer from 1 to {MAX_N}")
        if p["sampling"] not in ("prior", "support"):
            _refuse(f"params.sampling: {p['sampling']!r}; expected 'prior' or 'support'")
        if not isinstance(p["seed"], (int, np.integer)) or not 0 <= int(p["seed"]) < 2**63:
            _refuse(f"params.seed: {p['seed']!r}; expected an integer from 0 to 2**63 - 1")
        unlike = far_from_training(support.numpy(), cfg.get("data"))
        if unlike:
            logging.getLogger("metagen").warning("%s", unlike)
        gen = torch.Generator().manual_seed(int(p["seed"]))
        out = self.rule.generate(self.model, param_dict(self.model), self.lrs, support, int(p["n"]), gen,
                                 str(p["sampling"]))
        return out.numpy()


mlflow.models.set_model(FewShotGeneratorModel())
