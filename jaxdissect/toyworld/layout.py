"""Random scene layouts of the toy world: where everything goes, before any pixel is drawn.

A layout is a dict of arrays with fixed shapes (at most MAX_CLOUDS clouds,
MAX_BUILDINGS buildings, MAX_TREES trees; absent ones have `present` False),
so sampling and drawing are jit- and vmap-friendly. All positions are in
pixels of the target resolution; boxes have integer edges and are half-open,
[x0, x1) x [top, base), so the labels drawn from them are exact.

The layout rules the world promises (and tests check):
- rows above `horizon` are sky, rows from `horizon` down are ground;
- clouds lie entirely above the horizon, and above the roofs when there is room;
- buildings and trees stand on the ground: their base row is below the horizon;
- a building's door and windows lie inside its wall; the door's bottom edge is
  the wall's base line and the windows sit above the door's top.
"""
import jax
import jax.numpy as jnp

MAX_CLOUDS = 3
MAX_PUFFS = 3  # ellipses per cloud
MAX_BUILDINGS = 2
MAX_TREES = 4
MAX_WINDOW_ROWS = 3
MAX_WINDOW_COLS = 5

# Sizes below are in pixels of a 64x64 image and scale with the resolution.
REFERENCE_RESOLUTION = 64

# Colour palettes (RGB in [0, 1]); a scene picks a row and jitters it.
SKY_PALETTES = jnp.array([  # (top colour, horizon colour)
    [[0.22, 0.42, 0.82], [0.62, 0.78, 0.95]],  # blue
    [[0.62, 0.70, 0.80], [0.86, 0.88, 0.90]],  # pale / overcast
    [[0.28, 0.22, 0.48], [0.95, 0.62, 0.42]],  # dusk
    [[0.35, 0.55, 0.85], [0.85, 0.90, 0.95]],  # bright hazy
])
WALL_COLOURS = jnp.array([
    [0.85, 0.80, 0.68], [0.92, 0.92, 0.88], [0.62, 0.62, 0.64], [0.70, 0.36, 0.28],
    [0.90, 0.82, 0.50], [0.58, 0.66, 0.74], [0.80, 0.62, 0.48],
])
ROOF_COLOURS = jnp.array([
    [0.62, 0.20, 0.14], [0.42, 0.24, 0.16], [0.28, 0.28, 0.32], [0.25, 0.32, 0.45], [0.72, 0.34, 0.20],
])
DOME_COLOURS = jnp.array([
    [0.35, 0.62, 0.52], [0.55, 0.58, 0.66], [0.82, 0.66, 0.28], [0.55, 0.22, 0.20],
])
DOOR_COLOURS = jnp.array([[0.32, 0.18, 0.09], [0.16, 0.12, 0.10], [0.40, 0.24, 0.12]])
WINDOW_COLOURS = jnp.array([[0.12, 0.15, 0.22], [0.36, 0.52, 0.74], [0.96, 0.86, 0.42]])
GRASS_COLOURS = jnp.array([[0.24, 0.50, 0.16], [0.42, 0.60, 0.18], [0.56, 0.64, 0.24], [0.20, 0.42, 0.18]])
ROAD_COLOURS = jnp.array([[0.50, 0.50, 0.50], [0.58, 0.46, 0.32], [0.40, 0.40, 0.42], [0.66, 0.58, 0.44]])
CROWN_COLOURS = jnp.array([[0.10, 0.36, 0.12], [0.22, 0.50, 0.16], [0.32, 0.52, 0.20], [0.08, 0.28, 0.16]])
TRUNK_COLOURS = jnp.array([[0.36, 0.23, 0.12], [0.28, 0.18, 0.10]])


class _Draws:
    """Independent random draws from one key, one fresh subkey per call."""

    def __init__(self, key):
        self._key = key
        self._count = 0

    def key(self):
        self._count += 1
        return jax.random.fold_in(self._key, self._count)

    def uniform(self, shape=(), low=0.0, high=1.0):
        return jax.random.uniform(self.key(), shape, minval=low, maxval=high)

    def integer(self, shape, low, high):
        """Integers in [low, high] (inclusive; bounds may be traced), as float32 for pixel arithmetic."""
        return jnp.floor(self.uniform(shape) * (high - low + 1)) + low

    def bernoulli(self, p, shape=()):
        return jax.random.bernoulli(self.key(), p, shape)

    def colour(self, palette, shape=(), jitter=0.05):
        """A palette row picked at random, each channel jittered by up to +-jitter."""
        index = jax.random.randint(self.key(), shape, 0, palette.shape[0])
        return jnp.clip(palette[index] + self.uniform(shape + (3,), -jitter, jitter), 0.0, 1.0)


