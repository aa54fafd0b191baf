"""Seeded synthetic B-mode ultrasound frames of bone surfaces, with ground-truth masks.

Why: tests, demos and smoke training need bone ultrasound that looks and behaves like the real thing
(bright surface echo, acoustic shadow, speckle, burned-in text) without shipping patient data.

Image formation, briefly: a tissue *echogenicity* map (layers, fascia, tendons, cartilage, the bone
echo, the shadow beneath it) is multiplied by complex white noise (random scatterers) and convolved
with an anisotropic Gaussian point-spread function; the envelope of that is Rayleigh speckle. Depth
attenuation is only partly undone by time-gain compensation, then the envelope is log-compressed to
8-bit, like a scanner's display. Everything is drawn in beam coordinates (depth along the beam,
position across it) so the same code renders a linear or a curvilinear (sector) field of view.

The ground-truth mask is the bone-surface band (as labellers draw bone in US), not the whole bone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sam2rad.data.synthetic_surfaces import bone_surface, smooth_noise
from sam2rad.data.synthetic_text import burn_in_text

ANATOMIES: tuple[str, ...] = ("hip", "wrist", "shoulder")
FIELDS_OF_VIEW: tuple[str, ...] = ("linear", "sector")

# Imaging depth range (mm) per anatomy: sets the pixel spacing and the attenuation.
_DEPTH_MM = {"hip": (35.0, 60.0), "wrist": (20.0, 35.0), "shoulder": (30.0, 50.0)}
# Transducer frequency (MHz) per anatomy: sets speckle size and attenuation.
_FREQ_MHZ = {"hip": (5.0, 9.0), "wrist": (10.0, 15.0), "shoulder": (7.0, 12.0)}
# Chance of a curvilinear (sector) probe when the caller leaves fov open: wrists get linear probes.
_SECTOR_CHANCE = {"hip": 0.5, "wrist": 0.15, "shoulder": 0.35}
_GRID_PER_PX = 4  # lateral profile samples per pixel: nearest-sample error <= 1/8 px


@dataclass(frozen=True)
class SyntheticSample:
    """One synthetic frame.

    image: uint8 (H, W) B-mode image; pixels outside the imaging region are 0 except burned-in text.
    mask: bool (H, W) bone-surface band.
    spacing_mm: (row, col) pixel spacing in mm.
    anatomy: 'hip', 'wrist' or 'shoulder'.
    imaging_region: (x0, y0, x1, y1) pixel bounds of the imaging sector/rectangle, x1/y1 exclusive.
    fov: 'linear' or 'sector'.
    seed: the seed that reproduces this sample with the same options.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float]
    anatomy: str
    imaging_region: tuple[int, int, int, int]
    fov: str = "linear"
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Geometry: per-pixel beam coordinates for a linear or sector field of view.


@dataclass(frozen=True)
class _Geometry:
    depth: np.ndarray  # (H, W) float32, px along the beam from the transducer face
    lateral: np.ndarray  # (H, W) float32, px across the beam (arc length at mid depth for a sector)
    inside: np.ndarray  # (H, W) bool, inside the imaging region
    depth_extent: float  # px
    lateral_extent: float  # px
    region: tuple[int, int, int, int]

    @property
    def grid(self) -> np.ndarray:
        """Lateral positions (px) at which 1-D profiles (surface depth, ...) are sampled."""
        return np.arange(int(np.ceil(self.lateral_extent * _GRID_PER_PX)) + 2) / _GRID_PER_PX

    @property
    def grid_index(self) -> np.ndarray:
        """Per pixel, the nearest grid index: a gather is far cheaper than np.interp per profile."""
        n = int(np.ceil(self.lateral_extent * _GRID_PER_PX)) + 2
        return np.clip(np.rint(self.lateral * _GRID_PER_PX), 0, n - 1).astype(np.intp)


