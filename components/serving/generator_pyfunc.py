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
            raise ValueError(f"support images must be (K, {', '.join(map(str, expected))}), got {tuple(support.shape)}")
        unlike = far_from_training(support.numpy(), cfg.get("data"))
        if unlike:
            logging.getLogger("metagen").warning("%s", unlike)
        gen = torch.Generator().manual_seed(int(p["seed"]))
        out = self.rule.generate(self.model, param_dict(self.model), self.lrs, support, int(p["n"]), gen,
                                 str(p["sampling"]))
        return out.numpy()


mlflow.models.set_model(FewShotGeneratorModel())
