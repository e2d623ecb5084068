"""Scene description and random scene sampling for the toy world.

World coordinates: y is up, the floor is the plane y = 0, objects rest on it. A scene is a few primitives, a camera,
one directional light and an environment (open ground under a sky, or the inside of a room). Everything random is
drawn from `np.random.default_rng(seed)`, so a seed fixes the scene exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ldm.toy.captions import COLOURS, FLOOR_TEXTURES, PALETTE, SHAPES

MAX_OBJECTS = 3
OBJECT_TEXTURES = ("plain", "striped", "checkered", "spotted")


@dataclass(frozen=True)
class Primitive:
    """One object resting on the floor. `radius` is the footprint half-width, `height` the full height."""

    shape: str  # one of SHAPES
    x: float
    z: float
    radius: float
    height: float  # sphere: 2 * radius
    yaw: float = 0.0  # rotation about the vertical axis (radians), used by cubes and textures
    depth_ratio: float = 1.0  # cube: half-depth / half-width
    colour: str = "grey"
    albedo: tuple[float, float, float] = (0.5, 0.5, 0.5)
    texture: str = "plain"  # one of OBJECT_TEXTURES
    texture_scale: float = 0.3
    texture_amp: float = 0.3  # brightness modulation depth of the texture


@dataclass(frozen=True)
class Camera:
    """Pinhole camera. yaw turns about y, pitch > 0 looks down (pi/2 = straight down), roll turns about the view axis."""

    position: tuple[float, float, float]
    yaw: float
    pitch: float
    roll: float = 0.0
    fov: float = math.radians(50.0)  # full field of view (square image), radians

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward, right, up) unit vectors in world coordinates, roll applied."""
        cp, sp, cy, sy = math.cos(self.pitch), math.sin(self.pitch), math.cos(self.yaw), math.sin(self.yaw)
        forward = np.array([sy * cp, -sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        up = np.cross(forward, right)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        return forward, cr * right + sr * up, -sr * right + cr * up


@dataclass(frozen=True)
class Environment:
    """Floor (always), plus walls and ceiling when `room` (an axis-aligned box [-hx, hx] x [0, ceiling] x [-hz, hz])."""

    floor_colour: str = "grey"
    floor_albedo: tuple[float, float, float] = (0.5, 0.5, 0.5)
    floor_albedo2: tuple[float, float, float] = (0.3, 0.3, 0.3)  # second colour of the floor pattern
    floor_texture: str = "plain"  # one of FLOOR_TEXTURES
    floor_scale: float = 0.5
    floor_angle: float = 0.0
    room: bool = False
    half_x: float = 8.0
    half_z: float = 8.0
    ceiling: float = 4.0
    wall_albedo: tuple[float, float, float] = (0.7, 0.7, 0.7)
    wall_striped: bool = False
    sky_top: tuple[float, float, float] = (0.35, 0.55, 0.85)
    sky_horizon: tuple[float, float, float] = (0.80, 0.85, 0.90)
    # Sinusoids (kx, kz, phase) summed for the "marbled" floor; fixed per scene.
    waves: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class Light:
    direction: tuple[float, float, float]  # unit vector pointing towards the light
    ambient: float = 0.35
    diffuse: float = 0.75
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Primitive, ...]
    camera: Camera
    light: Light
    environment: Environment = field(default_factory=Environment)
    exposure: float = 1.0


def _jitter_colour(rng: np.random.Generator, name: str, sd: float = 0.05) -> tuple[float, float, float]:
    rgb = np.clip(np.asarray(PALETTE[name]) + rng.normal(0.0, sd, 3), 0.02, 0.98)
    return tuple(float(v) for v in rgb)


def _sample_objects(rng: np.random.Generator, n: int) -> list[Primitive]:
    """n non-overlapping primitives (footprint circles apart) clustered around the origin."""
    objs: list[Primitive] = []
    while len(objs) < n:
        shape = SHAPES[rng.integers(len(SHAPES))]
        r = float(rng.uniform(0.45, 1.0))
        height = {
            "sphere": 2 * r,
            "cube": r * float(rng.uniform(1.4, 2.4)),
            "cylinder": r * float(rng.uniform(1.0, 3.0)),
            "cone": r * float(rng.uniform(1.5, 3.0)),
        }[shape]
        for _ in range(50):  # rejection sampling of a free spot; the spread keeps objects at varied distances
            x, z = (0.0, 0.0) if not objs else rng.uniform(-2.0, 2.0, 2)
            if all(math.hypot(x - o.x, z - o.z) > (r + o.radius) * 1.2 + 0.1 for o in objs):
                break
        else:
            continue
        colour = COLOURS[rng.integers(len(COLOURS))]
        objs.append(
            Primitive(
                shape=shape, x=float(x), z=float(z), radius=r, height=height,
                yaw=float(rng.uniform(0, 2 * math.pi)), depth_ratio=float(rng.uniform(0.8, 1.25)),
                colour=colour, albedo=_jitter_colour(rng, colour),
                texture=OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))],
                texture_scale=float(rng.uniform(0.15, 0.5)), texture_amp=float(rng.uniform(0.2, 0.5)),
            )
        )
    return objs


def _project(cam: Camera, point: np.ndarray) -> tuple[float, float, float]:
    """(x_ndc, y_ndc, z_depth) of a world point; ndc in [-1, 1] spans the field of view."""
    f, r, u = cam.axes()
    v = point - np.asarray(cam.position)
    z = float(v @ f)
    tan = math.tan(cam.fov / 2)
    return float(v @ r) / (z * tan + 1e-9), float(v @ u) / (z * tan + 1e-9), z


