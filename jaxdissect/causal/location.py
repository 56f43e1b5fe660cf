"""The alpha search's objective at single cells (--ace_region=location, the reference's objective).

On a batch of the training corpora (jaxdissect.causal.corpus), with S the
segmenter's soft class score averaged over each featuremap cell:

- ablation: for a present sample with present cell p, S at p of the image
  made with the units scaled by (1 - alpha) at p only;
- insertion: for a candidate sample with candidate cell q, S at q of the
  image made with r' = (1 - alpha) r + alpha value at q only (the
  reference's code reads S at the present sample's cell here, a slip).

The objective is mean(insertion) - mean(ablation). Each term looks at one
cell, so no unit gains by turning the whole image into the class, as it
does when every other cell is edited at once (ace.causal_effect, the 'image'
objective).
"""
import jax
import jax.numpy as jnp

from jaxdissect import parallel
from jaxdissect.causal.ace import cell_fraction
from jaxdissect.intervention import ablate, insert

PROBE_STREAM = 1  # the probe draw's random stream, apart from the latent of the same sample


def cell_masks(cells, fm_size):
    """(N, H, W) one-hot masks of flat cell indices `cells` (N,)."""
    height, width = fm_size
    return jax.nn.one_hot(cells, height * width, dtype=jnp.float32).reshape(-1, height, width)


def at_cells(maps, cells):
    """(N,) the maps (N, H, W) read at flat cell indices (N,)."""
    return jnp.take_along_axis(maps.reshape(len(maps), -1), cells[:, None], axis=1)[:, 0]


def probe_weights(popularity):
    """Drawing weights of the probe cells from how often each cell is a present cell: that count plus
    a tenth of the mean count, so that every cell can be drawn."""
    return popularity + 0.1 * jnp.mean(popularity)


def draw_probes(seed, index, weights, probes):
    """(N, probes) distinct flat cells per sample, drawn without replacement with probability proportional
    to `weights` (one per cell, in any shape) (Gumbel top-k); sample i's draw depends only on (seed, i)."""
    key = jax.random.PRNGKey(seed)
    log_weights = jnp.log(weights.ravel())

    def one(i):
        noise = jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, i), PROBE_STREAM), log_weights.shape)
        return jax.lax.top_k(log_weights + noise, probes)[1]
    return jax.vmap(one)(index.astype(jnp.uint32))


def edited_cell_scores(generator, g_params, segmenter, s_params, layer, class_index, downsample, z, edit, cells):
    """(N,) the class's soft score averaged over cell `cells` (N,) of the images made from h(z) at `layer`
    edited by `edit`."""
    r = jax.lax.stop_gradient(generator.h(g_params, z, (layer,))[layer])
    images = generator.f(g_params, edit(r, cell_masks(cells, r.shape[1:3])), layer, z)
    score, _ = segmenter.class_score(s_params, images, class_index, downsample)
    return at_cells(cell_fraction(score, r.shape[1:3]), cells)


def location_effect(generator, g_params, segmenter, s_params, layer, alpha, value, class_index, seed, batch,
                    downsample=1):
    """{'ace' (the objective), 'insertion', 'ablation'} of unit weights `alpha` (U,) on a batch of the
    training corpora: `batch` holds 'present_index', 'present_cell', 'candidate_index', 'candidate_cell',
    each (N,)."""
    def cell_scores(index, cells, edit):
        z = parallel.latents_at(seed, index, generator.latent_size)
        return edited_cell_scores(generator, g_params, segmenter, s_params, layer, class_index, downsample, z,
                                  edit, cells)
    ablation = cell_scores(batch["present_index"], batch["present_cell"],
                           lambda r, mask: ablate(alpha, mask)(r))
    insertion = cell_scores(batch["candidate_index"], batch["candidate_cell"],
                            lambda r, mask: insert(alpha, value, mask)(r))
    return {"ace": jnp.mean(insertion) - jnp.mean(ablation), "insertion": jnp.mean(insertion),
            "ablation": jnp.mean(ablation)}
