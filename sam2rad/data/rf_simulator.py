"""Generator B: B-mode frames of bone surfaces from a simple RF (radio-frequency) image-formation model.

An independent second ultrasound source, made differently from `sam2rad.data.synthetic` (generator A,
which multiplies an echogenicity map by complex white noise and blurs it with a Gaussian PSF in beam
coordinates). Here:

1. Anatomy lives in *physical* Cartesian coordinates (mm; x across, y down from the probe face):
   soft-tissue layers, fascia, anechoic vessels/cysts and bone surfaces drawn as cubic splines through
   random control points. Categories: 'long_bone' (one long cortex), 'rib' (several short arcs with
   gaps, the pleural line deeper between them) and 'femoral_head' (a dome running into the neck).
2. The transducer samples that anatomy along its beam lines: a linear array (parallel vertical lines)
   or a convex/curvilinear array (radial lines from a curved face), on an RF grid with 4 samples per
   half wavelength in depth.
3. Point scatterers: each RF cell holds a Poisson number of scatterers (density from the tissue map),
   each with a random Gaussian amplitude scaled by the local echogenicity; a few isolated strong
   reflectors. The cortex is a coherent specular reflector at the first bone sample of every line,
   weighted by the incidence angle.
4. Pulse-echo PSF: axial, a Gaussian-windowed cosine at the centre frequency (convolution along each
   line); lateral, a Gaussian beam whose width grows away from the focal depth.
5. Two-way attenuation integrated along each line (soft tissue ~0.5-0.8 dB/cm/MHz, fluid ~0, bone
   10 dB/mm: the acoustic shadow), reverberation copies of strong reflectors at multiples of their
   depth, receiver noise; then the envelope by the Hilbert transform, time-gain compensation, log
   compression with a random dynamic range, and scan conversion to the Cartesian image
   (`scipy.ndimage.map_coordinates`; polar -> Cartesian for the convex array). Outside the imaging
   region the image is black.

The label is the bone-surface band (0.5-1.5 mm thick, from the surface down), drawn on the output
pixel grid from the same spline, as labellers draw bone in ultrasound; the pleura is not bone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal
from scipy.interpolate import make_interp_spline

ANATOMIES: tuple[str, ...] = ("long_bone", "rib", "femoral_head")
PROBES: tuple[str, ...] = ("linear", "convex")
SIZES = {"linear": (300, 256), "convex": (256, 320)}  # (H, W): both non-square, unlike A's default
_C_MM_PER_US = 1.54
_N_LINES = 256
_SAMPLES_PER_HALF_WAVE = 4


@dataclass(frozen=True)
class RfSample:
    """One frame of generator B.

    image: uint8 (H, W) B-mode; 0 outside the imaging region.
    mask: bool (H, W) bone-surface band.
    spacing_mm: (row, col) pixel spacing in mm.
    anatomy: one of ANATOMIES.  probe: 'linear' or 'convex'.
    inside: bool (H, W) imaging region.  freq_mhz, dynamic_range_db: acquisition settings.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float]
    anatomy: str
    probe: str
    inside: np.ndarray
    freq_mhz: float
    dynamic_range_db: float
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Probe geometry: beam-grid sample positions in mm, and output pixels in mm.