def _sample_camera(rng: np.random.Generator, objs: list[Primitive]) -> Camera:
    """A camera that sees the object group from a random direction, off-centre, at a random scale."""
    centres = np.array([[o.x, o.height / 2, o.z] for o in objs])
    target = centres.mean(0)
    extent = max(float(np.linalg.norm(c - target)) + max(o.radius, o.height / 2) for c, o in zip(centres, objs))
    for attempt in range(20):
        fov = math.radians(rng.uniform(30.0, 75.0))
        # Pitch from near-horizontal to top-down; a squared uniform would favour low views, this mixes both.
        pitch = math.radians(rng.uniform(4.0, 88.0))
        yaw = float(rng.uniform(0, 2 * math.pi))
        roll = math.radians(rng.normal(0.0, 20.0)) if rng.random() < 0.7 else math.radians(rng.uniform(-60, 60))
        scale = rng.uniform(0.4, 0.85)  # projected group radius, as a fraction of the half-frame
        dist = max(extent / (scale * math.tan(fov / 2)), extent + 1.0)
        f = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        pos = target - dist * f
        if pos[1] < 0.25:
            continue
        # Turn the view away from the target so the group lands anywhere in the frame.
        shift = 0.95 if attempt < 15 else 0.0
        dyaw, dpitch = np.arctan(rng.uniform(-1, 1, 2) * shift * math.tan(fov / 2))
        cam = Camera(
            position=tuple(float(v) for v in pos), yaw=yaw + float(dyaw),
            pitch=float(np.clip(pitch + dpitch, math.radians(2.0), math.pi / 2)), roll=roll, fov=fov,
        )
        ok = True
        for c, o in zip(centres, objs):  # every object centre in frame and in front of the camera
            x, y, z = _project(cam, c)
            ok &= z > o.radius + 0.3 and abs(x) < 0.95 and abs(y) < 0.95
        if ok:
            return cam
    return Camera(position=tuple(float(v) for v in pos), yaw=yaw, pitch=pitch, roll=0.0, fov=fov)


def _sample_environment(rng: np.random.Generator, objs: list[Primitive], cam: Camera) -> Environment:
    floor_colour = COLOURS[rng.integers(len(COLOURS))]
    texture = FLOOR_TEXTURES[rng.integers(len(FLOOR_TEXTURES))]
    albedo = _jitter_colour(rng, floor_colour)
    if rng.random() < 0.5:  # pattern between the floor colour and a darker/lighter version of it
        albedo2 = tuple(float(np.clip(v * rng.choice([0.55, 1.5]), 0.02, 0.98)) for v in albedo)
    else:  # ...or another palette colour
        albedo2 = _jitter_colour(rng, COLOURS[rng.integers(len(COLOURS))])
    room = bool(rng.random() < 0.35)
    px, py, pz = cam.position
    reach_x = max([abs(px)] + [abs(o.x) + o.radius for o in objs])
    reach_z = max([abs(pz)] + [abs(o.z) + o.radius for o in objs])
    top = max([py] + [o.height for o in objs])
    sky = np.array([[0.35, 0.55, 0.85], [0.60, 0.62, 0.66], [0.85, 0.55, 0.35], [0.20, 0.25, 0.45]])
    sky_top = np.clip(sky[rng.integers(len(sky))] + rng.normal(0, 0.05, 3), 0, 1)
    return Environment(
        floor_colour=floor_colour, floor_albedo=albedo, floor_albedo2=albedo2, floor_texture=texture,
        floor_scale=float(rng.uniform(0.3, 1.4)), floor_angle=float(rng.uniform(0, math.pi)),
        room=room, half_x=reach_x + float(rng.uniform(0.3, 4.0)), half_z=reach_z + float(rng.uniform(0.3, 4.0)),
        ceiling=top + float(rng.uniform(0.3, 2.5)),
        wall_albedo=_jitter_colour(rng, COLOURS[rng.integers(len(COLOURS))], 0.08), wall_striped=bool(rng.random() < 0.4),
        sky_top=tuple(float(v) for v in sky_top),
        sky_horizon=tuple(float(v) for v in np.clip(0.5 * sky_top + 0.45, 0, 1)),
        waves=tuple(tuple(float(v) for v in w) for w in np.c_[rng.normal(0, 2.0, (4, 2)), rng.uniform(0, 6.3, 4)]),
    )


def sample_scene(seed: int, n_objects: int | None = None) -> Scene:
    """The scene for `seed`: 1-3 objects (or exactly `n_objects`), camera, light, environment, exposure."""
    if n_objects is not None and not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be None or in [1, {MAX_OBJECTS}], got {n_objects}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    objs = _sample_objects(rng, n)
    cam = _sample_camera(rng, objs)
    env = _sample_environment(rng, objs, cam)
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(25), math.radians(75))
    light = Light(
        direction=(math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)),
        ambient=float(rng.uniform(0.25, 0.45)), diffuse=float(rng.uniform(0.6, 0.9)),
        tint=tuple(float(v) for v in np.clip(1.0 + rng.normal(0, 0.06, 3), 0.85, 1.15)),
    )
    return Scene(objects=tuple(objs), camera=cam, light=light, environment=env, exposure=float(rng.uniform(0.85, 1.15)))
