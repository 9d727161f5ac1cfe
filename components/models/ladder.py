"""The ladder: a hierarchical set-conditioned VAE (``model.arch: ladder``).

Two levels of spatial latent variables, top-down as in the ladder VAE (Sønderby et al. 2016) and
NVAE: ``z2`` on the coarse grid (image / 4), ``z1`` on the fine grid (image / 2), with
``p(z2 | c) p(z1 | z2, c) p(x | z1, z2, c)`` and ``q(z2 | x, c) q(z1 | x, z2, c)``. The class
context ``c`` is a set of maps at every scale, read from the K supports permutation-invariantly
(the mean of their encoder maps at each scale, or with ``set_pool: mean_max`` their mean and
maximum side by side, then a residual block; at full resolution the mean support image itself):
the convolutional context of the convolutional Neural Statistician and of SCHA-VAE (Giannone &
Winther 2022), here deterministic (no set-level latent variable). Every prior and posterior and
the decoder read the context at their own scale, so what the supports share is where each level's
latents are predicted. With ``context_warp``, each image has a third latent above both levels: 6
numbers ``w`` (prior N(0, I), posterior from the image's and the context's coarse maps) whose
affine map ``I + 0.1 w`` resamples every context map before anything reads it, so a character
drawn shifted, scaled or slanted reads the supports' maps moved onto it (spatial-transformer
reading of the context, as in Rezende et al. 2016's one-shot generalisation). With
``global_latent`` > 0, a latent vector ``g`` above the grids (prior from the context's coarse maps,
or N(0, I) without a set; posterior from the image's and the context's coarse maps) is mapped onto
the coarse grid, where the coarse level's prior, posterior and decoder read it: the grids' priors
factorise over positions given what is above them, so without it a prior sample is one texture
per position, with it one whole image (the top level of NVAE and of SCHA-VAE's hierarchy). With
``support_attention``, the decoder's coarse map also attends over every support's coarse trunk map
(one token per support and position, learned positions; each token 2 x width channels of a 4 x 4
patch): where the pooled context carries what the supports share, the attention reads a support's
own detail from the place that matches, and the fine level reads it through the coarse level
(Reed et al. 2017; Bartunov & Vetrov 2018, generative matching networks). Only the coarse grid: the
fine grid's attention (4x the positions, 16x the pairs) made a faces meta-step 1.8x slower, the
coarse one 1.03x. The supports' maps travel as the task's memory, as
:class:`components.models.vae.ConvVAE`'s.

The interface is :class:`components.models.vae.ConvVAE`'s: ``forward(x, eps, part=...)`` is a pure
function of the parameter dict (``functional_call``), the reparameterisation noise is one flat
vector an image (:attr:`noise_dim`: both levels' latents), the context one flat vector a class
(:attr:`context_size`), so MAML / Reptile / Meta-SGD, the batched meta-step, the fine-tuning, the
IWAE likelihood and sampling all run on it unchanged. With ``context_dim = 0`` it is the same
hierarchy without the set: the baselines' architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.models.vae import (LOGVAR_RANGE, PIXEL_LOG_SCALE_START, VAEBase, VAEConfig, _log_normal, _norm,
                                   attention_read)

POOLS = ("mean", "mean_max")  # set_pool: how the supports' maps are pooled (each adds its maps' channels)
WARP = 6  # context_warp: the affine latent's size (a 2 x 3 matrix)
WARP_SCALE = 0.1  # its prior's standard deviation in the matrix (0.1: 1.4 pixels of shift at 28 px)
WARP_CHANNELS = 8  # the coarse maps' channels its posterior reads (flattened, so it sees where the strokes are)
GLOBAL_CHANNELS = 8  # global_latent: the coarse maps' channels its prior and posterior read, and its own map's
Level = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # z, q mean, q log-variance, p mean, p log-variance


class _Block(nn.Module):
    """A residual block: a 1x1 skip and two 3x3 convolutions (GroupNorm, SiLU)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm = _norm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv2(F.silu(self.norm(self.conv1(F.silu(x)))))


class _SupportAttention(nn.Module):
    """What each position of a decoder map reads from the supports' maps of the same scale: single-
    head dot-product attention, a learned position added to the queries and to every support's
    tokens alike, the read added through a zero-initialised layer (it starts as the ladder without it)."""

    def __init__(self, channels: int, positions: int) -> None:
        super().__init__()
        self.q = nn.Linear(channels, channels)  # on the tokens: a 1x1 convolution as a matmul
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.pos = nn.Parameter(0.1 * torch.randn(positions, channels))
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, tokens: Tensor) -> Tensor:
        """``h`` ``(n, c, s, s)`` plus what it reads from ``tokens`` ``(G, K * s * s, c)`` (n rows in G
        contiguous groups, one per task)."""
        return h + attention_read(h, tokens, self.q, self.k, self.v, self.pos, self.out)


