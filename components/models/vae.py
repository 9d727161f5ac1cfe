"""The generator: a convolutional VAE whose ELBO is a pure function of its parameters.

``forward(x, eps)`` returns the per-image negative ELBO in nats, so
``torch.func.functional_call(model, params, (x, eps))`` is the loss as a function of a parameter
dict: MAML differentiates through it. GroupNorm (never BatchNorm) keeps that path exact: there are
no running statistics shared across tasks.

With ``context_dim > 0`` the VAE is *set-conditioned* (Neural Statistician / Variational
Homoencoder): a permutation-invariant set encoder reads the K support images of a class and gives a
class context ``c``; the prior ``p(z|c)``, the encoder ``q(z|x,c)`` and the decoder ``p(x|z,c)``
(through FiLM, a per-channel scale and shift of every decoder block) are conditioned on it. The
context travels in the parameter dict under the key :data:`CONTEXT`, so the inner loop of MAML,
Reptile or Meta-SGD can adapt it like any parameter (CAVIA), starting from the set encoder's output.

With ``support_attention`` the decoder also attends over the supports themselves (Reed et al. 2017,
few-shot autoregressive density estimation; Bartunov & Vetrov 2018, generative matching networks):
the encoder trunk's feature map of each support (``base x base`` positions) is a memory, and at its
first (coarsest) stage the decoder adds what its positions read from that memory by dot-product
attention with learned positions. The memory travels in the parameter dict under :data:`MEMORY`:
data of the task, never adapted by the inner loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from components.params import ModelParams
from components.seeding import global_rng

Weights = dict[str, Tensor]
CONTEXT = "context"  # the task-specific entry of a parameter dict (not a network weight)
MEMORY = "memory"  # the supports' trunk features the decoder attends over (task data, never adapted)
TASK_KEYS = (CONTEXT, MEMORY)
LOGVAR_RANGE = (-10.0, 6.0)  # every Gaussian's log-variance is clamped to it
PIXEL_LOG_SCALE_START = -2.0  # a discretized Gaussian pixel's log-scale at initialisation (sigma 0.14 of the range)
MIN_LOG_SCALE = -5.0  # and its floor (sigma 1.7 bins): the likelihood is bounded by the bin anyway, the gradient is not
ARCHS = ("conv", "ladder")  # ConvVAE (one latent vector an image) | LadderVAE (components.models.ladder)


@dataclass(frozen=True)
class VAEConfig:
    channels: int
    image_size: int
    latent_dim: int
    width: int
    likelihood: str
    groupnorm_groups: int
    context_dim: int = 0  # 0: the unconditional VAE (the baselines' architecture)
    kl_weight: float = 1.0  # beta of the training/adaptation objective; the IWAE NLL never uses it
    support_attention: bool = False  # the decoder attends over the supports' feature maps (needs context_dim > 0)
    arch: str = "conv"  # one of ARCHS
    set_pool: str = "mean"  # the ladder's pooling of the supports' maps: "mean" | "mean_max"
    context_warp: bool = False  # the ladder: an image's affine latent moves the class context onto it
    global_latent: int = 0  # the ladder: a latent vector of this size above both grids
    pixel_scale: bool = False  # gaussian: the decoder's second half of channels is each pixel's log-scale

    @classmethod
    def from_params(cls, model: ModelParams, channels: int, image_size: int) -> VAEConfig:
        return cls(channels, image_size, model.latent_dim, model.width, model.likelihood, model.groupnorm_groups,
                   model.context_dim, model.kl_weight, model.support_attention, model.arch,
                   model.set_pool, model.context_warp, model.global_latent, model.pixel_scale)

    def cache_key(self) -> dict[str, object]:
        """The fields a cached model is keyed on: ``pixel_scale`` absent when off, so the caches made
        before it existed still hold."""
        return {k: v for k, v in self.__dict__.items() if not (k == "pixel_scale" and not v)}

    @property
    def out_channels(self) -> int:
        """The decoder's output channels: the means (logits), and each pixel's log-scale with ``pixel_scale``."""
        return self.channels * (2 if self.pixel_scale else 1)


def _norm(groups: int, ch: int) -> nn.Module:
    if groups <= 0:
        return nn.Identity()
    g = math.gcd(groups, ch)
    return nn.GroupNorm(g, ch)


class VAEBase(nn.Module):
    """What every architecture shares: its config, its size, and the likelihood of its output."""

    cfg: VAEConfig
    # ``part`` -> the method ``forward`` runs: every piece has the one entry point
    # ``torch.func.functional_call`` calls, so each runs on a parameter dict too
    PARTS: dict[str, str] = {"elbo": "elbo", "trunk": "encoder", "set": "set_context", "iwae": "log_weights",
                             "sample": "sample_outputs"}

    def forward(self, *args: Tensor, part: str = "elbo", **kwargs: Tensor | float | str | None) -> Tensor:
        """The piece ``part`` of the model (default: the per-image negative ELBO in nats); the
        arguments are that method's."""
        if part not in self.PARTS:
            raise ValueError(f"part must be one of {sorted(self.PARTS)}, got {part!r}")
        return getattr(self, self.PARTS[part])(*args, **kwargs)

    @property
    def num_pixels(self) -> int:
        return self.cfg.channels * self.cfg.image_size * self.cfg.image_size

    @property
    def conditional(self) -> bool:
        return self.cfg.context_dim > 0

    def mean_image(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out[:, : self.cfg.channels])

    def noise_scales(self, temperature: float, spatial_temperature: float | None = None) -> Tensor:
        """Each noise entry's scale in sampling, ``(noise_dim,)``: ``temperature`` everywhere;
        ``spatial_temperature`` is for architectures with spatial latent maps (the ladder)."""
        if spatial_temperature is not None:
            raise ValueError(f"{type(self).__name__} has no spatial latents: a spatial temperature needs model.arch ladder")
        return torch.full((self.noise_dim,), float(temperature))

    def log_likelihood(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image of the decoder's output ``out``: Bernoulli logits, or discretized
        Gaussian means (pre-sigmoid) with the per-channel ``log_sigma``, or with ``pixel_scale`` each
        pixel's log-scale from the decoder (its channels after the means, offset by the same -2 start)."""
        if self.cfg.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            ch = self.cfg.channels
            if self.cfg.pixel_scale:
                log_sigma = (out[:, ch:] + PIXEL_LOG_SCALE_START).clamp(min=MIN_LOG_SCALE)
            else:
                log_sigma = self.log_sigma.clamp(min=MIN_LOG_SCALE).view(1, -1, 1, 1)
            ll = discretized_gaussian_log_prob(x, torch.sigmoid(out[:, :ch]), log_sigma)
        return ll.flatten(1).sum(-1)


class ConvVAE(VAEBase):
    # parameter-name prefixes of the parts meta.adapt_scope names
    SET_ENCODER = ("set_embed.", "set_head.")
    DECODER = ("dec_in.", "decoder.", "film.")
    HEAD = ("dec_in.",)
    FILM = ("film.",)
    PARTS = {**VAEBase.PARTS, "encode": "encode", "decode": "decode"}

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
        ctx = cfg.context_dim
        self.enc_head = nn.Linear(feat + ctx, 2 * cfg.latent_dim)
        self.dec_in = nn.Linear(cfg.latent_dim + ctx, feat)
        dec: list[nn.Module] = []
        rev = list(reversed(chans))
        self._film_channels: list[int] = []
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else cfg.width
            dec += [_norm(cfg.groupnorm_groups, c), nn.SiLU(), nn.ConvTranspose2d(c, c_out, 4, 2, 1)]
            self._film_channels.append(c)
        dec += [nn.SiLU(), nn.Conv2d(cfg.width, cfg.out_channels, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        if ctx:
            hidden = 2 * feat if feat < 256 else 256
            self.set_embed = nn.Linear(feat, hidden)          # per support image, then mean-pooled
            self.set_head = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, ctx))
            self.prior_head = nn.Linear(ctx, 2 * cfg.latent_dim)
            self.film = nn.Linear(ctx, 2 * sum(self._film_channels))
            for layer in (self.prior_head, self.film):  # start as the unconditional VAE: N(0, I), identity FiLM
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.attends:
            c0, positions = chans[-1], self.base * self.base
            self.attn_q = nn.Linear(c0, c0)  # on the tokens: a 1x1 convolution as a matmul (cheaper on CPU)
            self.attn_k = nn.Linear(c0, c0)
            self.attn_v = nn.Linear(c0, c0)
            self.attn_pos = nn.Parameter(0.1 * torch.randn(positions, c0))
            self.attn_out = nn.Linear(c0, c0)
            nn.init.zeros_(self.attn_out.weight)  # starts as the decoder without attention
            nn.init.zeros_(self.attn_out.bias)
        if cfg.likelihood == "gaussian" and not cfg.pixel_scale:
            self.log_sigma = nn.Parameter(torch.full((cfg.channels,), PIXEL_LOG_SCALE_START))

    @property
    def attends(self) -> bool:
        """The decoder attends over the supports (a set-conditioned VAE with ``support_attention``)."""
        return self.conditional and self.cfg.support_attention

    @property
    def noise_dim(self) -> int:
        """Reparameterisation noise an image: the latent vector."""
        return self.cfg.latent_dim

    @property
    def context_size(self) -> int:
        """The class context's length (0: unconditional)."""
        return self.cfg.context_dim

    # --- pieces --------------------------------------------------------------------------
    def _with_context(self, h: Tensor, context: Tensor | None) -> Tensor:
        """``h`` with the context appended: one context ``(d,)`` for every row, or one per row
        ``(n, d)`` (the batched meta-step puts several tasks in one batch)."""
        if not self.conditional:
            return h
        if context is None:
            raise ValueError("a set-conditioned VAE needs a class context (the set encoder's output)")
        return torch.cat([h, context.expand(h.shape[0], -1)], dim=-1)

    def set_context(self, support: Tensor, features: Tensor | None = None) -> Tensor:
        """Permutation-invariant class context from the K support images: mean of embeddings.
        ``(K, C, H, W)`` gives ``(d,)``; a batch of tasks ``(B, K, C, H, W)`` gives ``(B, d)``.
        ``features``: the encoder trunk's output for the flattened supports, if already computed."""
        lead = support.shape[:-4]
        flat = support.reshape(-1, *support.shape[-3:])
        emb = self.set_embed(self.encoder(flat) if features is None else features)
        pooled = emb.view(*lead, -1, emb.shape[-1]).mean(-2)
        return self.set_head(pooled)

    def support_memory(self, features: Tensor, lead: tuple[int, ...]) -> Tensor:
        """The supports' trunk ``features`` ``(prod(lead) * K, F)`` as attention memory: one token per
        support and position, ``(*lead, K * base**2, channels)``."""
        c0 = features.shape[-1] // (self.base * self.base)
        tokens = features.view(-1, c0, self.base * self.base).transpose(1, 2)  # (N, P, c0)
        return tokens.reshape(*lead, -1, c0)

    def _attend(self, h: Tensor, memory: Tensor | None) -> Tensor:
        """What each position of the decoder's coarsest map ``h`` ``(n, c, b, b)`` reads from the
        supports' memory: ``(M, c)`` for every row, or ``(G, M, c)`` for G contiguous groups of
        rows (the tasks of a batched meta-step)."""
        if memory is None:
            raise ValueError("a decoder with support attention needs the supports' memory")
        mem = memory if memory.dim() == 3 else memory.unsqueeze(0)  # (G, M, c)
        return attention_read(h, mem, self.attn_q, self.attn_k, self.attn_v, self.attn_pos, self.attn_out)

    def prior(self, context: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z | c) (standard normal for the unconditional VAE)."""
        latent = self.cfg.latent_dim
        if not self.conditional:
            zeros = torch.zeros(n, latent, dtype=self.dec_in.weight.dtype, device=self.dec_in.weight.device)
            return zeros, zeros
        mu, logvar = self.prior_head(context).chunk(2, dim=-1)
        return mu.expand(n, -1), logvar.clamp(*LOGVAR_RANGE).expand(n, -1)

    def encode(self, x: Tensor, context: Tensor | None = None, features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x, c); ``features`` = ``self.encoder(x)`` when the caller already has it (the
        trunk does not depend on the context, so an inner loop on the context computes it once)."""
        h = self.enc_head(self._with_context(self.encoder(x) if features is None else features, context))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor, context: Tensor | None = None, memory: Tensor | None = None) -> Tensor:
        """Decoder output: Bernoulli logits or Gaussian pre-sigmoid means."""
        h = self.dec_in(self._with_context(z, context)).view(z.shape[0], -1, self.base, self.base)
        if not self.conditional:
            return self.decoder(h)
        if self.attends:
            h = h + self._attend(h, memory)
        film = self.film(context)
        offset, block = 0, 0
        for layer in self.decoder:
            h = layer(h)
            if isinstance(layer, (nn.GroupNorm, nn.Identity)) and block < len(self._film_channels):
                c = self._film_channels[block]
                scale, shift = film[..., offset : offset + c], film[..., offset + c : offset + 2 * c]
                h = h * (1 + scale.reshape(-1, c, 1, 1)) + shift.reshape(-1, c, 1, 1)
                offset, block = offset + 2 * c, block + 1
        return h

    # --- the pure function --------------------------------------------------------------
    def elbo(self, x: Tensor, eps: Tensor, context: Tensor | None = None, features: Tensor | None = None,
             memory: Tensor | None = None) -> Tensor:
        """Per-image negative ELBO (nats) given the reparameterisation noise ``eps``; ``features``:
        the trunk's output for ``x``, if already computed."""
        mu, logvar = self.encode(x, context, features)
        z = mu + eps * (0.5 * logvar).exp()
        out = self.decode(z, context, memory)
        p_mu, p_logvar = self.prior(context, x.shape[0])
        kl = 0.5 * (p_logvar - logvar + (logvar.exp() + (mu - p_mu).pow(2)) / p_logvar.exp() - 1.0).sum(-1)
        return self.cfg.kl_weight * kl - self.log_likelihood(out, x)

    def sample_outputs(self, noise: Tensor, mode: str = "prior", context: Tensor | None = None,
                       memory: Tensor | None = None, support: Tensor | None = None, pick: Tensor | None = None,
                       temperature: float = 1.0) -> Tensor:
        """Decoder outputs for ``noise`` ``(n, latent)``: z from the class prior (``prior``) or from
        the posteriors of the supports ``pick`` chose (``support``), scaled by ``temperature``."""
        if mode == "prior":
            p_mu, p_logvar = self.prior(context, noise.shape[0])
            z = p_mu + temperature * noise * (0.5 * p_logvar).exp()
        else:
            mu, logvar = self.encode(support, context)
            z = mu[pick] + temperature * noise * (0.5 * logvar[pick]).exp()
        return self.decode(z, context, memory)

    def log_weights(self, x: Tensor, eps: Tensor, context: Tensor | None = None, memory: Tensor | None = None,
                    proposal_scale: Tensor | None = None) -> Tensor:
        """log p(x, z_s) - log r(z_s | x) for ``eps`` of shape (S, n, latent): (S, n).

        The proposal r is q(z|x) itself, or with ``proposal_scale`` (S,) the mixture of q(z|x) with
        its standard deviation times each distinct scale, weighted by how many of the S samples use
        that scale (z_s is drawn from the component of its own scale: stratified mixture sampling,
        so the mean of the weights stays an unbiased estimate of p(x) for any scales)."""
        s, n = eps.shape[0], x.shape[0]
        mu, logvar = self.encode(x, context)
        std = (0.5 * logvar).exp()
        if proposal_scale is None:
            z = mu + eps * std                                      # (S, n, latent)
        else:
            z = mu + eps * std * proposal_scale.view(s, 1, 1)
        out = self.decode(z.reshape(s * n, -1), context, memory)
        log_px = self.log_likelihood(out, x.repeat(s, 1, 1, 1)).view(s, n)
        p_mu, p_logvar = self.prior(context, n)
        log_pz = _log_normal(z, p_mu, p_logvar)
        if proposal_scale is None:
            log_qz = _log_normal(z, mu, logvar)
        else:
            scales, counts = torch.unique(proposal_scale, return_counts=True)
            comps = torch.stack([_log_normal(z, mu, logvar + 2.0 * torch.log(c)) for c in scales])  # (J, S, n)
            log_qz = torch.logsumexp(comps + torch.log(counts.to(comps) / s).view(-1, 1, 1), dim=0)
        return log_px + log_pz - log_qz


