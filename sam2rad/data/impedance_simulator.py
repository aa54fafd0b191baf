"""Generator C: B-mode frames from interface reflections of an acoustic impedance map.

A third ultrasound source, written after the recipe was settled (session 24) so that its figures
test a generator no design choice has seen. It forms images differently from A
(`sam2rad.data.synthetic`: echogenicity times complex noise, Gaussian PSF) and from B
(`sam2rad.data.rf_simulator`: real RF lines, point scatterers, a specular reflector placed at the
first bone sample, Hilbert envelope):

1. Anatomy (`impedance_anatomy`): knee condyle under cartilage, spine laminae, a finger joint under
   a tendon, as tissues with an impedance, scatterers and an attenuation in physical mm.
2. Probes: a phased array (a sector from a small footprint, apex at the top, +-35-45 degrees, 2.5-5
   MHz) or a linear array (7-14 MHz, several transmit focal zones).
3. Echoes in complex baseband (I/Q) on the beam grid (depth x line, an eighth of a wavelength
   deep): every impedance step reflects its coefficient (Z2 - Z1) / (Z2 + Z1), weighted by how
   squarely the beam meets the interface (the step's 2-D gradient against the beam); scatterers are
   Poisson counts per cell with random phase; every echo carries the phase of its two-way path.
   The pulse returns through two-way transmission losses (1 - R^2 per interface crossed) and
   frequency-dependent attenuation, so bone shadows by physics: the cortex lets some sound through,
   the trabecular bone under it does not.
4. The point-spread function: a Gaussian pulse envelope in depth and the aperture's two-way far-field
   pattern across (a sinc^2 with side lobes; in angle for the sector, where its width is constant;
   growing away from the focal zones for the linear array).
5. Display: intensity averaged down to the output pitch, log compression with a random dynamic
   range, a scanner's speckle-reduction filter (median blended with the raw), an S-shaped grey map,
   scan conversion to the Cartesian frame, depth-marker dots beside the image.

The label is the bone cortex: from the surface down to the cortex's deep interface (0.5-1.4 mm
along the normal, varying slowly along the surface), drawn on the output pixel grid; cartilage,
tendon and the ligament between laminae are not bone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .impedance_anatomy import ANATOMIES, SHAPES, Surface, tissue

PROBES: tuple[str, ...] = ("linear", "phased")
SIZES = {"linear": (320, 272), "phased": (272, 352)}  # (H, W); neither A's nor B's frame shapes
_C_MM_PER_US = 1.54
_N_LINES = 256


@dataclass(frozen=True)
class ImpedanceSample:
    """One frame of generator C: uint8 image, bool mask (the cortex), spacing, what it shows, the
    imaging region (bool), probe frequency, dynamic range."""

    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float]
    anatomy: str
    probe: str
    inside: np.ndarray
    freq_mhz: float
    dynamic_range_db: float
    seed: int = 0


@dataclass(frozen=True)
class _Geometry:
    kind: str
    depth_mm: float
    width_mm: float  # linear aperture
    half_angle: float  # phased: half the sector's opening, rad
    footprint_mm: float  # phased: the array's length (sets the lateral resolution)

    @property
    def x_range(self) -> tuple[float, float]:
        if self.kind == "linear":
            return 0.0, self.width_mm
        reach = self.depth_mm * np.sin(self.half_angle)
        return -reach, reach

    def beam_xy(self, r: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth r along the beam (mm) and line coordinate u in [0, 1) -> physical x, y (mm)."""
        if self.kind == "linear":
            return np.broadcast_arrays(u * self.width_mm, r)
        th = (2 * u - 1) * self.half_angle
        return r * np.sin(th), r * np.cos(th)

    def to_beam(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.kind == "linear":
            r, u = y, x / self.width_mm
        else:
            r = np.hypot(x, y)
            u = (np.arctan2(x, y) / self.half_angle + 1) / 2
        return r, u, (r >= 0.5) & (r < self.depth_mm) & (u >= 0) & (u < 1)


def _geometry(rng: np.random.Generator, kind: str, aspect: float) -> _Geometry:
    if kind == "linear":
        w = rng.uniform(32.0, 42.0)
        return _Geometry(kind, w * aspect * rng.uniform(0.9, 1.0), w, 0.0, 0.0)
    return _Geometry(kind, rng.uniform(40.0, 62.0), 0.0, np.deg2rad(rng.uniform(35.0, 45.0)), rng.uniform(14.0, 20.0))


def _reflections(ln_z: np.ndarray, lateral_mm: np.ndarray, dr: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Reflection coefficient of each step along the beam, weighted by the incidence, and the
    two-way amplitude transmission up to each sample (1 - R^2 per interface crossed)."""
    z = np.exp(ln_z)
    r = np.zeros_like(z)
    r[1:] = (z[1:] - z[:-1]) / (z[1:] + z[:-1])
    smooth = ndimage.gaussian_filter(ln_z, (2.0, 1.0))
    g_r = np.gradient(smooth, axis=0) / dr
    g_t = np.gradient(smooth, axis=1) / lateral_mm
    cos_i = np.abs(g_r) / np.sqrt(g_r**2 + g_t**2 + 1e-12)
    weighted = r * cos_i ** rng.uniform(2.0, 5.0)
    transmission = np.cumprod(1 - r**2, axis=0)
    return weighted, np.concatenate([np.ones_like(transmission[:1]), transmission[:-1]])


def _lateral_pattern(width: float, half: int) -> np.ndarray:
    """Two-way aperture pattern sampled on lines: sinc^2, first zero at `width` lines."""
    t = np.arange(-half, half + 1) / max(width, 1e-3)
    return np.sinc(t) ** 2


def _blur(field: np.ndarray, axial: np.ndarray, lateral: list[np.ndarray], weights: np.ndarray | None) -> np.ndarray:
    """Axial pulse envelope, then a lateral pattern per depth (blended between a few widths)."""
    out = ndimage.convolve1d(field.real, axial, axis=0, mode="constant") + 1j * ndimage.convolve1d(field.imag, axial, axis=0, mode="constant")
    blurred = [ndimage.convolve1d(out.real, k, axis=1, mode="constant") + 1j * ndimage.convolve1d(out.imag, k, axis=1, mode="constant")
               for k in lateral]
    if weights is None:
        return blurred[0]
    return sum(w[:, None] * b for w, b in zip(weights, blurred))


def generate_impedance(seed: int, anatomy: str | None = None, probe: str | None = None) -> ImpedanceSample:
    """One frame of generator C; the same seed and options give the same frame."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0C]))
    anat_name = anatomy if anatomy is not None else str(rng.choice(ANATOMIES))
    if anat_name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    kind = probe if probe is not None else ("phased" if rng.random() < {"condyle": 0.3, "vertebra": 0.7, "metacarpal": 0.2}[anat_name] else "linear")
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    h, w = SIZES[kind]
    geo = _geometry(rng, kind, h / w)
    freq = rng.uniform(7.0, 14.0) if kind == "linear" else rng.uniform(2.5, 5.0)
    lam = _C_MM_PER_US / freq

    x0, x1 = geo.x_range
    grid = np.linspace(x0 - 5, x1 + 5, 2048)
    inner = (x0 + 0.2 * (x1 - x0), x1 - 0.2 * (x1 - x0)) if kind == "phased" else (x0 + 0.04 * (x1 - x0), x1 - 0.04 * (x1 - x0))
    surf: Surface = SHAPES[anat_name](rng, grid, *inner, geo.depth_mm * rng.uniform(0.28, 0.45))
    surf.depth = np.clip(surf.depth, 4.0, geo.depth_mm * 0.85)

    # Beam grid: depth samples an eighth of a wavelength apart, _N_LINES lines.
    dr = lam / 8
    r = (np.arange(int(np.ceil(geo.depth_mm / dr))) * dr)[:, None]
    u = ((np.arange(_N_LINES) + 0.5) / _N_LINES)[None, :]
    bx, by = geo.beam_xy(r, u)
    t = tissue(rng, surf, bx, by)
    lateral_mm = (geo.width_mm / _N_LINES) if kind == "linear" else np.maximum(r, 1.0) * 2 * geo.half_angle / _N_LINES
    refl, trans = _reflections(np.log(t.impedance), np.broadcast_to(lateral_mm, t.impedance.shape), dr, rng)
    # Scatterers: a Poisson count per cell, each with a random phase and a Gaussian amplitude.
    counts = rng.poisson(t.density)
    scatter = 0.012 * t.strength * np.sqrt(counts) * (rng.standard_normal(counts.shape) + 1j * rng.standard_normal(counts.shape)) / np.sqrt(2)
    loss = 10 ** (-2 * np.cumsum(t.attenuation * freq * dr, axis=0) / 20)
    field = (refl + scatter) * trans * loss * np.exp(2j * np.pi * 2 * r / lam)

    # PSF: pulse envelope (1.5-3 cycles) in depth; the aperture's pattern across.
    cycles = rng.uniform(1.5, 3.0)
    sigma = cycles * lam / 2 / 2.355
    ax = np.arange(-int(4 * sigma / dr), int(4 * sigma / dr) + 1) * dr
    axial = np.exp(-(ax**2) / (2 * sigma**2))
    if kind == "phased":  # in angle the pattern's width is constant: lambda / footprint
        width = (lam / geo.footprint_mm) / (2 * geo.half_angle / _N_LINES)
        iq = _blur(field, axial, [_lateral_pattern(width, int(4 * width) + 1)], None)
    else:  # focal zones: narrow near each focus, wider between and beyond them
        pitch = geo.width_mm / _N_LINES
        foci = np.sort(rng.uniform(0.2, 0.8, int(rng.integers(1, 4)))) * geo.depth_mm
        f_number = rng.uniform(1.5, 2.5)
        near = np.min(np.abs(r[:, 0, None] - foci[None, :]), axis=1)
        width_mm = lam * f_number * (1 + (near / (0.15 * geo.depth_mm)) ** 2) ** 0.5
        levels = np.geomspace(width_mm.min() / pitch, width_mm.max() / pitch + 1e-6, 4)
        pos = np.interp(np.log(width_mm / pitch), np.log(levels), np.arange(levels.size))
        weights = np.stack([np.clip(1 - np.abs(pos - k), 0, 1) for k in range(levels.size)])
        iq = _blur(field, axial, [_lateral_pattern(v, int(3 * v) + 1) for v in levels], weights)

    # Gain: TGC undoes most soft-tissue loss; a haze near the face (phased arrays); receiver noise.
    alpha = float(np.median(t.attenuation[t.impedance < 2.0]))
    iq = iq * 10 ** ((2 * r * freq * alpha * rng.uniform(0.8, 1.0) + np.interp(r, np.linspace(0, geo.depth_mm, 5), rng.normal(0, 1.5, 5))) / 20)
    tissue_level = float(np.median(np.abs(iq[(t.impedance < 2.0) & (by < np.nanmin(np.where(surf.present, surf.depth, np.nan)))])))
    if kind == "phased":
        iq = iq + tissue_level * rng.uniform(0.5, 1.5) * np.exp(-r / rng.uniform(3.0, 6.0)) * ndimage.gaussian_filter(
            rng.standard_normal(iq.shape), (6, 2))
    iq = iq + tissue_level * 10 ** (-rng.uniform(20.0, 28.0) / 20) * (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape))

    # Display: intensity averaged to about half the output pitch, log, speckle reduction, grey map.
    margin_top = int(round(h * rng.uniform(0.03, 0.07)))
    ext_x = x1 - x0
    sp = max(geo.depth_mm / (h - margin_top - 2), ext_x / (w - 16))  # 16 columns keep room for the depth markers
    step = max(1, int(0.5 * sp / dr))
    n_keep = (iq.shape[0] // step) * step
    power = (np.abs(iq[:n_keep]) ** 2).reshape(-1, step, _N_LINES).mean(1)
    dr_out = dr * step
    db = 10 * np.log10(power + 1e-20) - 20 * np.log10(tissue_level + 1e-20)
    dyn = rng.uniform(50.0, 70.0)
    grey = db / dyn + rng.uniform(0.4, 0.5)  # soft tissue mid-grey, bone near white
    smooth = ndimage.median_filter(grey, size=(3, 3))
    mix = rng.uniform(0.3, 0.8)
    grey = mix * smooth + (1 - mix) * grey
    px = (np.arange(w) - (w - 12) / 2 + 0.5)[None, :] * sp + (x0 + x1) / 2
    py = (np.arange(h) - margin_top + 0.5)[:, None] * sp
    px, py = np.broadcast_arrays(px, py)
    rq, uq, inside = geo.to_beam(px, py)
    img = ndimage.map_coordinates(grey, np.stack([rq / dr_out - 0.5, uq * _N_LINES - 0.5]), order=3, mode="nearest")
    k = rng.uniform(3.0, 6.0)
    img = 1 / (1 + np.exp(-k * (np.clip(img, 0, 1.2) - 0.5)))
    img = (img - 1 / (1 + np.exp(k / 2))) / (1 / (1 + np.exp(-k / 2)) - 1 / (1 + np.exp(k / 2)))
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    image[~inside] = 0
    for cm in range(1, int(geo.depth_mm // 10) + 1):  # depth markers: a dot every centimetre, right margin
        row = margin_top + int(round(cm * 10 / sp))
        if row < h - 1:
            image[row - 1:row + 1, w - 6:w - 4] = 200

    # Label: the cortex, along the surface's normal, on the output pixels.
    surf_y = surf.at(surf.depth, px)
    slope = surf.at(surf.slope(), px)
    has = surf.at(surf.present.astype(float), px) > 0.5
    d = (py - surf_y) / np.sqrt(1 + slope**2)
    mask = has & inside & (py - surf_y >= -0.5 * sp) & (d <= surf.at(surf.cortex, px))
    return ImpedanceSample(image, mask, (float(sp), float(sp)), anat_name, kind, inside, float(freq), float(dyn), int(seed))


def generate_impedance_set(n: int, seed: int, **options) -> list[ImpedanceSample]:
    """`n` frames; per-frame seeds derived from `seed` (a longer set starts with a shorter one's frames)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seeds = [int(np.random.SeedSequence([int(seed), i, 0xC]).generate_state(1)[0]) for i in range(n)]
    return [generate_impedance(s, **options) for s in seeds]


def load_impedance_spec(spec: str):
    """`zsim:N[:SEED]` -> (Samples named `zsim-s<SEED>-<index>-<anatomy>`, description)."""
    from .datasets import Sample

    parts = spec.split(":")[1:]
    try:
        n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError):
        raise ValueError(f"bad zsim spec {spec!r}; use zsim:N[:SEED]") from None
    if n < 1 or seed < 0 or len(parts) > 2:
        raise ValueError(f"bad zsim spec {spec!r}; use zsim:N[:SEED] with N >= 1, SEED >= 0")
    frames = generate_impedance_set(n, seed)
    samples = [Sample(f.image, f.mask, f.spacing_mm, f"zsim-s{seed}-{i:05d}-{f.anatomy}") for i, f in enumerate(frames)]
    return samples, f"zsim n={n} seed={seed}"