@dataclass(frozen=True)
class _Probe:
    kind: str
    depth_mm: float
    width_mm: float  # linear: aperture; convex: 0
    radius_mm: float  # convex face radius
    half_angle: float  # convex half opening angle, rad
    x_range: tuple[float, float]  # physical extent across (mm)

    def beam_xy(self, z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth z (mm, along the beam) and line coordinate u in [0, 1) -> physical x, y (mm)."""
        if self.kind == "linear":
            return np.broadcast_to(u * self.width_mm, np.broadcast(z, u).shape), np.broadcast_to(z, np.broadcast(z, u).shape)
        theta = (u * 2 - 1) * self.half_angle
        r = self.radius_mm + z
        return r * np.sin(theta), r * np.cos(theta) - self.radius_mm

    def to_beam(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical x, y -> depth z, line coordinate u in [0, 1), inside-the-field flag."""
        if self.kind == "linear":
            z, u = y, x / self.width_mm
        else:
            r = np.hypot(x, y + self.radius_mm)
            z = r - self.radius_mm
            u = (np.arctan2(x, y + self.radius_mm) / self.half_angle + 1) / 2
        return z, u, (z >= 0) & (z < self.depth_mm) & (u >= 0) & (u < 1)


def _probe(rng: np.random.Generator, kind: str, aspect: float) -> _Probe:
    if kind == "linear":  # depth from the image's aspect, so the rectangle fills the frame
        w = rng.uniform(34.0, 44.0)
        return _Probe(kind, w * aspect * rng.uniform(0.92, 1.0), w, 0.0, 0.0, (0.0, w))
    radius, half, depth = rng.uniform(15.0, 30.0), np.deg2rad(rng.uniform(20.0, 28.0)), rng.uniform(35.0, 55.0)
    reach = (radius + depth) * np.sin(half)
    return _Probe(kind, depth, 0.0, radius, half, (-reach, reach))


# --------------------------------------------------------------------------------------------------
# Anatomy: splines in physical coordinates.


def _spline(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    k = min(3, len(xs) - 1)
    return make_interp_spline(xs, ys, k=k)(grid)


@dataclass
class _Anatomy:
    grid: np.ndarray  # x (mm), fine
    bone: np.ndarray  # surface depth y (mm) at each grid x
    present: np.ndarray  # bone present at each grid x
    pleura: np.ndarray | None = None  # depth of a bright non-bone line (rib view), nan where absent


def _long_bone(rng, grid, x0, x1, top):
    n = int(rng.integers(4, 7))
    xs = np.linspace(x0 - 2, x1 + 2, n)
    depth = top * rng.uniform(1.0, 1.6)
    ys = depth + rng.normal(0, 1.2, n) + (xs - xs.mean()) * rng.uniform(-0.12, 0.12)
    bone = _spline(xs, ys, grid)
    a, b = x0 + (x1 - x0) * rng.uniform(0, 0.12), x1 - (x1 - x0) * rng.uniform(0, 0.12)
    return _Anatomy(grid, bone, (grid >= a) & (grid <= b))


def _rib(rng, grid, x0, x1, top):
    span = x1 - x0
    n_ribs = int(rng.integers(2, 4))
    widths = rng.uniform(0.16, 0.26, n_ribs) * span
    gaps = rng.uniform(0.12, 0.25, n_ribs - 1) * span
    total = widths.sum() + gaps.sum()
    start = x0 + rng.uniform(0.02, 0.98) * max(span - total, 0.0) - max(total - span, 0.0) / 2
    bone = np.full(grid.shape, np.nan)
    depth = top * rng.uniform(0.9, 1.3)
    for w, g in zip(widths, np.append(gaps, 0.0)):
        c = start + w / 2
        xs = np.linspace(start, start + w, 5)
        ys = depth + rng.normal(0, 0.4) + rng.uniform(1.2, 2.5) * ((xs - c) / (w / 2)) ** 2 + rng.normal(0, 0.2, 5)
        sel = (grid >= start) & (grid <= start + w)
        bone[sel] = _spline(xs, ys, grid[sel])
        start += w + g
    present = np.isfinite(bone)
    pleura = depth + rng.uniform(3.0, 7.0) + _spline(np.linspace(x0, x1, 4), rng.normal(0, 0.5, 4), grid)
    pleura = np.where(present, np.nan, pleura)
    return _Anatomy(grid, np.where(present, bone, depth + 50.0), present, pleura)


def _femoral_head(rng, grid, x0, x1, top):
    span = x1 - x0
    r = rng.uniform(8.0, 14.0)
    cx = x0 + span * rng.uniform(0.3, 0.5)
    apex = top * rng.uniform(1.0, 1.5)
    a = np.deg2rad(np.linspace(-rng.uniform(55, 75), rng.uniform(40, 60), 7))
    xs, ys = cx + r * np.sin(a), apex + r * (1 - np.cos(a))
    # The neck: from the end of the dome, descending then flattening.
    nx = xs[-1] + np.cumsum(rng.uniform(4.0, 7.0, 3))
    ny = ys[-1] + np.cumsum(rng.uniform(1.0, 3.0, 3) * np.array([1.0, 0.6, 0.3]))
    xs, ys = np.concatenate([xs, nx]), np.concatenate([ys, ny]) + rng.normal(0, 0.25, xs.size + 3)
    bone = _spline(xs, ys, np.clip(grid, xs[0], xs[-1]))
    present = (grid >= xs[0]) & (grid <= min(xs[-1], x1))
    if rng.random() < 0.5:  # mirror: seen from the other side
        bone, present = bone[::-1].copy(), present[::-1].copy()
    return _Anatomy(grid, bone, present)


def _slope(anat: _Anatomy) -> np.ndarray:
    """dy/dx of the surface where bone is present (ends of segments: one-sided), clipped to +-2.5."""
    bone = np.where(anat.present, anat.bone, np.nan)
    g = np.gradient(bone, anat.grid)
    g = np.where(np.isfinite(g), g, 0.0)
    return np.clip(g, -2.5, 2.5)


_SHAPES = {"long_bone": _long_bone, "rib": _rib, "femoral_head": _femoral_head}


def _interp(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.interp(x, grid, values, left=values[0], right=values[-1])


def _tissue(rng, probe: _Probe, anat: _Anatomy, x: np.ndarray, y: np.ndarray, thick: float):
    """Echogenicity (amplitude scale), scatterer density (0-1), attenuation (dB/mm/MHz, one way) and
    the bone mask on an array of physical positions."""
    bone_y = _interp(anat.grid, anat.bone, x)
    present = _interp(anat.grid, anat.present.astype(np.float64), x) > 0.5
    in_bone = present & (y >= bone_y)
    top = float(np.nanmin(np.where(anat.present, anat.bone, np.nan)))
    echo = np.full(x.shape, 1.0)
    dens = np.full(x.shape, 1.0)
    # Layers above the bone: skin, subcutaneous fat (dark, with septa), one or two muscle layers.
    x0, x1 = probe.x_range
    knots = np.linspace(x0 - 1, x1 + 1, 5)
    skin = rng.uniform(1.2, 2.2)
    fat_end = _interp(anat.grid, _spline(knots, top * rng.uniform(0.25, 0.45) + rng.normal(0, 0.6, 5), anat.grid), x)
    echo = np.where(y < skin, rng.uniform(1.8, 2.6), echo)
    fat = (y >= skin) & (y < fat_end)
    echo = np.where(fat, rng.uniform(0.35, 0.55), echo)
    angle = rng.uniform(-0.4, 0.4)
    septa = np.cos(2 * np.pi * (y + angle * x) / rng.uniform(2.0, 4.0)) > 0.93
    echo = np.where(fat & septa, echo * 2.2, echo)
    muscle = y >= fat_end
    fib = 1 + 0.35 * np.cos(2 * np.pi * (y + rng.uniform(-0.2, 0.2) * x) / rng.uniform(0.7, 1.3))
    echo = np.where(muscle, rng.uniform(0.8, 1.1) * fib, echo)
    fascia = [fat_end]
    if rng.random() < 0.6:
        mid = _interp(anat.grid, _spline(knots, top * rng.uniform(0.55, 0.8) + rng.normal(0, 0.6, 5), anat.grid), x)
        fascia.append(mid)
        echo = np.where(y >= mid, echo * rng.uniform(0.75, 1.25), echo)
    for f in fascia:  # bright thin lines, no shadow: distractors
        echo = echo + rng.uniform(1.5, 3.0) * np.exp(-(((y - f) / rng.uniform(0.2, 0.35)) ** 2))
    atten = np.full(x.shape, rng.uniform(0.05, 0.08))
    # Anechoic vessels / cysts: no scatterers, no attenuation (posterior enhancement follows).
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(x0 + 3, x1 - 3), rng.uniform(skin + 3, max(skin + 3.5, top - 2.5))
        rx = rng.uniform(1.2, 3.5)
        ry = rx * rng.uniform(0.6, 1.0)
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        dens = np.where(d < 1, 0.02, dens)
        atten = np.where(d < 1, 0.005, atten)
        echo = np.where((d >= 1) & (d < 1.25), echo * 1.8, echo)  # vessel wall
    # Pleura (rib view): bright, deep, no shadow; lung below it scatters little.
    if anat.pleura is not None:
        pl = _interp(anat.grid, np.nan_to_num(anat.pleura, nan=-100.0), x)
        has = pl > 0
        echo = np.where(has & (np.abs(y - pl) < 0.35), rng.uniform(3.0, 5.0), echo)
        echo = np.where(has & (y > pl + 0.35), echo * 0.5, echo)
    # Cortex scatterers just below the surface; the bone interior barely scatters, and attenuates.
    below = y - bone_y
    # (the cortex's band of echoes, `thick` mm, is what labellers draw; attenuation starts below it)
    cortex = rng.uniform(4.0, 7.0) * (1 - 0.5 * np.clip(below / thick, 0, 1))
    echo = np.where(in_bone, np.where(below < thick, cortex, 0.3), echo)
    atten = np.where(in_bone & (below > 0.8 * thick), 10.0, atten)
    return echo, dens, atten, in_bone, bone_y


# --------------------------------------------------------------------------------------------------
# Generation.


def generate_rf(seed: int, anatomy: str | None = None, probe: str | None = None,
                size: tuple[int, int] | None = None) -> RfSample:
    """One frame of generator B; the same seed and options give the same frame."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB0B]))
    anat_name = anatomy if anatomy is not None else str(rng.choice(ANATOMIES))
    if anat_name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    chance_convex = {"long_bone": 0.3, "rib": 0.6, "femoral_head": 0.6}[anat_name]
    kind = probe if probe is not None else ("convex" if rng.random() < chance_convex else "linear")
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    h, w = size if size is not None else SIZES[kind]
    pr = _probe(rng, kind, (h * 0.93) / (w - 4))
    freq = rng.uniform(7.0, 12.0) if kind == "linear" else rng.uniform(3.5, 6.0)

    # Anatomy on a fine x grid; the bone's shallowest point sits at 25-55 % of the depth.
    grid = np.linspace(pr.x_range[0] - 5, pr.x_range[1] + 5, 2048)
    top = pr.depth_mm * rng.uniform(0.22, 0.4)
    anat = _SHAPES[anat_name](rng, grid, pr.x_range[0] + 0.05 * np.ptp(pr.x_range), pr.x_range[1] - 0.05 * np.ptp(pr.x_range), top)
    anat.bone = np.clip(anat.bone, 4.0, pr.depth_mm * 0.85)

    # RF grid: n_z samples along each of _N_LINES lines.
    lam = _C_MM_PER_US / freq
    dz = lam / 2 / _SAMPLES_PER_HALF_WAVE
    n_z = int(np.ceil(pr.depth_mm / dz))
    z = (np.arange(n_z) * dz)[:, None]
    u = ((np.arange(_N_LINES) + 0.5) / _N_LINES)[None, :]
    bx, by = pr.beam_xy(z, u)
    thick = rng.uniform(0.5, 1.5)  # label band thickness, mm
    echo, dens, atten, in_bone, bone_y = _tissue(rng, pr, anat, bx, by, thick)

    # Point scatterers: Poisson count per RF cell, Gaussian amplitudes -> N(0, k) per cell.
    rho = 0.8
    counts = rng.poisson(rho * dens)
    rf = np.sqrt(counts) * rng.standard_normal(counts.shape) * echo
    strong = int(rng.integers(5, 25))
    rf[rng.integers(0, n_z, strong), rng.integers(0, _N_LINES, strong)] += rng.choice([-1, 1], strong) * rng.uniform(4, 10, strong)
    # Specular cortex: a coherent reflector where each line first enters the bone.
    hit = in_bone.any(axis=0)
    first = np.argmax(in_bone, axis=0)
    lines = np.nonzero(hit)[0]
    if lines.size:
        slope = _slope(anat)
        gx = bx[first[lines], lines]
        s = _interp(anat.grid, slope, gx)
        normal = np.stack([-s, np.ones_like(s)]) / np.sqrt(1 + s * s)
        if kind == "linear":
            direction = np.stack([np.zeros_like(s), np.ones_like(s)])
        else:
            th = (u[0, lines] * 2 - 1) * pr.half_angle
            direction = np.stack([np.sin(th), np.cos(th)])
        cos_i = np.abs((normal * direction).sum(0))
        amp = rng.uniform(12.0, 25.0) * (0.2 + 0.8 * cos_i**4) * (1 + 0.15 * rng.standard_normal(lines.size))
        rf[first[lines], lines] += amp * np.sqrt(rho) * 3

    # Two-way attenuation integrated along each line (the shadow below bone comes from here).
    loss_db = 2 * np.cumsum(atten * freq * dz, axis=0)
    loss_db = np.minimum(loss_db, 200.0)
    rf = rf * 10 ** (-loss_db / 20)
    # Reverberations: fainter copies of the strong reflectors at twice their depth.
    if rng.random() < 0.5:
        reverb_gain = rng.uniform(0.01, 0.03)
        tissue_loss = 2 * z * rng.uniform(0.05, 0.08) * freq
        if lines.size:
            d2 = np.minimum(2 * first[lines], n_z - 1)
            rf[d2, lines] += reverb_gain * rf[first[lines], lines] * 10 ** (-tissue_loss[first[lines], 0] / 20)
        if anat.pleura is not None:  # A-lines below the pleura, between the ribs
            pl = np.interp(bx[0], anat.grid, np.nan_to_num(anat.pleura, nan=-100.0))
            for k in (2, 3):
                idx = np.round(k * pl / dz).astype(int)
                ok = (pl > 0) & (idx < n_z)
                rf[idx[ok], np.nonzero(ok)[0]] += reverb_gain ** (k - 1) * rng.uniform(3, 6) * 10 ** (-k * 0.3 * freq * pl[ok] / 20)

    # Pulse-echo PSF. Axial: Gaussian-windowed cosine (period = half a wavelength in depth).
    sigma = rng.uniform(0.5, 0.8) * lam  # mm
    t = np.arange(-int(4 * sigma / dz), int(4 * sigma / dz) + 1) * dz
    pulse = np.exp(-(t**2) / (2 * sigma**2)) * np.cos(4 * np.pi * t / lam)
    rf = ndimage.convolve1d(rf, pulse, axis=0, mode="constant")
    # Lateral: beam width grows away from the focus (Gaussian beam); blended from a few blurs.
    pitch = (pr.width_mm if kind == "linear" else 2 * pr.half_angle * (pr.radius_mm + 0.5 * pr.depth_mm)) / _N_LINES
    focus = pr.depth_mm * rng.uniform(0.3, 0.6)
    w0 = rng.uniform(1.0, 1.6) * lam * rng.uniform(1.5, 2.5) / 2.355  # sigma at focus, mm
    zr = rng.uniform(0.25, 0.45) * pr.depth_mm
    beam = w0 * np.sqrt(1 + ((z[:, 0] - focus) / zr) ** 2)
    if kind == "convex":  # lines diverge: the same beam covers fewer lines at depth
        beam = beam * (pr.radius_mm + 0.5 * pr.depth_mm) / (pr.radius_mm + z[:, 0])
    sig_lines = np.clip(beam / pitch, 0.4, None)
    levels = np.geomspace(sig_lines.min(), sig_lines.max() + 1e-6, 5)
    blurred = np.stack([ndimage.gaussian_filter1d(rf, s, axis=1, mode="constant") for s in levels])
    pos = np.interp(np.log(sig_lines), np.log(levels), np.arange(levels.size))
    lo = np.clip(np.floor(pos).astype(int), 0, levels.size - 2)
    frac = (pos - lo)[:, None]
    rows = np.arange(n_z)
    rf = blurred[lo, rows] * (1 - frac) + blurred[lo + 1, rows] * frac
    # Time-gain compensation (undoes most of the soft-tissue loss, not the shadow), receiver noise
    # (after the gain: a floor some 18-26 dB under tissue, so shadows are dark, not empty), then the envelope by the Hilbert transform.
    alpha = float(np.median(atten[~in_bone]))
    tgc_db = 2 * z * freq * alpha * rng.uniform(0.85, 1.0) + np.interp(z, np.linspace(0, pr.depth_mm, 6), rng.normal(0, 1.5, 6))
    rf = rf * 10 ** (tgc_db / 20)
    level = float(np.median(np.abs(rf[~in_bone])))
    rf = rf + rng.normal(0, level * 10 ** (-rng.uniform(18.0, 26.0) / 20), rf.shape)
    env = np.abs(signal.hilbert(rf, axis=0))

    # Scan conversion: output pixels (mm) -> (depth sample, line) on the RF grid.
    margin_top = int(round(h * rng.uniform(0.04, 0.09)))
    y_lo = 0.0 if kind == "linear" else pr.radius_mm * (np.cos(pr.half_angle) - 1)
    ext_y, ext_x = pr.depth_mm - y_lo, np.ptp(pr.x_range)
    sp = max(ext_y / (h - margin_top - 2), ext_x / (w - 4))
    x_mid = (pr.x_range[0] + pr.x_range[1]) / 2
    py = (np.arange(h) - margin_top + 0.5)[:, None] * sp + y_lo
    px = (np.arange(w) - w / 2 + 0.5)[None, :] * sp + x_mid
    px, py = np.broadcast_arrays(px, py)
    zq, uq, inside = pr.to_beam(px, py)
    # Smooth along depth to the output pitch first (the scan converter's anti-aliasing), then log.
    env = ndimage.gaussian_filter1d(env, max(0.5, 0.35 * sp / dz), axis=0)
    dr = rng.uniform(45.0, 65.0)
    db = 20 * np.log10(env + 1e-9)
    ref = np.percentile(db[by < np.nanmin(np.where(anat.present, anat.bone, np.nan))], 50)  # soft tissue
    grey = (db - ref) / dr + rng.uniform(0.42, 0.55)
    coords = np.stack([zq / dz, uq * _N_LINES - 0.5])
    img = ndimage.map_coordinates(grey, coords, order=1, mode="nearest")
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    image[~inside] = 0

    # Label: bone-surface band of perpendicular thickness `thick` under the surface, on output pixels.
    surf = _interp(anat.grid, anat.bone, px)
    slope = _interp(anat.grid, _slope(anat), px)
    has = _interp(anat.grid, anat.present.astype(np.float64), px) > 0.5
    d = py - surf
    mask = has & inside & (d >= -0.5 * sp) & (d <= thick * np.sqrt(1 + slope**2))
    return RfSample(image, mask, (float(sp), float(sp)), anat_name, kind, inside, float(freq), float(dr), int(seed))


def generate_rf_set(n: int, seed: int, **options) -> list[RfSample]:
    """`n` frames; per-frame seeds derived from `seed` (a longer set starts with a shorter one's frames)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seeds = [int(np.random.SeedSequence([int(seed), i, 0xB]).generate_state(1)[0]) for i in range(n)]
    return [generate_rf(s, **options) for s in seeds]


def load_rf_spec(spec: str):
    """`rfsim:N[:SEED]` -> (Samples named `rfsim-s<SEED>-<index>-<anatomy>`, description)."""
    from .datasets import Sample

    parts = spec.split(":")[1:]
    try:
        n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError):
        raise ValueError(f"bad rfsim spec {spec!r}; use rfsim:N[:SEED]") from None
    if n < 1 or seed < 0 or len(parts) > 2:
        raise ValueError(f"bad rfsim spec {spec!r}; use rfsim:N[:SEED] with N >= 1, SEED >= 0")
    frames = generate_rf_set(n, seed)
    samples = [Sample(f.image, f.mask, f.spacing_mm, f"rfsim-s{seed}-{i:05d}-{f.anatomy}") for i, f in enumerate(frames)]
    return samples, f"rfsim n={n} seed={seed}"
