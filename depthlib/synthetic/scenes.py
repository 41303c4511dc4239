"""The generator's entry points: a seed to a :class:`~.types.SceneSpec` of a style, and to a rendered scene.

The same ``(seed, height, width, style)`` always gives the same scene: each
style draws from its own stream of the seed (:class:`~.sampling.Rand`),
and the renderer's own randomness comes from the seed too.
"""

from __future__ import annotations

from depthlib.synthetic.renderer import render
from depthlib.synthetic.sampling import Rand
from depthlib.synthetic.style_photo import sample_photo
from depthlib.synthetic.style_street import sample_street
from depthlib.synthetic.style_synthetic import sample_synthetic
from depthlib.synthetic.types import STYLES, Scene, SceneSpec


def sample_scene(seed: int, height: int, width: int, style: str = "synthetic") -> SceneSpec:
    """Draw a random :class:`SceneSpec`; the same arguments always give the same scene."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    rng = Rand(seed, STYLES.index(style))
    if style == "photo":
        return sample_photo(rng, int(seed), height, width)
    if style == "street":
        return sample_street(rng, int(seed), height, width)
    return sample_synthetic(rng, int(seed), height, width)


def render_scene(seed: int, height: int, width: int, style: str = "synthetic") -> Scene:
    """A random scene of the given style, rendered: ``render(sample_scene(...))``."""
    return render(sample_scene(seed, height, width, style))
