"""Artifact units: units whose ablation makes generated images more realistic (the paper's table 1).

Image quality is a Fréchet distance between Gaussians fitted to features of
generated images and of real reference images (the paper used Inception
features, FID; here the segmenter's encoder: its last stage, averaged over
positions, then mapped to `dims` dimensions by a fixed random map with
orthonormal columns). A covariance estimated from fewer samples than
dimensions is singular and the distance biased, so the mode asks for at
least 2 samples per dimension, and reports the distance's spread over random
halves of the generated samples, the size of its sampling noise. A unit set is judged against random sets of the same size, each
ablated at every position of the layer, all on the same latents. When a
discriminator is at hand it also ranks units automatically (by how much
ablating each alone raises its mean realism logit) and scores each set.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.checkpoint import load_model
from jaxdissect.errors import UserError
from jaxdissect.intervention import ablate
from jaxdissect.models.discriminator import ProGANDiscriminator
from jaxdissect.progress import Progress
from jaxdissect.segmentation import upernet

FEATURE_STAGE = "conv_out3"  # the encoder's last stage


def frechet_distance(mu1, cov1, mu2, cov2):
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) for symmetric PSD covariances (float64).

    tr (cov1 cov2)^(1/2) = tr (s cov2 s)^(1/2) with s = cov1^(1/2): s cov2 s is
    symmetric PSD and similar to cov1 cov2, so both square roots come from
    eigendecompositions (negative round-off eigenvalues clipped to 0).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s = _psd_sqrt(cov1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov2 @ s), 0.0, None)))
    return float(np.sum(np.square(mu1 - mu2)) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian(features):
    """(mean, covariance) of (N, D) features, float64 (covariance with N - 1)."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def load_discriminator(path, resolution):
    """(ProGANDiscriminator, params) from a 'proggan_discriminator' model folder for `resolution` images."""
    params, meta = load_model(path, kind="proggan_discriminator")
    widths = tuple(int(w) for w in meta["widths"])
    if 2 ** (len(widths) + 1) != resolution:
        raise UserError(f"{path}: a discriminator for {2 ** (len(widths) + 1)}px images; the generator makes "
                        f"{resolution}px")
    return ProGANDiscriminator(widths), jax.tree.map(jnp.asarray, params)


def pooled_features(segmenter, s_params, images):
    """(N, D) the segmenter encoder's last-stage features of images in [-1, 1], averaged over positions."""
    _, intermediates = upernet.features(segmenter.config, s_params, segmenter.preprocess(images))
    return jnp.mean(intermediates[FEATURE_STAGE], axis=(1, 2))


@functools.lru_cache(maxsize=None)
def _scores_fn(generator, segmenter, discriminator, layer):
    """jit (g_params, s_params, d_params, z, alpha) -> (features (N, D), realism logits (N,) or None)."""
    def fn(g_params, s_params, d_params, z, alpha):
        r = generator.h(g_params, z, (layer,))[layer]
        images = generator.f(g_params, ablate(alpha)(r), layer, z)
        features = pooled_features(segmenter, s_params, images) if segmenter is not None else None
        logits = discriminator.apply(d_params, images) if discriminator is not None else None
        return features, logits
    return jax.jit(fn)


def _batches(generator, seed, samples, batch_size):
    """(z, number of real rows) for batches of samples [0, samples) of `seed` (the last one padded)."""
    parallel.check_batch_size(batch_size)
    for start in range(0, samples, batch_size):
        z = parallel.global_latents(seed, start, batch_size, generator.latent_size)
        yield z, min(batch_size, samples - start)


