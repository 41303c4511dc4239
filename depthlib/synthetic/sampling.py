"""What the style samplers share: seeded random draws and placement in front of the camera.

:class:`Rand` gives each (seed, style) its own stream of draws, all made
from Python's Mersenne Twister ``random()`` so that a seed's scene stays the
same across Python and numpy versions. The placement helpers work in world
coordinates (metres, z up, ground at z = 0) and with yaw and field of view
in degrees.
"""

from __future__ import annotations

import math
import random

import numpy as np


class Rand:
    """The random draws of scene sampling, built on Python's Mersenne Twister.

    Sampling makes a few hundred scalar draws per scene; numpy's Generator
    costs about 1-2 us per scalar call, ``random.Random`` a tenth of that.
    Every draw is derived from ``random()``, the one method whose sequence
    Python keeps stable across versions. The method names follow numpy's.
    """

    def __init__(self, seed: int, stream: int):
        self.random = random.Random((int(seed) & 0xFFFFFFFFFFFFFFFF) * 16 + stream).random

    def uniform(self, low=0.0, high=1.0, size=None):
        if size is None:
            return low + (high - low) * self.random()
        return np.array([low + (high - low) * self.random() for _ in range(size)])

    def integers(self, low, high=None):
        """An int in [low, high), or in [0, low) without ``high``."""
        if high is None:
            low, high = 0, low
        return low + min(int(self.random() * (high - low)), high - low - 1)

    def normal(self, loc=0.0, scale=1.0):
        u = 1.0 - self.random()  # (0, 1]
        return loc + scale * math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * self.random())

    def standard_normal(self, size):
        return np.array([self.normal() for _ in range(size)])


def choose(rng, options, weights):
    """``options[i]`` with probability proportional to ``weights[i]`` (cheaper than rng.choice)."""
    x = rng.random() * sum(weights)
    for option, w in zip(options, weights):
        x -= w
        if x < 0.0:
            return option
    return options[-1]


def unit_vector(rng):
    v = [rng.normal() for _ in range(3)]
    n = math.hypot(*v) or 1.0
    return tuple(x / n for x in v)


def random_rotation(rng) -> np.ndarray:
    q = [rng.normal() for _ in range(4)]
    n = math.hypot(*q) or 1.0
    w, x, y, z = (v / n for v in q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def camera_clearance_ok(cam_pos, center, radius, margin=0.25):
    return math.dist(center, cam_pos) > radius + margin


def bounding_radius(shape, size):
    size = np.asarray(size, dtype=np.float64)
    if shape == "box":
        return float(np.linalg.norm(size))
    if shape == "cylinder":
        return float(math.hypot(max(size[0], size[1]), size[2]))
    return float(size.max())


def ground_spot(rng, cam_pos, yaw_deg, hfov_deg, dmin, dmax, spread=1.15):
    """A point on the ground in (or near) the horizontal view cone, log-uniform in distance."""
    dist = math.exp(rng.uniform(math.log(dmin), math.log(dmax)))
    az = math.radians(yaw_deg + rng.uniform(-0.5, 0.5) * hfov_deg * spread)
    return np.array([cam_pos[0] - dist * math.sin(az), cam_pos[1] + dist * math.cos(az), 0.0]), dist