def attention_read(h: Tensor, tokens: Tensor, q: nn.Module, k: nn.Module, v: nn.Module, pos: Tensor,
                   out: nn.Module) -> Tensor:
    """What each position of a decoder map ``h`` ``(n, c, s, s)`` reads from the supports' ``tokens``
    ``(G, K * s * s, c)``, ``(n, c, s, s)``: the n rows are G contiguous groups, one per task (keys
    and values computed once a task, not once an image). Single-head dot-product attention, the
    learned positions ``pos`` ``(s * s, c)`` added to the queries and to every support's tokens alike."""
    n, c = h.shape[:2]
    groups = tokens.shape[0]
    if n % groups:
        raise ValueError(f"{n} rows cannot be split into the memory's {groups} groups")
    queries = (q(h.flatten(2).transpose(1, 2)) + pos).reshape(groups, -1, c)  # (G, n/G * P, c)
    keys = k(tokens) + pos.repeat(tokens.shape[1] // pos.shape[0], 1)
    weights = torch.softmax(queries @ keys.transpose(-1, -2) / math.sqrt(c), dim=-1)  # (G, n/G * P, M)
    read = out((weights @ v(tokens)).reshape(n, -1, c))  # (n, P, c)
    return read.transpose(1, 2).reshape(h.shape)


PIXEL_LEVELS = 256  # 8-bit images: x in {0, 1/255, ..., 1}


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """log P(x) of 8-bit pixels (``x`` = k / 255) under a Gaussian of ``mean`` and ``exp(log_sigma)``
    integrated over each pixel's bin, the end bins stretched to infinity (as PixelCNN++'s
    discretized logistic; Ho et al. 2020 for the Gaussian): a probability, so summed over a
    256-level image it is a likelihood whose -log / (pixels * ln 2) is bits per dimension."""
    half = 0.5 / (PIXEL_LEVELS - 1)
    sigma = log_sigma.exp()
    edge = torch.full_like(x, 1e4)  # "infinity" in standard deviations: finite, so no 0 * inf in second-order grads
    a = torch.where(x <= half, -edge, (x - half - mean) / sigma)
    b = torch.where(x >= 1 - half, edge, (x + half - mean) / sigma)
    flip = (a + b) > 0  # in the upper tail, 1 - Phi is the accurate side: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi).clamp(max=-1e-30))


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return (-0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)


def new_vae(cfg: VAEConfig) -> ConvVAE:
    """The generator ``cfg.arch`` names (the ladder is a :class:`ConvVAE` in interface)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {cfg.arch!r}")
    with global_rng():  # its initialisers draw from the global RNG, which a seeded build holds
        if cfg.arch == "ladder":
            from components.models.ladder import LadderVAE  # the ladder builds on this module's pieces

            return LadderVAE(cfg)  # type: ignore[return-value]
        return ConvVAE(cfg)


def build_vae(cfg: VAEConfig, seed: int) -> ConvVAE:
    """``cfg``'s generator initialised from ``seed`` (the same weights whatever other threads build)."""
    with global_rng(seed):
        return new_vae(cfg)


def param_dict(model: nn.Module) -> Weights:
    return {k: v.detach() for k, v in model.named_parameters()}


def _call(model: ConvVAE, params: Weights, part: str, *args: Tensor, task: bool = True,
          **kwargs: Tensor | float | str | None) -> Tensor | tuple[Tensor, Tensor]:
    """``model``'s piece ``part`` under the weights of ``params``; with ``task``, the task's
    entries of ``params`` (its context, and the supports' memory if there is one) go in as well."""
    weights = {k: v for k, v in params.items() if k not in TASK_KEYS}
    if task:
        kwargs["context"] = params.get(CONTEXT)
        if MEMORY in params:
            kwargs["memory"] = params[MEMORY]
    return functional_call(model, weights, args, {"part": part, **kwargs})


def set_context(model: ConvVAE, params: Weights, support: Tensor, features: Tensor | None = None) -> Tensor:
    """The set encoder's context of ``support`` ``(K, ...)``: ``(d,)``; of ``(B, K, ...)``: ``(B, d)``."""
    return _call(model, params, "set", support, task=False, features=features)


def trunk(model: ConvVAE, params: Weights, x: Tensor) -> Tensor:
    """The encoder's convolutional trunk (shared by q(z|x,c) and the set encoder; no context)."""
    return _call(model, params, "trunk", x, task=False)


def with_context(model: ConvVAE, params: Weights, support: Tensor, keep: Tensor | float = 1.0) -> Weights:
    """The starting point of a task's adaptation: the weights plus, for a set-conditioned VAE, the
    set encoder's context from ``support`` (times ``keep``: 0 starts from the null context) and,
    if its decoder attends over the supports, their memory (times ``keep`` too)."""
    if not model.conditional:
        return dict(params)
    weights = {k: v for k, v in params.items() if k not in TASK_KEYS}
    if not model.attends:
        return {**weights, CONTEXT: set_context(model, weights, support) * keep}
    feats = trunk(model, weights, support)
    return {**weights, CONTEXT: set_context(model, weights, support, feats) * keep,
            MEMORY: model.support_memory(feats, tuple(support.shape[:-4])) * keep}


def neg_elbo(model: ConvVAE, params: Weights, x: Tensor, eps: Tensor, features: Tensor | None = None) -> Tensor:
    """Per-image negative ELBO in nats, as a function of ``params`` (and its context, if any);
    ``features``: the trunk's output for ``x``, if already computed."""
    return _call(model, params, "elbo", x, eps, features=features)


def per_pixel_loss(model: ConvVAE, params: Weights, x: Tensor, eps: Tensor) -> Tensor:
    """Mean negative ELBO per pixel: the scale the inner loop works on (stable step sizes)."""
    return neg_elbo(model, params, x, eps).mean() / model.num_pixels


def encode(model: ConvVAE, params: Weights, x: Tensor) -> tuple[Tensor, Tensor]:
    return _call(model, params, "encode", x)


def decode(model: ConvVAE, params: Weights, z: Tensor) -> Tensor:
    return _call(model, params, "decode", z)


def channels_last(params: Weights) -> Weights:
    """``params`` with every 4-d tensor (the convolutions' weights) in the channels-last layout: the
    same values; on a CPU, oneDNN's convolutions over a large batch run 1.5-1.6x faster that way
    (`benchmarks/eval_kernels.py`)."""
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in params.items()}