def sample_layout(key, resolution):
    """One scene's layout: a dict of arrays (see the module docstring)."""
    draws = _Draws(key)
    scale = resolution / REFERENCE_RESOLUTION
    horizon = jnp.round(draws.integer((), 22, 40) * scale)
    buildings = _sample_buildings(draws, horizon, resolution, scale)
    return {
        "horizon": horizon,
        "sky": _sample_sky(draws),
        "clouds": _sample_clouds(draws, _cloud_limit(horizon, buildings, scale), scale),
        "grass": _sample_grass(draws),
        "road": _sample_road(draws, resolution, scale),
        "buildings": buildings,
        "trees": _sample_trees(draws, horizon, resolution, scale),
        # Scene lighting: one brightness times a small per-channel tint.
        "light": draws.uniform((), 0.82, 1.08) * draws.uniform((3,), 0.95, 1.05),
        "noise_key": draws.key(),
    }


def _sample_sky(draws):
    palette = SKY_PALETTES[jax.random.randint(draws.key(), (), 0, SKY_PALETTES.shape[0])]
    return jnp.clip(palette + draws.uniform((2, 3), -0.06, 0.06), 0.0, 1.0)


def _sample_grass(draws):
    return {"far": draws.colour(GRASS_COLOURS), "near": draws.colour(GRASS_COLOURS)}


def _sample_road(draws, resolution, scale):
    """A band from the bottom edge narrowing towards a point near the horizon."""
    return {
        "present": draws.bernoulli(0.5),
        "x_bottom": draws.uniform((), 0.2, 0.8) * resolution,
        "half_bottom": draws.uniform((), 7.0, 15.0) * scale,
        "x_top": draws.uniform((), 0.3, 0.7) * resolution,
        "half_top": draws.uniform((), 0.5, 2.5) * scale,
        "colour": draws.colour(ROAD_COLOURS),
    }


def _sample_buildings(draws, horizon, resolution, scale):
    n = MAX_BUILDINGS
    count = jnp.searchsorted(jnp.array([0.2, 0.65]), draws.uniform(), side="right")
    width = jnp.round(draws.integer((n,), 14, 30) * scale)
    # Building 0 tends to the left, building 1 to the right; they may overlap.
    centre = (draws.uniform((n,)) * 0.4 + jnp.array([0.15, 0.45])) * resolution
    x0 = jnp.clip(jnp.round(centre - width / 2), 1, resolution - 1 - width)
    base = draws.integer((n,), jnp.round(horizon + 4 * scale), resolution - 1)
    height = jnp.minimum(jnp.round(draws.integer((n,), 15, 28) * scale), base - jnp.round(6 * scale))
    top = base - height
    is_dome = draws.bernoulli(0.35, (n,))
    roof_height = jnp.minimum(jnp.round(draws.uniform((n,), 5.0, 11.0) * scale), top - 1)
    window_h = jnp.round(draws.integer((n,), 3, 5) * scale)
    margin = jnp.round(2 * scale)
    door_width = jnp.round(draws.integer((n,), 4, 7) * scale)
    # Leave room above the door for one row of windows between margins.
    door_height = jnp.minimum(jnp.round(draws.integer((n,), 7, 11) * scale), height - 2 * margin - window_h)
    door_x0 = x0 + margin + jnp.floor(draws.uniform((n,)) * (width - 2 * margin - door_width + 1))
    window = _window_grid(draws, x0, width, top, base - door_height, window_h, margin, scale)
    return {
        "present": jnp.arange(n) < count,
        "x0": x0, "x1": x0 + width, "top": top, "base": base,
        "is_dome": is_dome,
        "roof_height": roof_height,
        "roof_overhang": jnp.round(draws.uniform((n,), 0.0, 2.0) * scale),
        "dome_half_width": width / 2 * draws.uniform((n,), 0.55, 0.95),
        "door_x0": door_x0, "door_x1": door_x0 + door_width, "door_top": base - door_height,
        **window,
        "wall_colour": draws.colour(WALL_COLOURS, (n,)),
        "roof_colour": jnp.where(is_dome[:, None], draws.colour(DOME_COLOURS, (n,)), draws.colour(ROOF_COLOURS, (n,))),
        "door_colour": draws.colour(DOOR_COLOURS, (n,), jitter=0.03),
        "window_colour": draws.colour(WINDOW_COLOURS, (n,)),
        "window_shade": draws.uniform((n, MAX_WINDOW_ROWS, MAX_WINDOW_COLS), 0.8, 1.1),
    }


