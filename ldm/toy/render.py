"""Render toy-world scenes: RGB, exact z-depth, surface normals, light direction, per-object visible masks,
salient-object mask and caption.

One ray per pixel (plus `antialias`^2 rays per pixel for the RGB), cast from a pinhole camera, vectorised with numpy
over pixels; Lambert shading with cast shadows from one directional light. See docs/toy-world.md.

Camera coordinates (normals, light direction): x to the image's right, y to the image's top, z out of the image
towards the viewer (OpenGL's eye space), roll included: v_cam = R v_world with R = `camera_rotation(scene)`, whose rows
are the camera's right, up and backward axes. R is orthogonal, so dot products, and hence the Lambert term n.l of the
shading, are the same in both frames (det R = -1: the world frame, seen through the camera, is mirrored).
Surface normals are those the shading uses, at the pixel-centre ray's hit (like depth); a pixel whose ray reaches the
sky has no surface: its normal is (0, 0, 0) and `surface` is False there.

Salient-object rule: the object with the largest visible area (pixel count in the rendered frame); ties go to the
lower object index. Its visible mask is `RenderBatch.salient`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ldm.toy.captions import CaptionObject, make_caption
from ldm.toy.raycast import environment_hits, intersect, normal
from ldm.toy.scene import MAX_OBJECTS, Primitive, Scene, sample_scene

FAR = 40.0  # depth of the sky, and cap of any farther depth (scene units)
MIN_SIZE, MAX_SIZE = 16, 1024
CAPTION_MIN_AREA = 0.005  # an object must cover this fraction of the frame to be named in the caption
HELD_OUT_SEED = 1_000_000  # scene seeds below are training scenes, seeds from here on are held out

# Surface codes in the hit map (objects are 0..k-1).
FLOOR, WALL, CEILING, SKY = -1, -2, -3, -4


@dataclass
class RenderBatch:
    rgb: np.ndarray  # (image, h, w, 3) uint8
    depth: np.ndarray  # (image, h, w) float32 z-depth along the camera axis; sky and beyond FAR = FAR
    objects: np.ndarray  # (image, MAX_OBJECTS, h, w) bool visible mask per object, padded with False
    salient: np.ndarray  # (image, h, w) bool visible mask of the salient object
    normals: np.ndarray  # (image, h, w, 3) float32 unit surface normal in camera coordinates; (0, 0, 0) on sky
    surface: np.ndarray  # (image, h, w) bool: the pixel's ray hits a surface (normal defined); False on sky
    light_direction: np.ndarray  # (image, 3) float32 unit vector towards the light, camera coordinates
    captions: list[str]
    scenes: list[Scene]


def camera_rotation(scene: Scene) -> np.ndarray:
    """`(3, 3)` world -> camera rotation: rows are the camera's right, up and backward axes (roll applied), so that
    R @ v has x right, y up, z towards the viewer."""
    forward, right, up = scene.camera.axes()
    return np.stack([right, up, -forward])


def camera_rays(scene: Scene, size: int) -> np.ndarray:
    """Ray directions `(size * size, 3)` through pixel centres, row-major from the top-left pixel.

    Directions are not normalised: their component along the view axis is 1, so the ray parameter t of a hit
    is its z-depth.
    """
    forward, right, up = scene.camera.axes()
    tan = math.tan(scene.camera.fov / 2)
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * tan
    xn, yn = np.meshgrid(c, -c)  # yn: top row looks up
    return forward + xn.reshape(-1, 1) * right + yn.reshape(-1, 1) * up


def trace(scene: Scene, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, hit) for camera rays `(ray, 3)`: nearest hit distance and what was hit (object index or surface code)."""
    origin = np.asarray(scene.camera.position, dtype=np.float64)
    t, surface = environment_hits(scene.environment, origin, dirs)
    hit = np.select([surface == 0, surface == 1, surface == 2], [FLOOR, WALL, CEILING], SKY)
    for k, prim in enumerate(scene.objects):
        tk = intersect(prim, origin, dirs)
        nearer = tk < t
        t, hit = np.where(nearer, tk, t), np.where(nearer, k, hit)
    return t, hit


