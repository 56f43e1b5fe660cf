"""The toy world: procedural outdoor scenes with exact per-pixel class labels.

`render(key, batch_size, resolution)` draws a batch of scenes (images in
[-1, 1], NHWC, and int32 labels indexing CLASS_NAMES). It is a pure, jitted
JAX function, so a training loop gets endless data from a seed with
`render(jax.random.fold_in(key, step), batch_size)` and no host transfer.

Rendering is per pixel in painter's order: sky and ground, then clouds and
the road, then buildings and trees, the nearest (lowest base row) in front.
Colours get a per-scene light factor and a little per-pixel noise; labels are
exact. Layout rules are described in `jaxdissect.toyworld.layout`.
"""
import functools
import math

import jax
import jax.numpy as jnp

from jaxdissect.toyworld import layout as _layout

CLASS_NAMES = ("-", "sky", "cloud", "grass", "road", "tree", "building", "roof", "dome", "door", "window")
CATEGORIES = ("", "object", "object", "object", "object", "object", "object", "part", "part", "part", "part")
(SKY, CLOUD, GRASS, ROAD, TREE, BUILDING, ROOF, DOME, DOOR, WINDOW) = range(1, len(CLASS_NAMES))

PIXEL_NOISE = 0.03  # amplitude of the per-pixel colour noise, in [0, 1] colour units


def label_meta():
    """Class names and categories, JSON-serialisable."""
    return {"names": list(CLASS_NAMES), "categories": list(CATEGORIES)}


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution"))
def render(key, batch_size, resolution=64):
    """`batch_size` scenes from `key`: images (N, R, R, 3) float32 in [-1, 1] and labels (N, R, R) int32."""
    return draw_layouts(sample_layouts(key, batch_size, resolution), resolution)


def render_favouring(key, batch_size, class_odds, resolution=64, pool_factor=4):
    """Like `render`, but scenes showing class c are `class_odds[c]` times as likely to be drawn.

    `class_odds` has one entry per CLASS_NAMES, 1 for classes left alone. The
    batch is drawn from a pool of `pool_factor * batch_size` renders (see
    `favoured_picks`), so the tilt is exact only as the pool grows; it serves
    to rebalance training data, not to measure.
    """
    pool_key, pick_key = jax.random.split(key)
    images, labels = render(pool_key, batch_size * pool_factor, resolution)
    picked = favoured_picks(pick_key, labels, batch_size, class_odds)
    return images[picked], labels[picked]


def favoured_picks(key, labels, count, class_odds):
    """Indices of `count` distinct scenes of `labels` (P, H, W), drawn with odds proportional to the
    product of `class_odds[c]` over the classes c each scene shows (Gumbel top-k)."""
    shown = jax.vmap(lambda l: jnp.bincount(l.ravel(), length=len(class_odds)) > 0)(labels)
    log_odds = shown @ jnp.log(jnp.asarray(class_odds, jnp.float32))
    return jax.lax.top_k(log_odds + jax.random.gumbel(key, log_odds.shape), count)[1]


def sample_layouts(key, batch_size, resolution=64):
    """The layouts `render(key, batch_size, resolution)` draws (a dict of batched arrays)."""
    keys = jax.random.split(key, batch_size)
    return jax.vmap(lambda k: _layout.sample_layout(k, resolution))(keys)


def draw_layouts(layouts, resolution=64, chunk=32):
    """Images and labels of a batch of layouts (see `render`).

    Scenes are drawn `chunk` at a time in a loop. Besides keeping the working
    set in cache, the loop boundary stops XLA from fusing the layout sampling
    into the per-pixel kernels, where it would be recomputed for every pixel
    (3x slower; `optimization_barrier` does not prevent it on CPU).
    """
    return jax.lax.map(lambda scene: _draw_scene(scene, resolution), layouts, batch_size=chunk)


def _pixel_grid(resolution):
    """Row and column index of every pixel, and the pixel-centre coordinates (+0.5)."""
    y, x = jnp.mgrid[0:resolution, 0:resolution].astype(jnp.float32)
    return y, x, y + 0.5, x + 0.5


def _in_box(y, x, x0, x1, top, base):
    return (x >= x0) & (x < x1) & (y >= top) & (y < base)


