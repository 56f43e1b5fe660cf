"""The location objective's training samples, chosen before any alpha is learned (the reference's
phases 1 and 2): where each sample is ablated, where each is inserted into, and the insertion value.

A cell's class share is the fraction of its pixels the segmenter labels the
class. Over `search_samples` samples of the search's seed:

- present corpus: a sample's present cell is its cell of largest share; the
  corpus is the `train_samples` samples whose present cell has the largest
  share (only shares > 0), in index order. The same pass gives the
  presence-weighted mean featuremap, the sum over samples and cells of
  r * share over the sum of shares (the reference's insertion value);
- candidate corpus, over the next `search_samples` samples (indices
  search_samples .. 2 * search_samples - 1): per sample, `probes` cells drawn
  without replacement, with weights how often each cell is a present cell
  of the present corpus plus a tenth of their mean; every unit is inserted
  at the value at each probe in turn, and the probe scores the class pixels
  the image gains, 0 where the class already covers part of the cell; the
  sample's candidate cell is its best probe; the corpus is the
  `train_samples` samples of largest gain (only gains > 0), in index order.

The next `eval_samples` of each ranking (ranks train_samples ..
train_samples + eval_samples - 1) are the evaluation corpora, held out of
training, as the reference keeps them (`evaluate`, below).

Sample i's latent depends only on (seed, i) and probe draws only on
(seed, i), so the corpora do not depend on the device or process count.
They are saved in the search's folder (corpus.npz), so a resumed search
does not build them again.
"""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.causal.ace import cell_fraction
from jaxdissect.causal.location import at_cells, cell_masks, draw_probes, probe_weights
from jaxdissect.errors import UserError
from jaxdissect.intervention import insert
from jaxdissect.io import files
from jaxdissect.progress import Progress

CORPUS_FILE = "corpus.npz"


@dataclasses.dataclass(frozen=True)
class Corpus:
    present_index: np.ndarray      # (P,) global sample indices, ascending
    present_cell: np.ndarray       # (P,) flat featuremap cell where each is ablated
    candidate_index: np.ndarray    # (C,) global sample indices, ascending (empty if not built)
    candidate_cell: np.ndarray     # (C,) flat cell where each is inserted into
    presence_value: np.ndarray     # (U,) the presence-weighted mean featuremap
    popularity: np.ndarray         # (H * W,) present samples per present cell
    eval_present_index: np.ndarray     # the evaluation corpora: the next samples of each ranking
    eval_present_cell: np.ndarray
    eval_candidate_index: np.ndarray
    eval_candidate_cell: np.ndarray


def top_samples(index, score, cell, count, skip=0):
    """(indices, cells) of the samples ranked skip .. skip + count - 1 by largest `score` > 0 (equal
    scores: lower index first), in index order; rows with index < 0 (padding) never count."""
    keep = np.flatnonzero((index >= 0) & (score > 0))
    chosen = keep[np.lexsort((index[keep], -score[keep]))[skip:skip + count]]
    chosen = chosen[np.argsort(index[chosen])]
    return index[chosen].astype(np.int32), cell[chosen].astype(np.int32)


def _featuremap_and_shares(generator, g_params, segmenter, s_params, layer, downsample, seed, index, class_index):
    """(z, r (N, H, W, U), class pixels (N, h, w) of the unedited image, share (N, H, W))."""
    z = parallel.latents_at(seed, index, generator.latent_size)
    r = generator.h(g_params, z, (layer,))[layer]
    _, pixels = segmenter.class_score(s_params, generator.f(g_params, r, layer, z), class_index, downsample)
    return z, r, pixels, cell_fraction(pixels, r.shape[1:3])


@functools.lru_cache(maxsize=None)
def _presence_fn(generator, segmenter, layer, downsample):
    """jit (g_params, s_params, seed, index, class_index) -> (best share (N,), its cell (N,),
    sum of r * share (U,), sum of shares ()), padding rows (index < 0) counting 0."""
    def fn(g_params, s_params, seed, index, class_index):
        _, r, _, share = _featuremap_and_shares(generator, g_params, segmenter, s_params, layer, downsample, seed,
                                                index, class_index)
        share = share * (index >= 0)[:, None, None]
        flat = share.reshape(len(share), -1)
        return (jnp.max(flat, axis=1), jnp.argmax(flat, axis=1), jnp.einsum("nhwu,nhw->u", r, share),
                jnp.sum(share))
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _candidate_fn(generator, segmenter, layer, downsample, probes):
    """jit (g_params, s_params, seed, index, class_index, weights, value) -> (best gain (N,), its cell (N,))
    of class pixels when every unit is set to `value` at one drawn probe cell."""
    def fn(g_params, s_params, seed, index, class_index, weights, value):
        z, r, pixels, share = _featuremap_and_shares(generator, g_params, segmenter, s_params, layer, downsample,
                                                     seed, index, class_index)
        count = lambda x: jnp.sum(x.astype(jnp.int32), axis=(1, 2))
        every_unit = jnp.ones(r.shape[-1], jnp.float32)

        def gain(cells):
            edited = generator.f(g_params, insert(every_unit, value, cell_masks(cells, r.shape[1:3]))(r), layer, z)
            gained = count(segmenter.class_score(s_params, edited, class_index, downsample)[1]) - count(pixels)
            return jnp.where(at_cells(share, cells) > 0, 0, gained)
        drawn = draw_probes(seed, index, weights, probes)                               # (N, P)
        gains = jax.vmap(gain, in_axes=1, out_axes=1)(drawn)                            # (N, P)
        best = jnp.argmax(gains, axis=1)[:, None]
        return (jnp.take_along_axis(gains, best, axis=1)[:, 0], jnp.take_along_axis(drawn, best, axis=1)[:, 0])
    return jax.jit(fn)