def _cat(*maps: Tensor | None) -> Tensor:
    return torch.cat([m for m in maps if m is not None], dim=1)


class LadderVAE(VAEBase):
    # parameter-name prefixes of the parts meta.adapt_scope names (as ConvVAE's; no FiLM layer)
    SET_ENCODER = ("set1.", "set2.")
    DECODER = ("prior_g.", "top.", "prior2.", "dec2.", "attn.", "up2.", "prior1.", "dec1.", "up1.", "out.")
    HEAD = ("dec2.",)
    FILM: tuple[str, ...] = ()

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.image_size not in (28, 32, 64):
            raise ValueError(f"image_size must be 28, 32 or 64, got {cfg.image_size}")
        self.cfg = cfg
        w, zc, cc, g, ch = cfg.width, cfg.latent_dim, cfg.context_dim, cfg.groupnorm_groups, cfg.channels
        stem = 1 if cfg.image_size == 64 else 0  # 64 px: one more halving before the two latent grids
        self.fine = cfg.image_size // 2 ** (stem + 1)
        self.coarse = self.fine // 2
        self.stem = nn.Conv2d(ch, w, 4, 2, 1) if stem else nn.Identity()
        self.enc1 = nn.Sequential(nn.Conv2d(w if stem else ch, w, 4, 2, 1), _Block(w, w, g))
        self.enc2 = nn.Sequential(_Block(w, 2 * w, g), nn.Conv2d(2 * w, 2 * w, 4, 2, 1))
        if cfg.set_pool not in POOLS:
            raise ValueError(f"set_pool must be one of {POOLS}, got {cfg.set_pool!r}")
        gd = cfg.global_latent
        tc = GLOBAL_CHANNELS if gd else 0  # the global latent's map on the coarse grid
        if cc:
            pools = POOLS.index(cfg.set_pool) + 1  # the pooled maps side by side: mean (, max)
            self.set1 = _Block(pools * w, cc, g)
            self.set2 = _Block(pools * 2 * w, cc, g)
        if cc or gd:
            self.prior2 = _Block(cc + tc, 2 * zc, g)
        if gd:  # q(g | x, c), p(g | c) (zero-initialised: N(0, I) at first; N(0, I) always without a set), g's map
            self.post_g = self._vector_head(2 * w + cc, 2 * gd)
            if cc:
                self.prior_g = self._vector_head(cc, 2 * gd)
                nn.init.zeros_(self.prior_g[-1].weight)
                nn.init.zeros_(self.prior_g[-1].bias)
            self.top = nn.Linear(gd, GLOBAL_CHANNELS * self.coarse**2)
        self.post2 = _Block(2 * w + cc + tc, 2 * zc, g)
        self.dec2 = _Block(zc + cc + tc, 2 * w, g)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1)
        self.post1 = _Block(2 * w + cc, 2 * zc, g)
        self.prior1 = _Block(w + cc, 2 * zc, g)
        self.dec1 = _Block(w + zc + cc, w, g)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(w, w, 4, 2, 1), *([nn.SiLU(), nn.ConvTranspose2d(w, w, 4, 2, 1)]
                                                                      if stem else []))
        self.out = nn.Conv2d(w + (ch if cc else 0), cfg.out_channels, 3, 1, 1)  # + the supports' mean image
        self.warps = bool(cfg.context_warp and cc)  # without a context there is nothing to warp
        if self.warps:  # q(w | x, c): from the image's and the context's coarse maps; zero-initialised: q = p at first
            self.post_w = nn.Sequential(nn.Conv2d(2 * w + cc, WARP_CHANNELS, 1), nn.SiLU(), nn.Flatten(),
                                        nn.Linear(WARP_CHANNELS * self.coarse**2, 2 * WARP))
            nn.init.zeros_(self.post_w[-1].weight)
            nn.init.zeros_(self.post_w[-1].bias)
        if self.attends:  # the decoder's coarse map reads the supports' own coarse maps
            self.attn = _SupportAttention(2 * w, self.coarse**2)
        if cfg.likelihood == "gaussian" and not cfg.pixel_scale:
            self.log_sigma = nn.Parameter(torch.full((ch,), PIXEL_LOG_SCALE_START))

    def _vector_head(self, c_in: int, out: int) -> nn.Sequential:
        """Coarse maps to a vector: a 1x1 convolution to a few channels, flattened (so it sees where
        things are), then a linear layer."""
        return nn.Sequential(nn.Conv2d(c_in, GLOBAL_CHANNELS, 1), nn.SiLU(), nn.Flatten(),
                             nn.Linear(GLOBAL_CHANNELS * self.coarse**2, out))

    # --- sizes -----------------------------------------------------------------------------
    @property
    def attends(self) -> bool:
        """The decoder attends over the supports' maps (a set-conditioned ladder with ``support_attention``)."""
        return self.conditional and self.cfg.support_attention

    @property
    def noise_dim(self) -> int:
        """Reparameterisation noise an image: the warp's latent (``context_warp``), the global one
        (``global_latent``), then both grids', flat."""
        return ((WARP if self.warps else 0) + self.cfg.global_latent
                + self.cfg.latent_dim * (self.coarse**2 + self.fine**2))

    def noise_scales(self, temperature: float, spatial_temperature: float | None = None) -> Tensor:
        """Each noise entry's scale in sampling, ``(noise_dim,)``: ``temperature`` for the latents
        above the grids (the warp's, the global one), ``spatial_temperature`` (``None``: the same)
        for both grids'."""
        above = (WARP if self.warps else 0) + self.cfg.global_latent
        spatial = temperature if spatial_temperature is None else spatial_temperature
        return torch.cat([torch.full((above,), float(temperature)),
                          torch.full((self.noise_dim - above,), float(spatial))])

    @property
    def context_size(self) -> int:
        """The class context, flat: the mean support image and the context maps of both scales."""
        if not self.conditional:
            return 0
        return self.num_pixels + self.cfg.context_dim * (self.fine**2 + self.coarse**2)

    # --- pieces ----------------------------------------------------------------------------
    def encoder(self, x: Tensor) -> Tensor:
        """The trunk: both scales' maps of ``x``, flat ``(n, F)`` (they do not see the context)."""
        h1 = self.enc1(self.stem(x))
        return torch.cat([h1.flatten(1), self.enc2(h1).flatten(1)], dim=1)

    def _maps(self, features: Tensor) -> tuple[Tensor, Tensor]:
        w, n = self.cfg.width, features.shape[0]
        split = w * self.fine**2
        return (features[:, :split].view(n, w, self.fine, self.fine),
                features[:, split:].view(n, 2 * w, self.coarse, self.coarse))

    def set_context(self, support: Tensor, features: Tensor | None = None) -> Tensor:
        """Permutation-invariant context of the K supports ``(..., K, C, H, W)``: ``(..., context_size)``."""
        lead, k = support.shape[:-4], support.shape[-4]
        flat = support.reshape(-1, *support.shape[-3:])
        h1, h2 = self._maps(self.encoder(flat) if features is None else features)

        def pooled(m: Tensor) -> Tensor:
            return m.view(-1, k, *m.shape[1:]).mean(1)

        def pooled_maps(m: Tensor) -> Tensor:
            if self.cfg.set_pool == "mean":
                return pooled(m)
            return torch.cat([pooled(m), m.view(-1, k, *m.shape[1:]).amax(1)], dim=1)

        parts = [pooled(flat), self.set1(pooled_maps(h1)), self.set2(pooled_maps(h2))]
        return torch.cat([p.flatten(1) for p in parts], dim=1).view(*lead, -1)

    def support_memory(self, features: Tensor, lead: tuple[int, ...]) -> Tensor:
        """The supports' trunk ``features`` ``(prod(lead) * K, F)`` as the task's memory, ``(*lead, K, F)``
        (:meth:`_tokens` makes each scale's tokens of it)."""
        return features.reshape(*lead, -1, features.shape[-1])

    def _tokens(self, memory: Tensor | None) -> Tensor | None:
        """The coarse tokens of the memory ``(K, F)`` or ``(G, K, F)``: ``(G, K * coarse**2, 2w)``;
        ``None`` for a decoder that does not attend."""
        if not self.attends:
            return None
        if memory is None:
            raise ValueError("a decoder with support attention needs the supports' memory")
        mem = memory if memory.dim() == 3 else memory.unsqueeze(0)
        _, h2 = self._maps(mem.reshape(-1, mem.shape[-1]))
        return h2.flatten(2).transpose(1, 2).reshape(mem.shape[0], -1, h2.shape[1])

    def _context_maps(self, context: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if not self.conditional:
            return None, None, None
        if context is None:
            raise ValueError("a set-conditioned VAE needs a class context (the set encoder's output)")
        c = context.expand(n, -1) if context.dim() == 1 else context
        cc, ch, size = self.cfg.context_dim, self.cfg.channels, self.cfg.image_size
        a, b = self.num_pixels, self.num_pixels + cc * self.fine**2
        return (c[:, :a].reshape(n, ch, size, size), c[:, a:b].reshape(n, cc, self.fine, self.fine),
                c[:, b:].reshape(n, cc, self.coarse, self.coarse))

    def _split_noise(self, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The warp's noise and the global latent's (each ``(n, 0)`` without it), the coarse
        level's, then the fine level's."""
        n, zc = noise.shape[0], self.cfg.latent_dim
        a = WARP if self.warps else 0
        t = a + self.cfg.global_latent
        b = t + zc * self.coarse**2
        return (noise[:, :a], noise[:, a:t], noise[:, t:b].reshape(n, zc, self.coarse, self.coarse),
                noise[:, b:].reshape(n, zc, self.fine, self.fine))

    @staticmethod
    def _warp(maps: tuple[Tensor, Tensor, Tensor], w: Tensor) -> tuple[Tensor, ...]:
        """Each context map resampled (bilinear, edges extended) through the affine map
        ``I + WARP_SCALE * w`` of each image's ``w`` ``(n, 6)``, in the maps' own [-1, 1] frame."""
        eye = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=w.dtype, device=w.device)
        theta = (eye + WARP_SCALE * w).view(-1, 2, 3).to(maps[0].dtype)
        return tuple(F.grid_sample(m, F.affine_grid(theta, list(m.shape), align_corners=False),
                                   padding_mode="border", align_corners=False) for m in maps)

    @staticmethod
    def _gaussian(h: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def _prior2(self, c2: Tensor | None, top: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        if c2 is None and top is None:
            zeros = torch.zeros_like(like)
            return zeros, zeros
        return self._gaussian(self.prior2(_cat(c2, top)))

    def _path(self, noise: Tensor, ctx: tuple, scale: Tensor | float = 1.0,
              posterior: tuple[Tensor, Tensor] | None = None,
              tokens: Tensor | None = None) -> tuple[Tensor, list[Level]]:
        """Top-down: each level's z drawn from its posterior (given the trunk maps ``posterior``)
        or, without them, its prior, its noise times ``scale``; the decoder's output and each
        level's (z, q, p). ``tokens``: the supports' coarse maps the decoder attends over (:meth:`_tokens`)."""
        c0, c1, c2 = ctx
        ew, eg, e2, e1 = self._split_noise(noise)
        vec_scale = scale.view(-1, 1) if isinstance(scale, Tensor) else scale
        above: list[Level] = []  # the latents above the grids: the warp's, the global one
        if self.warps:  # the image's affine latent first: the context moved onto the image, then read
            pw = (torch.zeros_like(ew), torch.zeros_like(ew))
            qw = self._gaussian(self.post_w(torch.cat([posterior[1], c2], dim=1))) if posterior is not None else pw
            w = qw[0] + vec_scale * ew * (0.5 * qw[1]).exp()
            c0, c1, c2 = self._warp((c0, c1, c2), w)
            above.append((w, *qw, *pw))
        top: Tensor | None = None
        if self.cfg.global_latent:  # the whole image's latent, then its map on the coarse grid
            pg = (self._gaussian(self.prior_g(c2)) if c2 is not None
                  else (torch.zeros_like(eg), torch.zeros_like(eg)))
            qg = self._gaussian(self.post_g(_cat(posterior[1], c2))) if posterior is not None else pg
            zg = qg[0] + vec_scale * eg * (0.5 * qg[1]).exp()
            top = self.top(zg).view(-1, GLOBAL_CHANNELS, self.coarse, self.coarse)
            above.append((zg, *qg, *pg))
        p2 = self._prior2(c2, top, e2)
        q2 = self._gaussian(self.post2(_cat(posterior[1], c2, top))) if posterior is not None else p2
        z2 = q2[0] + scale * e2 * (0.5 * q2[1]).exp()
        d = self.dec2(_cat(z2, c2, top))
        if tokens is not None:
            d = self.attn(d, tokens)
        d = self.up2(d)
        p1 = self._gaussian(self.prior1(_cat(d, c1)))
        q1 = self._gaussian(self.post1(_cat(posterior[0], d, c1))) if posterior is not None else p1
        z1 = q1[0] + scale * e1 * (0.5 * q1[1]).exp()
        out = self.out(_cat(F.silu(self.up1(self.dec1(_cat(d, z1, c1)))), c0))
        return out, [*above, (z2, *q2, *p2), (z1, *q1, *p1)]

    # --- the pure functions (``forward(part=...)`` runs them, as ConvVAE's) -----------------
    def elbo(self, x: Tensor, eps: Tensor, context: Tensor | None = None, features: Tensor | None = None,
             memory: Tensor | None = None) -> Tensor:
        """Per-image negative ELBO (nats, KL in closed form at each level given the level above)."""
        n = x.shape[0]
        maps = self._maps(self.encoder(x) if features is None else features)
        out, levels = self._path(eps, self._context_maps(context, n), posterior=maps, tokens=self._tokens(memory))
        kl = sum(_kl(q_mu, q_lv, p_mu, p_lv) for _, q_mu, q_lv, p_mu, p_lv in levels)
        return self.cfg.kl_weight * kl - self.log_likelihood(out, x)

    def log_weights(self, x: Tensor, eps: Tensor, context: Tensor | None = None, memory: Tensor | None = None,
                    proposal_scale: Tensor | None = None) -> Tensor:
        """log p(x, z_s) - log r(z_s | x) for ``eps`` ``(S, n, noise_dim)``: ``(S, n)``; r is the
        posterior, or the stratified mixture of it widened by each distinct ``proposal_scale``
        (every level's standard deviation times the component's scale, as ConvVAE's)."""
        s, n = eps.shape[0], x.shape[0]
        h1, h2 = self._maps(self.encoder(x))
        maps = (h1.repeat(s, 1, 1, 1), h2.repeat(s, 1, 1, 1))
        ctx = tuple(None if c is None else c.repeat(s, 1, 1, 1) for c in self._context_maps(context, n))
        scale = 1.0 if proposal_scale is None else proposal_scale.repeat_interleave(n).view(-1, 1, 1, 1)
        out, levels = self._path(eps.reshape(s * n, -1), ctx, scale, posterior=maps, tokens=self._tokens(memory))
        log_px = self.log_likelihood(out, x.repeat(s, 1, 1, 1))
        log_pz = sum(_log_normal(z.flatten(1), p_mu.flatten(1), p_lv.flatten(1)) for z, _, _, p_mu, p_lv in levels)
        if proposal_scale is None:
            log_qz = sum(_log_normal(z.flatten(1), q_mu.flatten(1), q_lv.flatten(1)) for z, q_mu, q_lv, _, _ in levels)
        else:
            scales, counts = torch.unique(proposal_scale, return_counts=True)
            comps = torch.stack([sum(_log_normal(z.flatten(1), q_mu.flatten(1), q_lv.flatten(1) + 2.0 * torch.log(c))
                                     for z, q_mu, q_lv, _, _ in levels) for c in scales])  # (J, S*n)
            log_qz = torch.logsumexp(comps + torch.log(counts.to(comps) / s).view(-1, 1), dim=0)
        return (log_px + log_pz - log_qz).view(s, n)

    def sample_outputs(self, noise: Tensor, mode: str = "prior", context: Tensor | None = None,
                       memory: Tensor | None = None, support: Tensor | None = None, pick: Tensor | None = None,
                       temperature: float = 1.0) -> Tensor:
        """Decoder outputs for ``noise`` ``(n, noise_dim)``: every level from its prior
        (``prior``), or from the posteriors of the supports ``pick`` chose (``support``), the
        noise scaled by ``temperature``."""
        n = noise.shape[0]
        ctx, tokens = self._context_maps(context, n), self._tokens(memory)
        if mode == "prior":
            return self._path(noise, ctx, temperature, tokens=tokens)[0]
        h1, h2 = self._maps(self.encoder(support))
        return self._path(noise, ctx, temperature, posterior=(h1[pick], h2[pick]), tokens=tokens)[0]


def _kl(q_mu: Tensor, q_lv: Tensor, p_mu: Tensor, p_lv: Tensor) -> Tensor:
    """KL(q || p) of diagonal Gaussians, summed over all but the first dimension."""
    return 0.5 * (p_lv - q_lv + (q_lv.exp() + (q_mu - p_mu).pow(2)) / p_lv.exp() - 1.0).flatten(1).sum(-1)