def _draw_scene(scene, resolution):
    y, x, cy, cx = _pixel_grid(resolution)
    texture_key, noise_key = jax.random.split(scene["noise_key"])

    labels, colours = _draw_background(scene, y, cy, cx, resolution, texture_key)

    building_labels, building_colours = jax.vmap(
        lambda b: _draw_building(b, y, x, cy, cx))(scene["buildings"])
    tree_labels, tree_colours = jax.vmap(
        lambda t: _draw_tree(t, y, x, cy, cx))(scene["trees"])
    object_labels = jnp.concatenate([building_labels, tree_labels])
    object_colours = jnp.concatenate([building_colours, tree_colours])
    # Depth: the lower an object's base row, the nearer it is; index breaks ties.
    bases = jnp.concatenate([scene["buildings"]["base"], scene["trees"]["base"]])
    depth = bases + 1e-3 * jnp.arange(bases.shape[0])
    depth_map = jnp.where(object_labels > 0, depth[:, None, None], -jnp.inf)
    nearest = jnp.argmax(depth_map, axis=0)
    covered = jnp.isfinite(depth_map.max(axis=0))
    nearest_label = jnp.take_along_axis(object_labels, nearest[None], axis=0)[0]
    nearest_colour = jnp.take_along_axis(object_colours, nearest[None, :, :, None], axis=0)[0]
    labels = jnp.where(covered, nearest_label, labels)
    colours = jnp.where(covered[..., None], nearest_colour, colours)

    noise = PIXEL_NOISE * (2 * _hash_noise(noise_key, colours.shape) - 1)
    colours = jnp.clip(colours * scene["light"] + noise, 0.0, 1.0)
    return colours * 2.0 - 1.0, labels.astype(jnp.int32)


def _draw_background(scene, y, cy, cx, resolution, texture_key):
    """Sky with clouds above the horizon, textured grass with the road below."""
    horizon = scene["horizon"]
    in_sky = y < horizon

    t_sky = jnp.clip(cy / horizon, 0.0, 1.0)[..., None]
    sky_top, sky_bottom = scene["sky"]
    colours = sky_top * (1 - t_sky) + sky_bottom * t_sky
    labels = jnp.full(y.shape, SKY)

    cloud_mask, cloud_colour = _draw_clouds(scene["clouds"], cy, cx)
    cloud_mask &= in_sky
    labels = jnp.where(cloud_mask, CLOUD, labels)
    colours = jnp.where(cloud_mask[..., None], cloud_colour, colours)

    t_ground = jnp.clip((cy - horizon) / (resolution - horizon), 0.0, 1.0)[..., None]
    grass = scene["grass"]["far"] * (1 - t_ground) + scene["grass"]["near"] * t_ground
    grass = grass * (1 + 0.16 * (_blotches(texture_key, resolution) - 0.5))[..., None]
    road_mask, road_colour = _draw_road(scene["road"], horizon, cy, cx, resolution)
    ground_labels = jnp.where(road_mask, ROAD, GRASS)
    ground_colours = jnp.where(road_mask[..., None], road_colour, grass)

    labels = jnp.where(in_sky, labels, ground_labels)
    colours = jnp.where(in_sky[..., None], colours, ground_colours)
    return labels, colours


def _hash_noise(key, shape):
    """Uniform [0, 1) noise from an integer hash of (element index, key).

    Several times faster on CPU than `jax.random.uniform` for per-pixel noise,
    and statistically plenty for a texture.
    """
    seed = jax.random.bits(key, (), jnp.uint32)
    h = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape) * jnp.uint32(0x9E3779B1) ^ seed
    # The murmur3 32-bit finaliser: every input bit affects every output bit.
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return (h >> 8).astype(jnp.float32) / (1 << 24)


