"""Anatomy of generator C (`sam2rad.data.impedance_simulator`): tissue properties on physical positions.

Three views neither A (hip, wrist, shoulder) nor B (long bone, rib, femoral head) has:
- 'condyle': a knee's femoral condyle, a dome under a band of anechoic hyaline cartilage;
- 'vertebra': a paramedian spine view, two or three laminae stepping in depth with gaps between
  them, a bright non-bone ligament deep in each gap;
- 'metacarpal': a finger joint, the rounded metacarpal head and the phalanx base past a joint gap,
  a fibrillar tendon above them.

Each tissue is an acoustic impedance (MRayl), a scatterer density and strength, and an attenuation
(dB/mm/MHz). The bone's cortex is a layer of its own, `cortex(x)` mm thick along the surface normal
(slowly varying along the surface, as real cortices do); under it the trabecular bone reflects at
its own, weaker, interface and attenuates fast. The cortex is what the label draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_interp_spline

ANATOMIES: tuple[str, ...] = ("condyle", "vertebra", "metacarpal")


@dataclass
class Surface:
    """Bone surface on a fine x grid (mm): depth, where bone is present, cortex thickness (mm, normal)."""

    grid: np.ndarray
    depth: np.ndarray
    present: np.ndarray
    cortex: np.ndarray
    cartilage: np.ndarray  # anechoic layer above the bone (mm, vertical); 0 where none
    ligament: np.ndarray | None = None  # depth of a bright non-bone line in the gaps; nan elsewhere
    tendon: tuple[np.ndarray, float] | None = None  # (top depth per grid x, thickness mm)

    def at(self, values: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.grid, values, left=values[0], right=values[-1])

    def slope(self) -> np.ndarray:
        """dy/dx where bone is present (0 elsewhere), clipped to +-3."""
        d = np.where(self.present, self.depth, np.nan)
        g = np.gradient(d, self.grid)
        return np.clip(np.where(np.isfinite(g), g, 0.0), -3.0, 3.0)


def _smooth_curve(rng, grid, knots_x, knots_y) -> np.ndarray:
    k = min(3, len(knots_x) - 1)
    return make_interp_spline(knots_x, knots_y, k=k)(np.clip(grid, knots_x[0], knots_x[-1]))


def _cortex(rng, grid, base: float) -> np.ndarray:
    knots = np.linspace(grid[0], grid[-1], 6)
    return base * np.clip(1 + _smooth_curve(rng, grid, knots, rng.normal(0, 0.15, 6)), 0.7, 1.3)


def _condyle(rng, grid, x0, x1, top) -> Surface:
    span = x1 - x0
    radius = rng.uniform(14.0, 26.0)
    cx = x0 + span * rng.uniform(0.35, 0.65)
    apex = top * rng.uniform(1.0, 1.3)
    depth = apex + radius - np.sqrt(np.clip(radius**2 - (grid - cx) ** 2, 0.0, None))
    depth = depth + _smooth_curve(rng, grid, np.linspace(grid[0], grid[-1], 5), rng.normal(0, 0.25, 5))
    slope = np.abs(np.gradient(depth, grid))
    present = (np.abs(grid - cx) < radius * 0.95) & (slope < 1.6) & (grid > x0 - 3) & (grid < x1 + 3)
    # Hyaline cartilage: thickest on the dome's crown, thinning towards its sides.
    crown = rng.uniform(1.5, 3.0)
    cartilage = np.where(present, crown * np.clip(1 - ((grid - cx) / (0.9 * radius)) ** 2, 0.15, 1), 0.0)
    return Surface(grid, depth, present, _cortex(rng, grid, rng.uniform(0.7, 1.4)), cartilage)


def _vertebra(rng, grid, x0, x1, top) -> Surface:
    span = x1 - x0
    n = int(rng.integers(2, 4))
    widths = rng.uniform(0.18, 0.3, n) * span
    gaps = rng.uniform(0.08, 0.18, n - 1) * span
    start = x0 + rng.uniform(-0.05, 0.1) * span
    depth = np.full(grid.shape, np.nan)
    base = top * rng.uniform(1.0, 1.3)
    tilt = rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)  # laminae overlap like roof tiles
    for w, g in zip(widths, np.append(gaps, 0.0)):
        sel = (grid >= start) & (grid <= start + w)
        xs = np.linspace(start, start + w, 4)
        ys = base + rng.normal(0, 1.0) + tilt * (xs - start) + rng.normal(0, 0.2, 4)
        ys[0] += rng.uniform(0.3, 1.0)  # the lamina's rounded leading edge
        depth[sel] = _smooth_curve(rng, grid[sel], xs, ys)
        start += w + g
    present = np.isfinite(depth)
    ligament = base + rng.uniform(4.0, 8.0) + _smooth_curve(rng, grid, np.linspace(x0, x1, 4), rng.normal(0, 0.6, 4))
    return Surface(grid, np.where(present, depth, base + 60.0), present, _cortex(rng, grid, rng.uniform(0.5, 1.0)),
                   np.zeros_like(grid), np.where(present, np.nan, ligament))


def _metacarpal(rng, grid, x0, x1, top) -> Surface:
    span = x1 - x0
    joint = x0 + span * rng.uniform(0.4, 0.6)
    gap = rng.uniform(1.5, 3.5)
    apex = top * rng.uniform(1.1, 1.5)
    head_r = rng.uniform(5.0, 9.0)
    # The metacarpal head: flat shaft rising into a rounded end at the joint.
    shaft = apex + rng.uniform(0.5, 2.0) + 0.04 * (joint - grid)
    head = apex + head_r - np.sqrt(np.clip(head_r**2 - (grid - (joint - head_r * 0.6)) ** 2, 0, None))
    left = np.minimum(shaft, head)
    # The phalanx base: a lip rising from the joint, then its shaft.
    lip = apex + rng.uniform(0.5, 1.5) + 1.8 * np.exp(-((grid - joint - gap) / 1.2) ** 2) * rng.uniform(-0.6, 0.4)
    right = lip + 0.05 * (grid - joint - gap)
    depth = np.where(grid < joint, left, right)
    slope = np.abs(np.gradient(depth, grid))
    present = ((grid < joint - 0.3) | (grid > joint + gap)) & (slope < 1.8)
    tendon_top = _smooth_curve(rng, grid, np.linspace(x0 - 2, x1 + 2, 5), apex - rng.uniform(3.0, 5.0) + rng.normal(0, 0.3, 5))
    return Surface(grid, depth, present, _cortex(rng, grid, rng.uniform(0.6, 1.2)), np.zeros_like(grid),
                   tendon=(tendon_top, rng.uniform(1.5, 3.0)))


SHAPES = {"condyle": _condyle, "vertebra": _vertebra, "metacarpal": _metacarpal}


@dataclass
class Tissue:
    """Per position: impedance (MRayl), scatterer density (per fine cell) and strength, attenuation
    (dB/mm/MHz, one way)."""

    impedance: np.ndarray
    density: np.ndarray
    strength: np.ndarray
    attenuation: np.ndarray


def tissue(rng, surf: Surface, x: np.ndarray, y: np.ndarray) -> Tissue:
    """Tissue properties at physical positions (mm) x, y (any shape)."""
    bone_y = surf.at(surf.depth, x)
    present = surf.at(surf.present.astype(float), x) > 0.5
    slope = surf.at(surf.slope(), x)
    below = (y - bone_y) / np.sqrt(1 + slope**2)  # distance under the surface along its normal
    z = np.full(x.shape, 1.63)
    dens = np.full(x.shape, 0.6)
    amp = np.ones(x.shape)
    att = np.full(x.shape, rng.uniform(0.05, 0.075))
    top = float(np.nanmin(np.where(surf.present, surf.depth, np.nan)))
    skin = rng.uniform(1.0, 2.0)
    knots = np.linspace(surf.grid[0], surf.grid[-1], 5)
    fat_end = surf.at(_smooth_curve(rng, surf.grid, knots, top * rng.uniform(0.2, 0.4) + rng.normal(0, 0.5, 5)), x)
    fat = (y >= skin) & (y < fat_end)
    z = np.where(y < skin, 1.70, np.where(fat, 1.38, z))
    dens = np.where(fat, 0.12, dens)  # fat: few scatterers, coarse non-Rayleigh speckle
    amp = np.where(y < skin, 2.0, np.where(fat, 0.8, amp))
    # Muscle: fibres as small impedance ripples along a tilted direction, and perimysium lines.
    angle = rng.uniform(-0.3, 0.3)
    period = rng.uniform(0.8, 1.6)
    muscle = y >= fat_end
    z = np.where(muscle, 1.65 + 0.012 * np.sin(2 * np.pi * (y + angle * x) / period), z)
    if surf.tendon is not None:
        t_top = surf.at(surf.tendon[0], x)
        in_tendon = (y >= t_top) & (y < t_top + surf.tendon[1])
        z = np.where(in_tendon, 1.75 + 0.03 * np.sin(2 * np.pi * y / 0.35), z)
        dens = np.where(in_tendon, 1.2, dens)
    for _ in range(int(rng.integers(0, 2))):  # an anechoic vessel
        cx = rng.uniform(surf.grid[0] + 8, surf.grid[-1] - 8)
        cy = rng.uniform(skin + 3, max(skin + 3.5, top - 3))
        r = rng.uniform(1.0, 2.5)
        vessel = ((x - cx) ** 2 + ((y - cy) / rng.uniform(0.7, 1.0)) ** 2) < r**2
        z, dens, att = np.where(vessel, 1.61, z), np.where(vessel, 0.002, dens), np.where(vessel, 0.01, att)
    cart = surf.at(surf.cartilage, x)
    in_cart = present & (y < bone_y) & (y >= bone_y - cart) & (cart > 0)
    z, dens = np.where(in_cart, 1.72, z), np.where(in_cart, 0.01, dens)
    if surf.ligament is not None:
        lig = surf.at(np.nan_to_num(surf.ligament, nan=-100.0), x)
        band = (lig > 0) & (np.abs(y - lig) < rng.uniform(0.3, 0.6))
        z, dens, amp = np.where(band, 1.9, z), np.where(band, 1.0, dens), np.where(band, 2.5, amp)
    in_bone = present & (below >= 0)
    cortex = in_bone & (below < surf.at(surf.cortex, x))
    trabecular = in_bone & ~cortex
    z = np.where(cortex, rng.uniform(6.0, 7.5), np.where(trabecular, rng.uniform(3.0, 4.2), z))
    dens = np.where(cortex, 0.3, np.where(trabecular, 1.0, dens))
    amp = np.where(cortex, 1.5, np.where(trabecular, 2.5, amp))
    att = np.where(cortex, rng.uniform(1.0, 2.0), np.where(trabecular, rng.uniform(3.0, 5.0), att))
    return Tissue(z, dens, amp, att)
