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

`evaluate` scores a final alpha as the reference does, on the held-out
corpora, with the segmenter's hard labels instead of its soft score.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def hard_cell_shares(generator, g_params, segmenter, s_params, layer, class_index, downsample, r, z, edit=None):
    """(N, H * W) the class's share of every featuremap cell in the segmentation (hard pixels) of the
    images made from `r` (edited by `edit` if given)."""
    images = generator.f(g_params, r if edit is None else edit(r), layer, z)
    _, mask = segmenter.class_score(s_params, images, class_index, downsample)
    return cell_fraction(mask, r.shape[1:3]).reshape(len(r), -1)


@functools.lru_cache(maxsize=None)
def _evaluation_fn(generator, segmenter, layer, downsample, kind):
    """jit (g_params, s_params, seed, class_index, weights (S, U), value, index, cells) -> {measure: (S, 2)
    sums over the valid rows (index >= 0) of the class share before and after each unit set of `weights`
    is edited}: kind 'present' ablates at each sample's cell ('ablated_cell', read there) and at every cell
    ('ablated_image', the whole image's share); 'candidate' inserts `value` at each cell ('inserted_cell')."""
    def fn(g_params, s_params, seed, class_index, weights, value, index, cells):
        z = parallel.latents_at(seed, index, generator.latent_size)
        r = generator.h(g_params, z, (layer,))[layer]
        shares = functools.partial(hard_cell_shares, generator, g_params, segmenter, s_params, layer, class_index,
                                   downsample, r, z)
        valid = (index >= 0).astype(jnp.float32)
        total = lambda x: jnp.sum(x * valid)
        at_cell, mask = lambda s: total(at_cells(s, cells)), cell_masks(cells, r.shape[1:3])
        whole_image = lambda s: total(jnp.mean(s, axis=1))
        before = shares()
        if kind == "present":
            def edited(alpha):
                return {"ablated_cell": at_cell(shares(ablate(alpha, mask))),
                        "ablated_image": whole_image(shares(ablate(alpha)))}
            unedited = {"ablated_cell": at_cell(before), "ablated_image": whole_image(before)}
        else:
            def edited(alpha):
                return {"inserted_cell": at_cell(shares(insert(alpha, value, mask)))}
            unedited = {"inserted_cell": at_cell(before)}
        after = jax.lax.map(edited, weights)
        return {k: jnp.stack([jnp.broadcast_to(unedited[k], after[k].shape), after[k]], axis=1) for k in after}
    return jax.jit(fn)


def evaluation_sets(alpha, ranking, counts=(10, 20)):
    """{name: (U,) unit weights} the reference evaluates an alpha with: its top n units switched fully
    ('top_n') and at their alpha ('top_n_weighted'), for each n of `counts` (at most the unit count)."""
    alpha = np.asarray(alpha, np.float32)
    sets = {}
    for n in sorted({min(c, len(alpha)) for c in counts}):
        top = np.zeros_like(alpha)
        top[np.asarray(ranking[:n])] = 1.0
        sets[f"top_{n}"], sets[f"top_{n}_weighted"] = top, top * alpha
    return sets


def evaluate(generator, g_params, segmenter, s_params, settings, alpha, ranking, value, corpus):
    """The reference's evaluation of an alpha on the held-out corpora (corpus.eval_*), hard pixels: for each
    unit set of `evaluation_sets`, the class's mean share [before, after] at the present samples' cells
    ablated there ('ablated_cell'), over their whole images ablated everywhere ('ablated_image'), and at the
    candidate samples' cells with the units inserted there ('inserted_cell')."""
    sets = evaluation_sets(alpha, ranking)
    weights = jnp.asarray(np.stack(list(sets.values())))
    value = jnp.asarray(value, jnp.float32)
    totals, counts = {}, {}
    for kind in ("present", "candidate"):
        index, cells = getattr(corpus, f"eval_{kind}_index"), getattr(corpus, f"eval_{kind}_cell")
        counts[kind] = len(index)
        fn = _evaluation_fn(generator, segmenter, settings.layer, settings.downsample, kind)
        for start in range(0, len(index), settings.batch_size):
            batch = (parallel.global_rows(index, start, settings.batch_size, -1),
                     parallel.global_rows(cells, start, settings.batch_size, 0))
            sums = jax.tree.map(parallel.to_host, fn(g_params, s_params, settings.seed, settings.class_index,
                                                     weights, value, *batch))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    result = {"present_samples": counts["present"], "candidate_samples": counts["candidate"], "unit_sets": {}}
    for s, name in enumerate(sets):
        result["unit_sets"][name] = {
            k: [round(float(x) / max(counts["present" if k.startswith("ablated") else "candidate"], 1), 6)
                for x in v[s]] for k, v in totals.items()}
    return result