def _object_pattern(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """Texture in [0, 1] at surface points p `(point, 3)`, in object-local coordinates so it moves with the object."""
    c, s = math.cos(prim.yaw), math.sin(prim.yaw)
    x = (p[:, 0] - prim.x) * c - (p[:, 2] - prim.z) * s
    z = (p[:, 0] - prim.x) * s + (p[:, 2] - prim.z) * c
    u, v, w = x / prim.texture_scale, p[:, 1] / prim.texture_scale, z / prim.texture_scale
    if prim.texture == "striped":
        return np.floor(v) % 2
    if prim.texture == "checkered":
        return (np.floor(u) + np.floor(v) + np.floor(w)) % 2
    if prim.texture == "spotted":
        return (np.sin(2 * u) * np.sin(2 * v) * np.sin(2 * w) > 0.25).astype(np.float64)
    return np.zeros(len(p))


def _floor_pattern(scene: Scene, p: np.ndarray) -> np.ndarray:
    env = scene.environment
    c, s = math.cos(env.floor_angle), math.sin(env.floor_angle)
    u = (p[:, 0] * c - p[:, 2] * s) / env.floor_scale
    v = (p[:, 0] * s + p[:, 2] * c) / env.floor_scale
    if env.floor_texture == "checkered":
        return (np.floor(u) + np.floor(v)) % 2
    if env.floor_texture == "striped":
        return np.floor(u) % 2
    if env.floor_texture == "tiled":  # grout lines between square tiles
        return ((u % 1 < 0.12) | (v % 1 < 0.12)).astype(np.float64)
    if env.floor_texture == "marbled":
        field = sum(np.sin(kx * p[:, 0] + kz * p[:, 2] + ph) for kx, kz, ph in env.waves)
        return 0.5 + 0.5 * np.tanh(1.5 * field)
    return np.zeros(len(p))


def surface_normals(scene: Scene, hit: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Unit normals `(ray, 3)` in world coordinates at hit points p `(ray, 3)` of what `hit` names (sky rows: zero).
    The room is seen from inside: walls and ceiling face inwards."""
    env = scene.environment
    n = np.zeros_like(p)
    n[hit == FLOOR] = (0.0, 1.0, 0.0)
    m = hit == WALL
    if m.any():
        q = p[m]
        on_x = np.abs(np.abs(q[:, 0]) - env.half_x) < np.abs(np.abs(q[:, 2]) - env.half_z)
        n[m] = np.where(on_x[:, None], [[-1.0, 0, 0]] * np.sign(q[:, :1]), [[0, 0, -1.0]] * np.sign(q[:, 2:3]))
    n[hit == CEILING] = (0.0, -1.0, 0.0)
    for k, prim in enumerate(scene.objects):
        m = hit == k
        if m.any():
            n[m] = normal(prim, p[m])
    return n


def _albedo(scene: Scene, hit: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Surface colour `(ray, 3)` at hit points p (sky rows are left zero)."""
    env = scene.environment
    albedo = np.zeros_like(p)
    m = hit == FLOOR
    pat = _floor_pattern(scene, p[m])[:, None]
    albedo[m] = (1 - pat) * env.floor_albedo + pat * np.asarray(env.floor_albedo2)
    m = hit == WALL
    if m.any():
        q = p[m]
        stripes = (np.floor((q[:, 0] + q[:, 2]) / 0.4) % 2) if env.wall_striped else np.zeros(len(q))
        albedo[m] = np.asarray(env.wall_albedo) * (1 - 0.25 * stripes[:, None])
    albedo[hit == CEILING] = np.clip(np.asarray(env.wall_albedo) * 1.15, 0, 1)
    for k, prim in enumerate(scene.objects):
        m = hit == k
        if m.any():
            albedo[m] = np.asarray(prim.albedo) * (1 - prim.texture_amp * _object_pattern(prim, p[m]))[:, None]
    return albedo


def shade(scene: Scene, dirs: np.ndarray, t: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Linear-ish RGB in [0, 1] `(ray, 3)`: Lambert + ambient, cast shadows, sky gradient, haze on far ground."""
    env, light = scene.environment, scene.light
    origin = np.asarray(scene.camera.position)
    solid = hit != SKY
    p = origin + np.where(solid, t, 0.0)[:, None] * dirs
    albedo, n = _albedo(scene, hit, p), surface_normals(scene, hit, p)
    to_light = np.asarray(light.direction)
    lambert = np.clip(n @ to_light, 0.0, None) * solid
    lit = lambert > 0
    if lit.any() and scene.objects:  # shadow rays towards the light, from just above the surface
        q = p[lit] + 1e-3 * n[lit]
        dq = np.broadcast_to(to_light, q.shape)
        blocked = np.zeros(len(q), dtype=bool)
        for prim in scene.objects:
            blocked |= np.isfinite(intersect(prim, q, dq))
        lambert[np.flatnonzero(lit)[blocked]] = 0.0
    colour = albedo * np.asarray(light.tint) * (light.ambient + light.diffuse * lambert)[:, None]
    up = dirs[:, 1] / np.linalg.norm(dirs, axis=1)
    sky = np.asarray(env.sky_horizon) + np.sqrt(np.clip(up, 0, 1))[:, None] * (
        np.asarray(env.sky_top) - env.sky_horizon
    )
    if not env.room:  # aerial haze: far ground fades into the horizon colour, like a real horizon
        haze = 1 - np.exp(-3 * (np.where(solid, t, np.inf) / FAR) ** 2)
        colour = (1 - haze[:, None]) * colour + haze[:, None] * np.asarray(env.sky_horizon)
    colour = np.where(solid[:, None], colour, sky)
    return np.clip(colour * scene.exposure, 0.0, 1.0)


@dataclass
class Render:
    """One rendered scene (arrays as in RenderBatch, without the image axis)."""

    rgb: np.ndarray
    depth: np.ndarray
    objects: np.ndarray
    salient: np.ndarray
    normals: np.ndarray
    surface: np.ndarray
    light_direction: np.ndarray
    caption: str
    scene: Scene


def render_scene(scene: Scene, size: int = 64, antialias: int = 2) -> Render:
    """Render one scene at `size` x `size`; RGB is the mean of antialias x antialias rays per pixel."""
    _check_size(size, antialias)
    dirs = camera_rays(scene, size)
    t, hit = trace(scene, dirs)
    depth = np.minimum(t, FAR).reshape(size, size).astype(np.float32)
    rotation = camera_rotation(scene)
    surface = hit != SKY
    points = np.asarray(scene.camera.position) + np.where(surface, t, 0.0)[:, None] * dirs  # (pixel, 3)
    normals = (surface_normals(scene, hit, points) @ rotation.T).reshape(size, size, 3).astype(np.float32)
    light_direction = (rotation @ np.asarray(scene.light.direction, np.float64)).astype(np.float32)  # (3,)
    hit = hit.reshape(size, size)
    if antialias == 1:
        rgb = shade(scene, dirs, t, hit.reshape(-1)).reshape(size, size, 3)
    else:
        big = size * antialias
        dirs_ss = camera_rays(scene, big)
        t_ss, hit_ss = trace(scene, dirs_ss)
        rgb = shade(scene, dirs_ss, t_ss, hit_ss).reshape(size, antialias, size, antialias, 3).mean((1, 3))
    rgb = np.round(rgb * 255).astype(np.uint8)

    objects = np.zeros((MAX_OBJECTS, size, size), dtype=bool)
    for k in range(len(scene.objects)):
        objects[k] = hit == k
    areas = objects.sum((1, 2))
    salient = objects[int(np.argmax(areas))]  # argmax takes the first (lowest index) of ties
    cols = (np.arange(size) + 0.5) / size
    visible = [
        CaptionObject(
            colour=prim.colour, shape=prim.shape, area=int(areas[k]),
            centre_x=float((objects[k].sum(0) * cols).sum() / areas[k]), depth=float(np.median(depth[objects[k]])),
        )
        for k, prim in enumerate(scene.objects)
        if areas[k] >= CAPTION_MIN_AREA * size * size
    ]
    env = scene.environment
    caption = make_caption(visible, env.floor_colour, env.floor_texture, env.room)
    return Render(rgb=rgb, depth=depth, objects=objects, salient=salient.copy(), normals=normals,
                  surface=surface.reshape(size, size), light_direction=light_direction, caption=caption, scene=scene)


def _check_size(size: int, antialias: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if not isinstance(antialias, (int, np.integer)) or not 1 <= antialias <= 4:
        raise ValueError(f"antialias must be an integer in [1, 4], got {antialias!r}")


def render_batch(
    seeds: list[int] | np.ndarray, size: int = 64, n_objects: int | None = None, antialias: int = 2
) -> RenderBatch:
    """Render the scenes of `seeds` (seeds < 1_000_000 train, >= 1_000_000 held out); deterministic per seed.

    n_objects: None draws 1-3 objects per scene, an int in [1, 3] fixes the count.
    """
    seeds = [int(s) for s in np.asarray(seeds, dtype=np.int64).reshape(-1)] if len(seeds) else []
    if not seeds:
        raise ValueError("seeds must contain at least one seed")
    if min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {min(seeds)}")
    _check_size(size, antialias)
    renders = [render_scene(sample_scene(s, n_objects), size, antialias) for s in seeds]
    return RenderBatch(
        rgb=np.stack([r.rgb for r in renders]),
        depth=np.stack([r.depth for r in renders]),
        objects=np.stack([r.objects for r in renders]),
        salient=np.stack([r.salient for r in renders]),
        normals=np.stack([r.normals for r in renders]),
        surface=np.stack([r.surface for r in renders]),
        light_direction=np.stack([r.light_direction for r in renders]),
        captions=[r.caption for r in renders],
        scenes=[r.scene for r in renders],
    )
