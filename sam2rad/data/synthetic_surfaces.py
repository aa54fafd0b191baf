"""Bone surfaces for synthetic ultrasound: depth of the surface across the image, per anatomy, on a 1-D grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Surface:
    depth: np.ndarray  # surface depth (px) at each grid point
    present: np.ndarray  # bool, bone present at each grid point
    gain: np.ndarray  # echo strength multiplier at each grid point


def smooth_noise(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """Smooth random curve of length n, roughly unit amplitude."""
    k = rng.standard_normal(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), k)


def _hip(rng: np.random.Generator, u: np.ndarray, lat: float, dep: float):
    # Femoral head: a dome (upper part of a circle) running into the neck, which flattens out;
    # optionally the acetabular rim as a separate, shallower bone on the other side.
    radius = dep * rng.uniform(0.22, 0.38)
    apex = dep * rng.uniform(0.30, 0.50)
    centre = lat * rng.uniform(0.38, 0.55)
    a_neck = np.deg2rad(rng.uniform(45, 62))
    a_rim = np.deg2rad(rng.uniform(35, 60))
    u_neck = centre + radius * np.sin(a_neck)
    u_rim = centre - radius * np.sin(a_rim)
    dx = np.clip(u - centre, -radius * 0.999, radius * 0.999)
    z = apex + radius - np.sqrt(radius**2 - dx**2)
    z_neck = apex + radius - radius * np.cos(a_neck)
    length = lat * rng.uniform(0.08, 0.2)
    beyond = np.maximum(u - u_neck, 0)
    z = np.where(u > u_neck, z_neck + np.tan(a_neck) * length * (1 - np.exp(-beyond / length)), z)
    present = u >= u_rim
    if rng.random() < 0.6:  # acetabular rim, descending towards the head
        gap = lat * rng.uniform(0.04, 0.1)
        end = u_rim - gap
        if end > lat * 0.12:
            rim_z = apex - dep * rng.uniform(-0.02, 0.1) + (u - end) * rng.uniform(0.1, 0.4)
            rim = u <= end
            z = np.where(rim, rim_z, z)
            present = present | (rim & (u >= lat * rng.uniform(0.0, 0.08)))
    return z, present


def _wrist(rng: np.random.Generator, u: np.ndarray, lat: float, dep: float):
    # Distal radius/ulna: two flat-ish cortices at different depths joined by a step, or separated by
    # a gap (two bones); sometimes a tubercle (Lister's) on the wider one.
    z1 = dep * rng.uniform(0.3, 0.55)
    z2 = z1 + dep * rng.uniform(0.08, 0.2) * rng.choice([-1.0, 1.0])
    step = lat * rng.uniform(0.35, 0.65)
    width = lat * rng.uniform(0.01, 0.04)
    z = z1 + (z2 - z1) / (1 + np.exp(-(u - step) / width))
    z += (u - lat / 2) * rng.uniform(-0.12, 0.12)
    present = (u >= lat * rng.uniform(0, 0.08)) & (u <= lat * (1 - rng.uniform(0, 0.08)))
    if rng.random() < 0.5:
        gap = lat * rng.uniform(0.04, 0.12)
        present &= np.abs(u - step) > gap / 2
    if rng.random() < 0.5:
        where = lat * (rng.uniform(0.12, 0.28) if step > lat / 2 else rng.uniform(0.72, 0.88))
        z -= dep * rng.uniform(0.02, 0.05) * np.exp(-(((u - where) / (lat * 0.04)) ** 2))
    return z, present


def _shoulder(rng: np.random.Generator, u: np.ndarray, lat: float, dep: float):
    # Humeral head: a broad convex curve; often the bicipital groove as a dip beside a tuberosity.
    radius = dep * rng.uniform(0.6, 1.3)
    apex = dep * rng.uniform(0.3, 0.5)
    centre = lat * rng.uniform(0.3, 0.7)
    dx = np.clip(u - centre, -radius * 0.9, radius * 0.9)
    z = apex + radius - np.sqrt(radius**2 - dx**2)
    if rng.random() < 0.6:
        where = centre + lat * rng.uniform(0.15, 0.3) * rng.choice([-1.0, 1.0])
        z += dep * rng.uniform(0.03, 0.07) * np.exp(-(((u - where) / (lat * rng.uniform(0.025, 0.045))) ** 2))
    present = (u >= lat * rng.uniform(0, 0.06)) & (u <= lat * (1 - rng.uniform(0, 0.06)))
    present &= np.abs(u - centre) <= radius * 0.85
    return z, present


_SHAPES = {"hip": _hip, "wrist": _wrist, "shoulder": _shoulder}


def bone_surface(rng: np.random.Generator, anatomy: str, u: np.ndarray, lat: float, dep: float) -> Surface:
    z, present = _SHAPES[anatomy](rng, u, lat, dep)
    if rng.random() < 0.5:  # anatomy seen from either side
        z, present = z[::-1].copy(), present[::-1].copy()
    z = z + dep * 0.012 * smooth_noise(rng, u.size, 6)  # cortical irregularity
    z = np.clip(z, dep * 0.12, dep * 0.85)
    slope = np.gradient(z, u)
    # Specular reflection: steep parts of the surface send less echo back to the probe.
    specular = 0.4 + 0.6 / (1 + (1.5 * slope) ** 2)
    gain = specular * rng.uniform(0.8, 1.0) * (1 + 0.15 * smooth_noise(rng, u.size, 9))
    return Surface(z.astype(np.float32), present, gain.astype(np.float32))
