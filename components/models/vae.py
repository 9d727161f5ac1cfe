"""The generator: a convolutional VAE whose ELBO is a pure function of its parameters.

``forward(x, eps)`` returns the per-image negative ELBO in nats, so
``torch.func.functional_call(model, params, (x, eps))`` is the loss as a function of a parameter
dict: MAML differentiates through it. GroupNorm (never BatchNorm) keeps that path exact: there are
no running statistics shared across tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from components.params import ModelParams

Params = dict[str, Tensor]


@dataclass(frozen=True)
class VAEConfig:
    channels: int
    image_size: int
    latent_dim: int
    width: int
    likelihood: str
    groupnorm_groups: int

    @classmethod
    def from_params(cls, model: ModelParams, channels: int, image_size: int) -> VAEConfig:
        return cls(channels, image_size, model.latent_dim, model.width, model.likelihood, model.groupnorm_groups)


def _norm(groups: int, ch: int) -> nn.Module:
    if groups <= 0:
        return nn.Identity()
    g = math.gcd(groups, ch)
    return nn.GroupNorm(g, ch)


class ConvVAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.image_size not in (28, 32, 64):
            raise ValueError(f"image_size must be 28, 32 or 64, got {cfg.image_size}")
        self.cfg = cfg
        n_down = 2 if cfg.image_size <= 32 else 3
        self.base = cfg.image_size // (2**n_down)
        chans = [cfg.width * (2**i) for i in range(n_down)]
        enc: list[nn.Module] = []
        c_in = cfg.channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), _norm(cfg.groupnorm_groups, c), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        feat = chans[-1] * self.base * self.base
        self.enc_head = nn.Linear(feat, 2 * cfg.latent_dim)
        self.dec_in = nn.Linear(cfg.latent_dim, feat)
        dec: list[nn.Module] = []
        rev = list(reversed(chans))
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else cfg.width
            dec += [_norm(cfg.groupnorm_groups, c), nn.SiLU(), nn.ConvTranspose2d(c, c_out, 4, 2, 1)]
        dec += [nn.SiLU(), nn.Conv2d(cfg.width, cfg.channels, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        if cfg.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.full((cfg.channels,), -2.0))

    @property
    def num_pixels(self) -> int:
        return self.cfg.channels * self.cfg.image_size * self.cfg.image_size

    # --- pieces --------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc_head(self.encoder(x))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 6.0)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output: Bernoulli logits or Gaussian pre-sigmoid means."""
        h = self.dec_in(z).view(z.shape[0], -1, self.base, self.base)
        return self.decoder(h)

    def mean_image(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def log_likelihood(self, out: Tensor, x: Tensor) -> Tensor:
        if self.cfg.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            log_sigma = self.log_sigma.clamp(min=-5.0).view(1, -1, 1, 1)
            mean = torch.sigmoid(out)
            ll = -0.5 * ((x - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return ll.flatten(1).sum(-1)

    # --- the pure function --------------------------------------------------------------
    def forward(self, x: Tensor, eps: Tensor | None = None, part: str = "elbo") -> Tensor | tuple[Tensor, Tensor]:
        """Per-image negative ELBO (nats) given the reparameterisation noise ``eps``.

        ``part="encode"`` / ``"decode"`` expose the halves through the same entry point, so that
        ``functional_call`` can run them with a parameter dict too.
        """
        if part == "encode":
            return self.encode(x)
        if part == "decode":
            return self.decode(x)
        assert eps is not None
        mu, logvar = self.encode(x)
        z = mu + eps * (0.5 * logvar).exp()
        out = self.decode(z)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return kl - self.log_likelihood(out, x)


def build_vae(cfg: VAEConfig, seed: int) -> ConvVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvVAE(cfg)


def param_dict(model: nn.Module) -> Params:
    return {k: v.detach() for k, v in model.named_parameters()}


def neg_elbo(model: ConvVAE, params: Params, x: Tensor, eps: Tensor) -> Tensor:
    """Per-image negative ELBO in nats, as a function of ``params``."""
    return functional_call(model, params, (x, eps))


def per_pixel_loss(model: ConvVAE, params: Params, x: Tensor, eps: Tensor) -> Tensor:
    """Mean negative ELBO per pixel: the scale the inner loop works on (stable step sizes)."""
    return neg_elbo(model, params, x, eps).mean() / model.num_pixels


def encode(model: ConvVAE, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
    return functional_call(model, params, (x,), {"part": "encode"})


def decode(model: ConvVAE, params: Params, z: Tensor) -> Tensor:
    return functional_call(model, params, (z,), {"part": "decode"})


@torch.no_grad()
def reconstruct(model: ConvVAE, params: Params, x: Tensor) -> Tensor:
    mu, _ = encode(model, params, x)
    return model.mean_image(decode(model, params, mu))


@torch.no_grad()
def sample(
    model: ConvVAE,
    params: Params,
    n: int,
    generator: torch.Generator,
    mode: str = "prior",
    support: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """``n`` images (mean of p(x|z)) with z from the prior or from the supports' posteriors.

    ``support`` mode: z from the equal mixture of q(z|x_k) over the K support images, scaled by
    ``temperature`` around each component's mean.
    """
    latent = model.cfg.latent_dim
    noise = torch.randn(n, latent, generator=generator)
    if mode == "prior":
        z = noise * temperature
    elif mode == "support":
        if support is None or len(support) == 0:
            raise ValueError("support sampling needs support images")
        mu, logvar = encode(model, params, support)
        pick = torch.randint(0, len(support), (n,), generator=generator)
        z = mu[pick] + temperature * noise * (0.5 * logvar[pick]).exp()
    else:
        raise ValueError(f"sampling mode must be 'prior' or 'support', got {mode!r}")
    return model.mean_image(decode(model, params, z))