@torch.no_grad()
def iwae_nll(model: ConvVAE, params: Weights, x: Tensor, samples: int, generator: torch.Generator,
             proposal_scales: tuple[float, ...] = (1.0,), chunk: int = 2048,
             layout: Literal["channels_last", "contiguous"] = "channels_last") -> Tensor:
    """Importance-weighted estimate of -log p(x) (Burda et al. 2016), nats per image: (n,).

    An upper bound on the true NLL (in expectation) that tightens as ``samples`` grows, whatever the
    proposal; ``samples = 1`` with ``proposal_scales = (1.0,)`` is the negative ELBO. The proposal is
    the stratified mixture of q(z|x) with its standard deviation times each of ``proposal_scales``
    (``samples`` split evenly, the first scales taking the remainder): an amortised Gaussian
    posterior is narrower than the true one (more so when trained with beta < 1), and a wider
    proposal tightens the bound at equal cost. ``layout``: the memory layout of the images and the
    convolutions' weights (the same values either way; ``contiguous`` is PyTorch's default).
    """
    latent, j = model.noise_dim, len(proposal_scales)
    if j == 0 or min(proposal_scales) <= 0:
        raise ValueError(f"proposal_scales must be positive, got {proposal_scales}")
    counts = [samples // j + (1 if i < samples % j else 0) for i in range(j)]
    scale = torch.repeat_interleave(torch.tensor(proposal_scales, dtype=x.dtype), torch.tensor(counts))
    extra = {} if proposal_scales == (1.0,) else {"proposal_scale": scale}
    if layout == "channels_last":  # samples x images decoded at once: the layout oneDNN is fastest in
        params = channels_last(params)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    out = []
    per = max(1, chunk // max(samples, 1))
    for i in range(0, len(x), per):
        xb = x[i : i + per]
        eps = torch.randn(samples, len(xb), latent, generator=generator).to(xb)
        log_w = _call(model, params, "iwae", xb, eps, **extra)
        out.append(math.log(samples) - torch.logsumexp(log_w, dim=0))
    return torch.cat(out)


@torch.no_grad()
def sample(
    model: ConvVAE,
    params: Weights,
    n: int,
    generator: torch.Generator,
    mode: str = "prior",
    support: Tensor | None = None,
    temperature: float = 1.0,
    spatial_temperature: float | None = None,
) -> Tensor:
    """``n`` images (mean of p(x|z)) with z from the prior or from the supports' posteriors.

    ``prior``: z ~ p(z) (the class prior p(z|c) of a set-conditioned VAE), scaled by
    ``temperature``. ``support``: z from the equal mixture of q(z|x_k) over the K support images,
    scaled by ``temperature`` around each component's mean. ``spatial_temperature`` (the ladder):
    its spatial maps' noise scale instead (0: each map its mean given the latents above it).
    """
    device = next(iter(params.values())).device
    noise = torch.randn(n, model.noise_dim, generator=generator)
    if spatial_temperature is not None:  # each level's z = mean + noise * std: the scale moves into the noise
        noise, temperature = noise * model.noise_scales(temperature, spatial_temperature), 1.0
    noise = noise.to(device)
    pick = None
    if mode == "support":
        if support is None or len(support) == 0:
            raise ValueError("support sampling needs support images")
        pick = torch.randint(0, len(support), (n,), generator=generator).to(device)
    elif mode != "prior":
        raise ValueError(f"sampling mode must be 'prior' or 'support', got {mode!r}")
    out = _call(model, params, "sample", noise, mode=mode, support=support, pick=pick, temperature=temperature)
    return model.mean_image(out)