def generated_scores(generator, g_params, layer, alpha, seed, samples, batch_size, segmenter=None, s_params=None,
                     discriminator=None, d_params=None):
    """(features (samples, D) or None, mean realism logit or None) with `alpha` ablated everywhere."""
    fn = _scores_fn(generator, segmenter, discriminator, layer)
    features, logits = [], []
    for z, rows in _batches(generator, seed, samples, batch_size):
        f, d = fn(g_params, s_params, d_params, z, jnp.asarray(alpha, jnp.float32))
        if f is not None:
            features.append(parallel.to_host(f)[:rows])
        if d is not None:
            logits.append(parallel.to_host(d)[:rows])
    return (np.concatenate(features) if features else None,
            float(np.mean(np.concatenate(logits))) if logits else None)


def rank_by_discriminator(generator, g_params, discriminator, d_params, layer, n_units, seed, samples, batch_size):
    """(U,) rise of the mean realism logit when each unit alone is ablated, on the same samples."""
    def logit(alpha):
        return generated_scores(generator, g_params, layer, alpha, seed, samples, batch_size,
                                discriminator=discriminator, d_params=d_params)[1]
    base = logit(np.zeros(n_units, np.float32))
    rise = np.zeros(n_units)
    progress = Progress("ranking units by discriminator", n_units, unit="units")
    for u in range(n_units):
        rise[u] = logit(np.eye(n_units, dtype=np.float32)[u]) - base
        progress.update(u + 1)
    return rise


def toy_world_features(segmenter, s_params, seed, samples, resolution, batch_size):
    """(samples, D) encoder features of toy-world scenes, the real images of the toy world."""
    from jaxdissect.toyworld import world
    key = jax.random.PRNGKey(seed)
    features = []
    for b, start in enumerate(range(0, samples, batch_size)):
        images, _ = world.render(jax.random.fold_in(key, b), batch_size, resolution)
        features.append(np.asarray(pooled_features(segmenter, s_params, images))[:samples - start])
    return np.concatenate(features)


def image_features(segmenter, s_params, images, batch_size):
    """(N, D) encoder features of (N, R, R, 3) images in [-1, 1], in batches."""
    return np.concatenate([np.asarray(pooled_features(segmenter, s_params, jnp.asarray(images[i:i + batch_size])))
                           for i in range(0, len(images), batch_size)])


def feature_map(dims, out_dims, seed=0):
    """(dims, out_dims) a fixed random map with orthonormal columns (the identity if out_dims >= dims)."""
    if out_dims >= dims:
        return np.eye(dims)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dims, out_dims)))
    return q


def spread_over_halves(features, mu_ref, cov_ref, draws=10, seed=0):
    """Standard deviation of the Fréchet distance of random halves of `features` (N, D) to the reference."""
    rng = np.random.default_rng(seed)
    half = len(features) // 2
    return float(np.std([frechet_distance(*gaussian(features[rng.permutation(len(features))[:half]]), mu_ref,
                                          cov_ref) for _ in range(draws)]))


def compare_unit_sets(generator, g_params, segmenter, s_params, layer, unit_sets, reference, seed, samples,
                      batch_size, dims, discriminator=None, d_params=None):
    """Fréchet distance to the reference features (and mean realism logit) with each of `unit_sets` ablated.

    `unit_sets`: {name: (U,) indicator}; `reference`: (M, D) real features,
    compared in `dims` dimensions (see module doc). Returns {name:
    {'frechet', 'frechet_spread' (over random halves), 'realism'}}.
    """
    project = feature_map(reference.shape[1], dims)
    mu_ref, cov_ref = gaussian(reference @ project)
    results = {}
    progress = Progress("image quality per unit set", len(unit_sets), unit="sets")
    for i, (name, alpha) in enumerate(unit_sets.items()):
        features, realism = generated_scores(generator, g_params, layer, alpha, seed, samples, batch_size,
                                             segmenter, s_params, discriminator, d_params)
        features = features @ project
        results[name] = {"frechet": frechet_distance(*gaussian(features), mu_ref, cov_ref),
                         "frechet_spread": spread_over_halves(features, mu_ref, cov_ref), "realism": realism}
        progress.update(i + 1)
    return results