def _layout(rng: np.random.Generator, h: int, w: int, fov: str) -> _Geometry:
    # A top border is always reserved (scanners put text there), whether or not text is drawn, so
    # that toggling text changes nothing else.
    top = max(2, int(round(h * rng.uniform(0.08, 0.12))))
    bottom = int(round(h * rng.uniform(0.0, 0.03)))
    side = int(round(w * rng.uniform(0.03, 0.12)))
    y0, y1 = top, h - bottom
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    if fov == "linear":
        x0, x1 = side, w - side
        depth = np.broadcast_to(rows - y0, (h, w)).astype(np.float32)
        lateral = np.broadcast_to(cols - x0, (h, w)).astype(np.float32)
        inside = (depth >= 0) & (depth < y1 - y0) & (lateral >= 0) & (lateral < x1 - x0)
        return _Geometry(depth, lateral, inside, float(y1 - y0), float(x1 - x0), (x0, y0, x1, y1))

    # Sector: apex above the image; the fan's top arc touches y0 at its ends, its bottom reaches y1.
    half = rng.uniform(0.45, 0.65)  # half opening angle, rad
    r0 = (y1 - y0) * rng.uniform(0.25, 0.8)  # probe radius
    xc = w / 2.0 + rng.uniform(-0.02, 0.02) * w
    avail = min(xc - side, w - side - xc)
    while True:
        ya = y0 - r0 * np.cos(half)
        r1 = y1 - ya
        if r1 * np.sin(half) <= avail or half < 0.2:
            break
        half *= 0.97
    dy = rows - ya
    dx = cols - xc
    r = np.sqrt(dx * dx + dy * dy).astype(np.float32)
    theta = np.arctan2(dx, dy).astype(np.float32)
    r_mid = 0.5 * (r0 + r1)
    depth = r - np.float32(r0)
    lateral = (theta + np.float32(half)) * np.float32(r_mid)
    inside = (r >= r0) & (r < r1) & (np.abs(theta) <= half)
    x_lo = int(np.floor(xc - r1 * np.sin(half)))
    x_hi = int(np.ceil(xc + r1 * np.sin(half))) + 1
    region = (max(0, x_lo), y0, min(w, x_hi), y1)
    inside &= _box(h, w, region)
    return _Geometry(depth, lateral, inside, float(r1 - r0), float(2 * half * r_mid), region)