def _window_grid(draws, x0, width, top, door_top, window_h, margin, scale):
    """A centred grid of equal windows in the wall rows above the door, `margin` from its edges."""
    n = x0.shape[0]
    window_w = jnp.round(draws.integer((n,), 3, 5) * scale)
    gap_x = jnp.round(draws.integer((n,), 2, 4) * scale)
    gap_y = jnp.round(draws.integer((n,), 2, 3) * scale)
    rows_space = door_top - margin - (top + margin)
    cols_space = width - 2 * margin
    rows = jnp.clip(jnp.floor((rows_space + gap_y) / (window_h + gap_y)), 0, MAX_WINDOW_ROWS)
    cols = jnp.clip(jnp.floor((cols_space + gap_x) / (window_w + gap_x)), 0, MAX_WINDOW_COLS)
    grid_w = cols * (window_w + gap_x) - gap_x
    return {
        "window_x0": x0 + jnp.floor((width - grid_w) / 2), "window_y0": top + margin,
        "window_w": window_w, "window_h": window_h,
        "window_pitch_x": window_w + gap_x, "window_pitch_y": window_h + gap_y,
        "window_cols": cols, "window_rows": rows,
    }


def _cloud_limit(horizon, buildings, scale):
    """The row clouds must stay above: the highest roof when that leaves room, else the horizon."""
    roof_top = jnp.where(buildings["present"], buildings["top"] - buildings["roof_height"], horizon)
    limit = jnp.minimum(horizon, roof_top.min()) - 1
    return jnp.where(limit >= 12 * scale, limit, horizon)


def _sample_clouds(draws, limit, scale):
    """Clouds as unions of ellipses whose lowest point is at or above `limit`.

    Puffs sit on or above the main ellipse's centre and are no taller than
    what keeps their bottom above the main ellipse's bottom.
    """
    n, k = MAX_CLOUDS, MAX_PUFFS
    rx = draws.uniform((n,), 5.0, 11.0) * scale
    ry = draws.uniform((n,), 2.0, 4.5) * scale
    lift = draws.uniform((n, k), 0.0, 0.9) * ry[:, None]
    lift = lift.at[:, 0].set(0.0)
    puff_ry = jnp.minimum(draws.uniform((n, k), 0.7, 1.2) * ry[:, None], ry[:, None] + lift)
    puff_ry = puff_ry.at[:, 0].set(ry)
    puff_rx = (draws.uniform((n, k), 0.4, 0.7) * rx[:, None]).at[:, 0].set(rx)
    shift = (draws.uniform((n, k), -0.65, 0.65) * rx[:, None]).at[:, 0].set(0.0)
    room = jnp.maximum(limit - 2 * ry - 1, 0.0)
    cy = limit - ry - draws.uniform((n,)) * room
    return {
        "present": jnp.arange(n) < draws.integer((), 0, n),
        "puff_present": jnp.ones((n, k), bool).at[:, 2].set(draws.bernoulli(0.6, (n,))),
        "cx": draws.uniform((n,), -0.1, 1.1) * REFERENCE_RESOLUTION * scale + shift,
        "cy": cy[:, None] - lift,
        "rx": puff_rx, "ry": puff_ry,
        "grey": draws.uniform((n,), 0.8, 1.0),
    }


def _sample_trees(draws, horizon, resolution, scale):
    n = MAX_TREES
    base = draws.integer((n,), horizon + 1, resolution - 1)
    # Mild perspective: trees nearer the bottom edge are larger.
    size = (0.7 + 0.6 * (base - horizon) / (resolution - horizon)) * scale
    trunk_w = jnp.maximum(jnp.round(draws.uniform((n,), 2.0, 3.6) * size), 1)
    trunk_h = jnp.maximum(jnp.round(draws.uniform((n,), 3.0, 6.0) * size), 2)
    centre = draws.uniform((n,), 3.0 * scale, resolution - 3.0 * scale)
    trunk_x0 = jnp.round(centre - trunk_w / 2)
    return {
        "present": jnp.arange(n) < draws.integer((), 0, n),
        "base": base,
        "trunk_x0": trunk_x0, "trunk_x1": trunk_x0 + trunk_w, "trunk_top": base - trunk_h,
        "centre": trunk_x0 + trunk_w / 2,
        "is_conifer": draws.bernoulli(0.4, (n,)),
        "crown_rx": draws.uniform((n,), 4.0, 7.5) * size,
        "crown_ry": draws.uniform((n,), 4.5, 8.0) * size,
        "conifer_height": draws.uniform((n,), 11.0, 18.0) * size,
        "crown_colour": draws.colour(CROWN_COLOURS, (n,)),
        "trunk_colour": draws.colour(TRUNK_COLOURS, (n,), jitter=0.04),
    }
