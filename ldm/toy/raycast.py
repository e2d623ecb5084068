"""Vectorised ray-primitive intersections and surface normals for the toy world.

Rays are `origin + t * direction` with origins `(ray, 3)` (or one `(3,)` origin) and directions `(ray, 3)`.
Every intersection returns `t` of the nearest hit with t > EPS, `inf` where the ray misses.
"""

from __future__ import annotations

import math

import numpy as np

from ldm.toy.scene import Environment, Primitive

EPS = 1e-4


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _first_positive(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Smaller of two candidate hits that lies in front of the origin (t0 <= t1), else inf."""
    return np.where(t0 > EPS, t0, np.where(t1 > EPS, t1, np.inf))


def _to_local(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays in the primitive's frame: origin at its footprint centre on the floor, rotated by -yaw about y."""
    c, s = math.cos(prim.yaw), math.sin(prim.yaw)
    rot = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # world -> local (rows are local axes)
    return (o - np.array([prim.x, 0.0, prim.z])) @ rot.T, d @ rot.T


def _sphere(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    oc = o - np.array([prim.x, prim.radius, prim.z])
    a, b, c = _dot(d, d), _dot(oc, d), _dot(oc, oc) - prim.radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = _first_positive((-b - root) / a, (-b + root) / a)
    return np.where(disc >= 0, t, np.inf)


def _cube(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Slab test against the box [-r, r] x [0, h] x [-r*ratio, r*ratio] in local coordinates."""
    ol, dl = _to_local(prim, o, d)
    lo = np.array([-prim.radius, 0.0, -prim.radius * prim.depth_ratio])
    hi = np.array([prim.radius, prim.height, prim.radius * prim.depth_ratio])
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)  # axis-parallel rays: huge slab distances instead of 0/0
    t1, t2 = (lo - ol) / dl, (hi - ol) / dl
    tmin, tmax = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where(tmax >= tmin, _first_positive(tmin, tmax), np.inf)


def _cylinder(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    ol, dl = _to_local(prim, o, d)
    a = dl[..., 0] ** 2 + dl[..., 2] ** 2
    b = ol[..., 0] * dl[..., 0] + ol[..., 2] * dl[..., 2]
    c = ol[..., 0] ** 2 + ol[..., 2] ** 2 - prim.radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    a = np.maximum(a, 1e-12)
    sides = []
    for t in ((-b - root) / a, (-b + root) / a):  # side wall, only between floor and top
        y = ol[..., 1] + t * dl[..., 1]
        sides.append(np.where((disc >= 0) & (y >= 0) & (y <= prim.height) & (t > EPS), t, np.inf))
    dy = np.where(np.abs(dl[..., 1]) < 1e-12, 1e-12, dl[..., 1])
    t_cap = (prim.height - ol[..., 1]) / dy
    px, pz = ol[..., 0] + t_cap * dl[..., 0], ol[..., 2] + t_cap * dl[..., 2]
    cap = np.where((t_cap > EPS) & (px**2 + pz**2 <= prim.radius**2), t_cap, np.inf)
    return np.minimum(np.minimum(*sides), cap)


def _cone(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Side of the cone x^2 + z^2 = k^2 (h - y)^2, 0 <= y <= h (apex on top; the base lies on the floor)."""
    ol, dl = _to_local(prim, o, d)
    k2 = (prim.radius / prim.height) ** 2
    w = prim.height - ol[..., 1]
    a = dl[..., 0] ** 2 + dl[..., 2] ** 2 - k2 * dl[..., 1] ** 2
    b = ol[..., 0] * dl[..., 0] + ol[..., 2] * dl[..., 2] + k2 * w * dl[..., 1]
    c = ol[..., 0] ** 2 + ol[..., 2] ** 2 - k2 * w**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    r0, r1 = (-b - root) / a, (-b + root) / a
    best = np.full(b.shape, np.inf)
    for t in (np.minimum(r0, r1), np.maximum(r0, r1)):  # nearest root on the real (not mirrored) nappe
        y = ol[..., 1] + t * dl[..., 1]
        ok = (disc >= 0) & (y >= 0) & (y <= prim.height) & (t > EPS) & ~np.isfinite(best)
        best = np.where(ok, t, best)
    return best


INTERSECT = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone}


def intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """t of the nearest hit of rays (o, d) with `prim`, inf on a miss. Shape: the broadcast ray shape."""
    return INTERSECT[prim.shape](prim, o, d)


def normal(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """Outward unit normals at surface points p `(point, 3)` of `prim`."""
    if prim.shape == "sphere":
        n = p - np.array([prim.x, prim.radius, prim.z])
    else:
        pl, _ = _to_local(prim, p, p)
        c, s = math.cos(prim.yaw), math.sin(prim.yaw)
        if prim.shape == "cube":
            half = np.array([prim.radius, prim.height / 2, prim.radius * prim.depth_ratio])
            q = (pl - np.array([0.0, prim.height / 2, 0.0])) / half
            axis = np.abs(q).argmax(-1)
            nl = np.zeros_like(pl)
            nl[np.arange(len(pl)), axis] = np.sign(q[np.arange(len(pl)), axis])
        elif prim.shape == "cylinder":
            # the cap where the point is nearer its plane than the side wall: a fixed band below the rim would give
            # side hits seen from below the top the cap's normal, facing away from the camera
            top = np.abs(pl[:, 1] - prim.height) < np.abs(np.hypot(pl[:, 0], pl[:, 2]) - prim.radius)
            nl = np.where(top[:, None], [0.0, 1.0, 0.0], pl * [1.0, 0.0, 1.0])
        else:  # cone: gradient of x^2 + z^2 - k^2 (h - y)^2
            k2 = (prim.radius / prim.height) ** 2
            nl = np.stack([pl[:, 0], k2 * (prim.height - pl[:, 1]), pl[:, 2]], -1)
        n = nl @ np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # local -> world
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def environment_hits(env: Environment, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, surface) of the floor / walls / ceiling for rays from one origin o `(3,)` with directions `(ray, 3)`.

    surface: 0 floor, 1 wall facing -x/+x or -z/+z, 2 ceiling, -1 sky (t = inf). The room is seen from inside.
    """
    dy = d[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dy < 0, -o[1] / dy, np.inf)
        if not env.room:
            return t_floor, np.where(np.isfinite(t_floor), 0, -1)
        bound = np.array([env.half_x, env.ceiling, env.half_z])
        lo = np.array([-env.half_x, 0.0, -env.half_z])
        t_axis = np.where(d > 0, (bound - o) / d, np.where(d < 0, (lo - o) / d, np.inf))  # exit t per axis
    axis = t_axis.argmin(-1)
    t = t_axis[np.arange(len(d)), axis]
    surface = np.select([axis == 1, axis != 1], [np.where(dy < 0, 0, 2), 1])
    return t, surface