def _box(h: int, w: int, region: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = region
    out = np.zeros((h, w), dtype=bool)
    out[y0:y1, x0:x1] = True
    return out


# --------------------------------------------------------------------------------------------------
# Rendering.


def _coarse_texture(rng: np.random.Generator, geo: _Geometry, knots: int, amount: float) -> np.ndarray:
    # Slow echogenicity variation, drawn in beam coordinates so it follows a sector's fan.
    fine = ndimage.zoom(rng.standard_normal((knots, knots)).astype(np.float32), 64 / knots, order=1)
    zi = np.clip(np.rint(geo.depth * (63 / geo.depth_extent)), 0, 63).astype(np.intp)
    ui = np.clip(np.rint(geo.lateral * (63 / geo.lateral_extent)), 0, 63).astype(np.intp)
    return 1 + amount * fine[zi, ui]


def _line(z: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-(((z - centre) / np.float32(width)) ** 2))


def _echogenicity(rng, geo: _Geometry, anatomy: str, mm: float, thick: float):
    """Tissue amplitude reflectivity map and the bone-surface mask."""
    dep, lat = geo.depth_extent, geo.lateral_extent
    z, lu = geo.depth, geo.lateral
    u, idx = geo.grid, geo.grid_index

    def on_map(profile: np.ndarray) -> np.ndarray:  # 1-D lateral profile -> per-pixel map
        return np.asarray(profile, dtype=np.float32)[idx]

    surf = bone_surface(rng, anatomy, u, lat, dep)
    bone_top = float(surf.depth[surf.present].min()) if surf.present.any() else dep * 0.5

    # Soft-tissue layers above the bone: skin, subcutaneous fat, one or two muscle layers.
    skin = max(1.0, rng.uniform(1.0, 1.8) / mm)
    n_bounds = int(rng.integers(1, 3))
    fracs = np.sort(rng.uniform(0.2, 0.8, n_bounds))
    bounds = [
        on_map(bone_top * f + dep * 0.02 * smooth_noise(rng, u.size, 4) + (u - lat / 2) * rng.uniform(-0.08, 0.08))
        for f in fracs
    ]
    levels = [rng.uniform(0.45, 0.75)] + [rng.uniform(0.75, 1.2) for _ in bounds]
    layer = np.zeros(z.shape, dtype=np.int8)
    for b in bounds:
        layer += z > b
    amp = np.asarray(levels, dtype=np.float32)[layer]
    amp[z < skin] = rng.uniform(1.6, 2.4)
    # Muscle striations: oblique fibre echoes below the first boundary.
    period = rng.uniform(0.8, 1.6) / mm
    stri = 1 + 0.3 * np.sin(2 * np.pi * (z + rng.uniform(-0.15, 0.15) * lu) / period + rng.uniform(0, 6.3))
    amp = np.where(layer > 0, amp * stri, amp)
    for b in bounds:  # fascia: bright thin lines, the distractors (bright but no shadow)
        amp += rng.uniform(1.0, 2.5) * _line(z, b, max(0.8, rng.uniform(0.3, 0.6) / mm))
    amp *= _coarse_texture(rng, geo, 7, 0.2)

    # Bright point reflectors.
    n_pts = int(rng.integers(10, 40))
    ys, xs = np.nonzero(geo.inside)
    pick = rng.integers(0, ys.size, n_pts)
    amp[ys[pick], xs[pick]] += rng.uniform(2.0, 5.0, n_pts).astype(np.float32)

    bz = on_map(surf.depth)
    dz = z - bz
    present = on_map(surf.present.astype(np.float32)) > 0.5
    soft_present = on_map(ndimage.gaussian_filter1d(surf.present.astype(np.float32), lat * 0.012 * _GRID_PER_PX))
    half = np.float32(0.5 * thick) * (1 + 0.2 * on_map(smooth_noise(rng, u.size, 5))).clip(0.6, 1.4)

    _anatomy_tissue(rng, anatomy, amp, dz, half, present, mm, lu, lat)

    band = present & (np.abs(dz) <= half) & geo.inside
    bone_amp = rng.uniform(3.0, 7.0) * on_map(surf.gain)
    # The surface echo is brightest at its top (first reflection), fading through the band.
    amp = np.where(band, bone_amp * (1 - 0.35 * (dz + half) / (2 * half)), amp)

    # Acoustic shadow below the surface; slightly less dark with depth (reverberation, side lobes).
    below = np.clip((dz - half) / 1.5, 0, 1) * soft_present
    level = rng.uniform(0.03, 0.15) + rng.uniform(0, 0.15) * np.clip(dz / dep, 0, 1)
    shadow = 1 - (1 - level) * below
    amp *= shadow
    if rng.random() < 0.35:  # reverberation: faint copy of the surface at twice its depth
        amp += rng.uniform(0.3, 0.6) * _line(z, 2 * bz + half, max(1.0, 0.5 * thick)) * below
    amp[~geo.inside] = 0
    return amp.astype(np.float32), band


def _anatomy_tissue(rng, anatomy, amp, dz, half, present, mm, lu, lat) -> None:
    """Anatomy-specific soft tissue right above the bone, edited in place."""
    above = -dz - half  # distance above the surface echo, px
    if anatomy == "hip":
        # Hypoechoic articular cartilage on the head, the joint capsule above it.
        cart = rng.uniform(1.5, 3.5) / mm
        amp[present & (above > 0) & (above < cart)] *= rng.uniform(0.2, 0.35)
        gap = cart + rng.uniform(1.0, 4.0) / mm
        amp += rng.uniform(1.0, 2.0) * _line(above, np.float32(gap), max(1.0, 0.5 / mm)) * present
    elif anatomy == "shoulder":
        # Thin cartilage, then the rotator-cuff tendon with fibrils parallel to the bone.
        cart = rng.uniform(0.5, 1.2) / mm
        tendon = cart + rng.uniform(4.0, 7.0) / mm
        amp[present & (above > 0) & (above < cart)] *= rng.uniform(0.2, 0.4)
        fib = 1 + 0.35 * np.sin(2 * np.pi * above / (rng.uniform(0.5, 0.9) / mm))
        sel = present & (above >= cart) & (above < tendon)
        amp[sel] *= (rng.uniform(1.1, 1.4) * fib)[sel]
    else:
        # Extensor tendons: a few ellipses with fibrillar texture above the bones.
        for _ in range(int(rng.integers(1, 4))):
            cu = lat * rng.uniform(0.1, 0.9)
            ru = rng.uniform(2.0, 5.0) / mm
            rz = ru * rng.uniform(0.35, 0.6)
            cz = rng.uniform(1.2, 2.5) * rz + rng.uniform(0.3, 1.0) / mm
            ellipse = (((lu - cu) / ru) ** 2 + ((above - cz) / rz) ** 2) < 1
            fib = 1 + 0.4 * np.sin(2 * np.pi * above / (rng.uniform(0.4, 0.7) / mm))
            amp[ellipse] = (rng.uniform(0.5, 1.5) * fib)[ellipse]


def _speckle(rng, amp: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Envelope of scatterers x PSF: Rayleigh speckle whose local mean follows `amp`."""
    h, w = amp.shape
    field = np.empty((h, w), dtype=np.complex64)
    field.real = rng.standard_normal((h, w), dtype=np.float32) * amp
    field.imag = rng.standard_normal((h, w), dtype=np.float32) * amp
    field = ndimage.gaussian_filter(field, sigma_px, truncate=3.0)
    # Keep unit mean power for unit reflectivity: divide by sqrt(2 * sum(kernel^2)).
    norm = np.sqrt(2.0 / (4 * np.pi * sigma_px[0] * sigma_px[1]))
    return (np.abs(field) / np.float32(norm)).astype(np.float32)


def _depth_gain_db(rng, geo: _Geometry, depth_mm: float, freq: float) -> np.ndarray:
    # Round-trip attenuation only partly undone by the TGC curve: leaves a gentle, uneven
    # brightness change with depth, as on a real scanner.
    atten = rng.uniform(0.04, 0.07) * freq  # dB/mm round trip, ~0.2-0.35 dB/cm/MHz one way
    depth = np.linspace(0, depth_mm, 16)
    tgc = atten * rng.uniform(0.8, 1.05) * depth + rng.uniform(-3, 3, 16).cumsum() * 0.3
    residual = tgc - atten * depth
    z_mm = geo.depth * np.float32(depth_mm / geo.depth_extent)
    return np.interp(z_mm, depth, residual).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# Public API.


def generate(
    seed: int,
    size: tuple[int, int] | int = (256, 256),
    anatomy: str | None = None,
    text: bool = False,
    fov: str | None = None,
) -> SyntheticSample:
    """Generate one synthetic bone-ultrasound frame.

    seed: non-negative int; the same seed and options give the same sample.
    size: (H, W) in pixels (or one int for a square), at least 64 each.
    anatomy: 'hip', 'wrist', 'shoulder', or None to draw one from the seed.
    text: burn in scanner-like text and a depth ruler in the border outside the imaging region
        (drawn from its own random stream: the image is otherwise identical to text=False).
    fov: 'linear', 'sector', or None to draw one from the seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 64 or w < 64:
        raise ValueError(f"size must be at least 64x64, got {(h, w)}")
    main_ss, text_ss = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(main_ss)
    anat = anatomy if anatomy is not None else str(rng.choice(ANATOMIES))
    if anat not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES} or None, got {anatomy!r}")
    view = fov if fov is not None else ("sector" if rng.random() < _SECTOR_CHANCE[anat] else "linear")
    if view not in FIELDS_OF_VIEW:
        raise ValueError(f"fov must be one of {FIELDS_OF_VIEW} or None, got {fov!r}")

    geo = _layout(rng, h, w, view)
    depth_mm = rng.uniform(*_DEPTH_MM[anat])
    freq = rng.uniform(*_FREQ_MHZ[anat])
    mm = depth_mm / geo.depth_extent  # mm per pixel, square pixels
    thick = float(np.clip(h * rng.uniform(0.012, 0.03), 3.0, None))
    amp, mask = _echogenicity(rng, geo, anat, mm, thick)

    noise_floor = rng.uniform(0.01, 0.04)  # electronic noise, adds incoherently
    amp = np.sqrt(amp * amp + np.float32(noise_floor**2)) * geo.inside
    # PSF scales with wavelength; lateral resolution is about twice worse than axial.
    axial_mm = rng.uniform(0.8, 1.2) / freq
    sigma = (max(0.6, axial_mm / mm), max(0.9, axial_mm * rng.uniform(1.6, 2.4) / mm))
    env = _speckle(rng, amp, sigma)
    # Display-side smoothing (scan conversion, speckle filters) softens the envelope's nulls.
    env = ndimage.gaussian_filter(env, rng.uniform(0.6, 1.0) * np.asarray(sigma), truncate=2.5)
    gain_db = _depth_gain_db(rng, geo, depth_mm, freq)

    # Display compression: a power law (between linear and log) keeps speckle granular, as on
    # scanners' grey maps; tissue (amplitude 1) lands mid-grey, the shadow near black.
    gamma = rng.uniform(0.45, 0.65)
    tissue_grey = rng.uniform(0.3, 0.42)
    grey = np.clip(np.float32(tissue_grey) * (env * np.power(np.float32(10), gain_db / 20)) ** np.float32(gamma), 0, 1)
    image = (grey * 255 + 0.5).astype(np.uint8)
    image[~geo.inside] = 0
    if text:
        burn_in_text(np.random.default_rng(text_ss), image, geo.region, anat, depth_mm, freq, mm)
    return SyntheticSample(
        image=image,
        mask=mask,
        spacing_mm=(float(mm), float(mm)),
        anatomy=anat,
        imaging_region=geo.region,
        fov=view,
        seed=int(seed),
    )


def generate_set(n: int, seed: int, **options) -> list[SyntheticSample]:
    """`n` independent samples; per-sample seeds are derived from `seed`, so a longer set starts with
    the same samples as a shorter one. `options` are passed to `generate` (size, anatomy, text, fov)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seeds = [int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]) for i in range(n)]
    return [generate(s, **options) for s in seeds]
