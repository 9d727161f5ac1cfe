"""MLflow models-from-code file: the registered generator as an ``mlflow.pyfunc`` model.

``predict(support, params={"n": 16, ...})``: adapt the meta-learned VAE on the K support images
(``(K, C, H, W)`` float32 in [0, 1], already converted like the training data) and return ``n``
generated images ``(n, C, H, W)``. Weights are a state dict read with ``torch.load(...,
weights_only=True)``: loading runs no pickled code.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class FewShotGeneratorModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import torch

        from components.models.vae import ConvVAE, VAEConfig

        with open(context.artifacts["config"]) as fh:
            self.config = json.load(fh)
        blob = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model = ConvVAE(VAEConfig(**self.config["vae"])).eval()
        self.model.load_state_dict(blob["model"])
        self.lrs = blob.get("lrs")

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - untyped: MLflow reads hints as a schema
        import torch

        from components.meta.algorithms import adapt, adapt_keys
        from components.models.vae import param_dict, sample

        cfg = self.config
        p = {**cfg["defaults"], **(params or {})}
        support = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        expected = (cfg["vae"]["channels"], cfg["vae"]["image_size"], cfg["vae"]["image_size"])
        if support.ndim != 4 or tuple(support.shape[1:]) != expected:
            raise ValueError(f"support images must be (K, {', '.join(map(str, expected))}), got {tuple(support.shape)}")
        gen = torch.Generator().manual_seed(int(p["seed"]))
        steps = int(p["steps"])
        lr: Any = float(p["inner_lr"])
        if self.lrs is not None and p.get("use_learned_lrs", True):
            lr = {k.replace("__", "."): v for k, v in self.lrs.items()}
        keys = adapt_keys(self.model, cfg["adapt_scope"])
        eps = torch.randn(max(steps, 1), support.shape[0], cfg["vae"]["latent_dim"], generator=gen)
        fast = adapt(self.model, param_dict(self.model), support, steps, lr, eps, keys)
        fast = {k: v.detach() for k, v in fast.items()}
        out = sample(self.model, fast, int(p["n"]), gen, str(p["sampling"]), support, float(p["temperature"]))
        return out.numpy()


mlflow.models.set_model(FewShotGeneratorModel())