def _over_samples(label, fn, start, samples, batch_size):
    """Runs `fn(index)` over global samples [start, start + samples) in batches; returns the list of
    (index, outputs) per batch, as numpy."""
    progress = Progress(label, samples)
    results = []
    for offset in range(0, samples, batch_size):
        index = parallel.global_indices(start + offset, batch_size, start + samples)
        outputs = parallel.one_program_at_a_time(fn(index))
        results.append((parallel.to_host(index), [parallel.to_host(x) for x in outputs]))
        progress.update(min(offset + batch_size, samples))
    return results


def present_corpus(generator, g_params, segmenter, s_params, settings, fm_cells):
    """(present indices, cells, presence-weighted mean (U,), popularity (fm_cells,), evaluation indices,
    cells) over samples [0, settings.search_samples)."""
    fn = _presence_fn(generator, segmenter, settings.layer, settings.downsample)
    batches = _over_samples("alpha search: where the class is", lambda index: fn(
        g_params, s_params, settings.seed, index, settings.class_index), 0, settings.search_samples,
        settings.batch_size)
    index = np.concatenate([i for i, _ in batches])
    share, cell = (np.concatenate([out[k] for _, out in batches]) for k in (0, 1))
    weighted_sum = np.sum([np.asarray(out[2], np.float64) for _, out in batches], axis=0)
    share_sum = float(np.sum([float(out[3]) for _, out in batches]))
    if not share_sum > 0:
        raise UserError(f"the class never appears in the {settings.search_samples} samples the alpha search "
                        "looks through; raise --ace_search_samples or pick another class")
    present_index, present_cell = top_samples(index, share, cell, settings.train_samples)
    popularity = np.bincount(present_cell, minlength=fm_cells)
    held_out = top_samples(index, share, cell, settings.eval_samples, skip=settings.train_samples)
    return present_index, present_cell, (weighted_sum / share_sum).astype(np.float32), popularity, *held_out


def candidate_corpus(generator, g_params, segmenter, s_params, settings, popularity, value):
    """(candidate indices, cells, evaluation indices, cells) over samples [search_samples,
    2 * search_samples)."""
    fn = _candidate_fn(generator, segmenter, settings.layer, settings.downsample, settings.probes)
    weights = jnp.asarray(probe_weights(popularity.astype(np.float32)))
    value = jnp.asarray(value, jnp.float32)
    batches = _over_samples("alpha search: where the class can be added", lambda index: fn(
        g_params, s_params, settings.seed, index, settings.class_index, weights, value), settings.search_samples,
        settings.search_samples, settings.batch_size)
    index = np.concatenate([i for i, _ in batches])
    gain, cell = (np.concatenate([out[k] for _, out in batches]) for k in (0, 1))
    candidate_index, candidate_cell = top_samples(index, gain, cell, settings.train_samples)
    if not len(candidate_index):
        raise UserError(f"inserting every unit at one cell never adds the class in the {settings.search_samples} "
                        "samples the alpha search looks through; raise --ace_search_samples or --ace_probes")
    held_out = top_samples(index, gain, cell, settings.eval_samples, skip=settings.train_samples)
    return candidate_index, candidate_cell, *held_out


def load_or_build(generator, g_params, segmenter, s_params, settings, value, workdir, fm_size, candidates=True):
    """The search's Corpus: read from `workdir` if an earlier run saved it, else built (and saved by
    process 0). `value` (U,) is what the candidate probes insert; None: the presence-weighted mean.
    candidates=False builds the present corpus only."""
    path = os.path.join(workdir, CORPUS_FILE)
    fields = [f.name for f in dataclasses.fields(Corpus)]
    if files.npz_holds(path, fields):
        with np.load(path) as saved:
            return Corpus(**{k: saved[k] for k in fields})
    present_index, present_cell, presence_value, popularity, eval_present_index, eval_present_cell = present_corpus(
        generator, g_params, segmenter, s_params, settings, fm_size[0] * fm_size[1])
    candidate_index = candidate_cell = eval_candidate_index = eval_candidate_cell = np.zeros(0, np.int32)
    if candidates:
        candidate_index, candidate_cell, eval_candidate_index, eval_candidate_cell = candidate_corpus(
            generator, g_params, segmenter, s_params, settings, popularity,
            presence_value if value is None else value)
    corpus = Corpus(present_index, present_cell, candidate_index, candidate_cell, presence_value, popularity,
                    eval_present_index, eval_present_cell, eval_candidate_index, eval_candidate_cell)
    if jax.process_index() == 0:
        files.save_npz(path, dataclasses.asdict(corpus))
    return corpus