def _blotches(key, resolution, cells=8):
    """Smooth low-frequency noise in [0, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = jax.random.uniform(key, (cells, cells))
    return jax.image.resize(coarse, (resolution, resolution), "linear")


def _draw_clouds(clouds, cy, cx):
    """Union of every present cloud's ellipses; grey shading darkens towards each cloud's bottom."""
    dy = (cy[None, None] - clouds["cy"][..., None, None]) / clouds["ry"][..., None, None]
    dx = (cx[None, None] - clouds["cx"][..., None, None]) / clouds["rx"][..., None, None]
    in_puff = (dx ** 2 + dy ** 2 <= 1.0) & clouds["puff_present"][..., None, None]
    in_cloud = in_puff.any(axis=1) & clouds["present"][:, None, None]  # (clouds, R, R)
    bottom = (clouds["cy"][:, 0] + clouds["ry"][:, 0])[:, None, None]
    shade = 1.0 - 0.15 * jnp.clip(1.0 - (bottom - cy[None]) / (2 * clouds["ry"][:, 0, None, None]), 0.0, 1.0)
    grey = clouds["grey"][:, None, None] * shade
    # Later clouds are drawn over earlier ones.
    last = (in_cloud.shape[0] - 1) - jnp.argmax(in_cloud[::-1], axis=0)
    cloud_grey = jnp.take_along_axis(grey, last[None], axis=0)[0]
    return in_cloud.any(axis=0), jnp.repeat(cloud_grey[..., None], 3, axis=-1)


def _draw_road(road, horizon, cy, cx, resolution):
    """A band from the bottom edge towards the horizon, narrowing linearly."""
    t = jnp.clip((cy - horizon) / (resolution - horizon), 0.0, 1.0)
    centre = road["x_top"] + (road["x_bottom"] - road["x_top"]) * t
    half_width = road["half_top"] + (road["half_bottom"] - road["half_top"]) * t
    mask = road["present"] & (cy > horizon) & (jnp.abs(cx - centre) <= half_width)
    colour = road["colour"] * (0.92 + 0.08 * t)[..., None]
    return mask, colour


def _draw_building(b, y, x, cy, cx):
    """One building's labels (0 where it is not) and colours: wall, roof or dome, door, windows."""
    wall = _in_box(y, x, b["x0"], b["x1"], b["top"], b["base"])
    middle = (b["x0"] + b["x1"]) / 2
    half_width = (b["x1"] - b["x0"]) / 2

    apex = b["top"] - b["roof_height"]
    slope_run = (half_width + b["roof_overhang"]) * (cy - apex) / b["roof_height"]
    gable = (y >= apex) & (y < b["top"]) & (jnp.abs(cx - middle) <= slope_run)
    dome = (y < b["top"]) & (((cx - middle) / b["dome_half_width"]) ** 2
                             + ((cy - b["top"]) / b["roof_height"]) ** 2 <= 1.0)
    roof = jnp.where(b["is_dome"], dome, gable)

    door = _in_box(y, x, b["door_x0"], b["door_x1"], b["door_top"], b["base"])
    window, window_row, window_col = _window_cells(b, y, x)

    label = jnp.select([door, window, wall, roof & b["is_dome"], roof],
                       [DOOR, WINDOW, BUILDING, DOME, ROOF], 0)
    label = jnp.where(b["present"], label, 0)

    wall_colour = b["wall_colour"] * (1.0 - 0.1 * (y - b["top"]) / (b["base"] - b["top"]))[..., None]
    # Light from the left: the right slope of a gable and the right of a dome are darker.
    roof_shade = jnp.where(b["is_dome"], 1.0 - 0.25 * (cx - middle) / b["dome_half_width"],
                           jnp.where(cx > middle, 0.78, 1.0))
    window_shade = b["window_shade"][window_row, window_col]
    colour = jnp.select(
        [door[..., None], window[..., None], wall[..., None]],
        [b["door_colour"], b["window_colour"] * window_shade[..., None], wall_colour],
        b["roof_colour"] * roof_shade[..., None])
    return label, colour


def _window_cells(b, y, x):
    """Window mask of a building's grid, and each pixel's (clipped) grid row and column."""
    rel_x, rel_y = x - b["window_x0"], y - b["window_y0"]
    col = jnp.floor(rel_x / b["window_pitch_x"])
    row = jnp.floor(rel_y / b["window_pitch_y"])
    in_col = (rel_x >= 0) & (col < b["window_cols"]) & (rel_x - col * b["window_pitch_x"] < b["window_w"])
    in_row = (rel_y >= 0) & (row < b["window_rows"]) & (rel_y - row * b["window_pitch_y"] < b["window_h"])
    row = jnp.clip(row, 0, _layout.MAX_WINDOW_ROWS - 1).astype(jnp.int32)
    col = jnp.clip(col, 0, _layout.MAX_WINDOW_COLS - 1).astype(jnp.int32)
    return in_col & in_row, row, col


def _draw_tree(t, y, x, cy, cx):
    """One tree's labels and colours: a trunk and a round or conical crown resting on it."""
    trunk = _in_box(y, x, t["trunk_x0"], t["trunk_x1"], t["trunk_top"], t["base"])
    # Round crowns overlap the trunk top by a fifth of their height; cones by one row.
    round_centre = t["trunk_top"] - 0.8 * t["crown_ry"]
    round_dx = (cx - t["centre"]) / t["crown_rx"]
    round_dy = (cy - round_centre) / t["crown_ry"]
    round_crown = round_dx ** 2 + round_dy ** 2 <= 1.0
    cone_bottom = t["trunk_top"] + 1
    cone_apex = cone_bottom - t["conifer_height"]
    cone_half = t["crown_rx"] * (cy - cone_apex) / t["conifer_height"]
    cone = (cy >= cone_apex) & (y < cone_bottom) & (jnp.abs(cx - t["centre"]) <= cone_half)
    crown = jnp.where(t["is_conifer"], cone, round_crown)

    label = jnp.where(t["present"] & (crown | trunk), TREE, 0)
    # Light from the upper left.
    crown_top = jnp.where(t["is_conifer"], cone_apex, round_centre - t["crown_ry"])
    crown_height = jnp.where(t["is_conifer"], t["conifer_height"], 2 * t["crown_ry"])
    shade = 1.1 - 0.25 * (cy - crown_top) / crown_height - 0.1 * round_dx
    colour = jnp.where(crown[..., None], t["crown_colour"] * shade[..., None], t["trunk_colour"])
    return label, colour
