"""Toy-world renderer: geometry against closed forms, API shapes, determinism, masks, salient rule, normals and
light direction in camera coordinates, bad input."""

import math
from dataclasses import replace

import numpy as np
import pytest

from ldm.toy.captions import VOCABULARY
from ldm.toy.raycast import normal
from ldm.toy.render import (
    FAR, FLOOR, SKY, camera_rays, camera_rotation, render_batch, render_scene, trace,
)
from ldm.toy.scene import MAX_OBJECTS, Camera, Environment, Light, Primitive, Scene

SIZE = 33  # odd, so the centre pixel looks exactly along the view axis
C = SIZE // 2


def _scene(objects=(), camera=None, light=(0.0, 1.0, 0.0), room=False) -> Scene:
    camera = camera or Camera(position=(0.0, 1.0, -5.0), yaw=0.0, pitch=0.0, fov=math.radians(50))
    return Scene(objects=tuple(objects), camera=camera, light=Light(direction=light), environment=Environment(room=room))


def test_sphere_seen_straight_on_has_depth_distance_minus_radius():
    r, dist = 0.8, 6.0
    cam = Camera(position=(0.0, r, -dist), yaw=0.0, pitch=0.0)
    out = render_scene(_scene([Primitive("sphere", x=0.0, z=0.0, radius=r, height=2 * r)], cam), SIZE, antialias=1)
    assert out.depth[C, C] == pytest.approx(dist - r, abs=1e-4)
    assert out.objects[0, C, C] and out.salient[C, C]
    # Silhouette: pixels whose ray passes farther than r from the centre are not the sphere.
    assert not out.objects[0, 0, 0]


def test_floor_depth_at_image_centre_is_height_over_sin_pitch():
    h, pitch = 2.0, math.radians(35)
    cam = Camera(position=(0.3, h, -1.0), yaw=0.7, pitch=pitch, roll=0.4)
    out = render_scene(_scene([], cam), SIZE, antialias=1)
    assert out.depth[C, C] == pytest.approx(h / math.sin(pitch), rel=1e-5)


def test_top_down_floor_has_constant_z_depth_and_cube_top_is_nearer():
    h = 3.0
    cam = Camera(position=(0.0, h, 0.0), yaw=0.2, pitch=math.pi / 2, roll=0.3)
    empty = render_scene(_scene([], cam), SIZE, antialias=1)
    np.testing.assert_allclose(empty.depth, h, rtol=1e-5)  # z-depth, not ray length: a plane facing the camera
    cube = Primitive("cube", x=0.0, z=0.0, radius=0.5, height=1.2, yaw=0.3)
    out = render_scene(_scene([cube], cam), SIZE, antialias=1)
    assert out.depth[C, C] == pytest.approx(h - 1.2, rel=1e-5)


@pytest.mark.parametrize("pitch_deg", [0.0, 10.0, 20.0])
def test_horizon_row_matches_pitch_with_zero_roll(pitch_deg):
    fov, pitch = math.radians(60), math.radians(pitch_deg)
    scene = _scene([], Camera(position=(0.0, 1.5, 0.0), yaw=1.0, pitch=pitch, roll=0.0, fov=fov))
    _, hit = trace(scene, camera_rays(scene, SIZE))
    hit = hit.reshape(SIZE, SIZE)
    # Row i looks up by y = (1 - 2 (i + 0.5) / SIZE) tan(fov / 2); the horizon is where y = tan(pitch).
    y = (1 - 2 * (np.arange(SIZE) + 0.5) / SIZE) * math.tan(fov / 2)
    above, below = y > math.tan(pitch) + 1e-9, y < math.tan(pitch) - 1e-9
    assert above.any() and below.any()
    assert (hit[above] == SKY).all() and (hit[below] == FLOOR).all()
    out = render_scene(scene, SIZE, antialias=1)
    assert (out.depth[above] == FAR).all() and (out.depth <= FAR).all()


def test_cylinder_top_and_cone_surface_seen_from_above():
    h = 4.0
    cam = Camera(position=(0.0, h, 0.0), yaw=0.0, pitch=math.pi / 2)
    out = render_scene(_scene([Primitive("cylinder", x=0.0, z=0.0, radius=0.6, height=1.5)], cam), SIZE, antialias=1)
    assert out.depth[C, C] == pytest.approx(h - 1.5, rel=1e-5)
    # Every cone pixel, lifted to 3-D with its depth, lies on x^2 + z^2 = (r / height)^2 (height - y)^2.
    r, top = 0.6, 1.5
    scene = _scene([Primitive("cone", x=0.0, z=0.0, radius=r, height=top)], cam)
    out = render_scene(scene, SIZE, antialias=1)
    points = np.asarray(cam.position) + out.depth.reshape(-1, 1) * camera_rays(scene, SIZE)
    on = points[out.objects[0].reshape(-1)]
    assert len(on) > 20
    np.testing.assert_allclose(np.hypot(on[:, 0], on[:, 2]), r / top * (top - on[:, 1]), atol=1e-4)


def test_room_walls_stop_every_ray():
    cam = Camera(position=(0.0, 1.0, 0.0), yaw=0.5, pitch=-0.3)  # looking up a little: would see sky outdoors
    out = render_scene(_scene([], cam, room=True), SIZE, antialias=1)
    env = Environment()
    assert (out.depth < FAR).all() and out.depth.max() <= math.hypot(env.half_x, env.half_z) + 1e-6


def test_cast_shadow_darkens_the_floor():
    sphere = Primitive("sphere", x=0.0, z=0.0, radius=1.0, height=2.0)
    light = (1 / math.sqrt(2), 1 / math.sqrt(2), 0.0)  # the shadow falls towards -x
    cam = Camera(position=(-1.5, 5.0, 0.0), yaw=0.0, pitch=math.pi / 2)  # centre ray hits floor (-1.5, 0, 0)
    lit = render_scene(_scene([], cam, light), SIZE, antialias=1)
    shadowed = render_scene(_scene([sphere], cam, light), SIZE, antialias=1)
    assert not shadowed.objects[0, C, C]
    assert shadowed.rgb[C, C].astype(int).sum() < 0.8 * lit.rgb[C, C].astype(int).sum()


def test_render_batch_shapes_and_dtypes():
    b = render_batch([1, 2, 1_000_003], size=32)
    assert b.rgb.shape == (3, 32, 32, 3) and b.rgb.dtype == np.uint8
    assert b.depth.shape == (3, 32, 32) and b.depth.dtype == np.float32
    assert b.objects.shape == (3, MAX_OBJECTS, 32, 32) and b.objects.dtype == bool
    assert b.salient.shape == (3, 32, 32) and b.salient.dtype == bool
    assert len(b.captions) == 3 and all(isinstance(c, str) for c in b.captions)
    assert (b.depth > 0).all() and (b.depth <= FAR).all()


def test_deterministic_from_seed():
    a, b = render_batch([5, 6, 7], size=24), render_batch([7, 5], size=24)
    np.testing.assert_array_equal(a.rgb[0], b.rgb[1])
    np.testing.assert_array_equal(a.depth[2], b.depth[0])
    np.testing.assert_array_equal(a.objects[0], b.objects[1])
    assert a.captions[2] == b.captions[0]
    assert not np.array_equal(a.rgb[0], a.rgb[1])


def test_object_masks_are_disjoint_and_nearer_than_the_background():
    b = render_batch(list(range(20)), size=32, antialias=1)
    assert (b.objects.sum(1) <= 1).all()
    for i, scene in enumerate(b.scenes):
        n = len(scene.objects)
        assert not b.objects[i, n:].any()  # padding
        background = render_scene(replace(scene, objects=()), 32, antialias=1).depth
        mask = b.objects[i].any(0)
        assert (b.depth[i][mask] < background[mask]).all()
        np.testing.assert_array_equal(b.depth[i][~mask], background[~mask])


def test_salient_is_the_largest_visible_object():
    b = render_batch(list(range(30)), size=32, antialias=1)
    areas = b.objects.sum((2, 3))
    for i in range(len(areas)):
        np.testing.assert_array_equal(b.salient[i], b.objects[i, int(np.argmax(areas[i]))])
    assert (b.salient.sum((1, 2)) == areas.max(1)).all() and (areas.max(1) > 0).all()


def test_captions_use_the_vocabulary_and_name_the_salient_object_first():
    b = render_batch(list(range(30)), size=32, antialias=1)
    for i, caption in enumerate(b.captions):
        assert set(caption.split()) <= VOCABULARY, caption
        k = int(np.argmax(b.objects[i].sum((1, 2))))
        obj = b.scenes[i].objects[k]
        assert caption.split()[1:3] == [obj.colour, obj.shape], caption
        assert caption.endswith("floor")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"seeds": [1], "size": 8}, "size"),
        ({"seeds": [1], "size": 5000}, "size"),
        ({"seeds": [1], "size": 32.0}, "size"),
        ({"seeds": [], "size": 32}, "seeds"),
        ({"seeds": [-3], "size": 32}, "seeds"),
        ({"seeds": [1], "size": 32, "n_objects": 0}, "n_objects"),
        ({"seeds": [1], "size": 32, "n_objects": 4}, "n_objects"),
        ({"seeds": [1], "size": 32, "antialias": 0}, "antialias"),
    ],
)
def test_bad_input_raises_value_error_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        render_batch(**kwargs)


def test_n_objects_fixes_the_object_count():
    b = render_batch([10, 11], size=16, n_objects=2, antialias=1)
    assert [len(s.objects) for s in b.scenes] == [2, 2]


# Surface normals and light direction (camera coordinates: x right, y up, z towards the viewer).


def _pixel_rays_in_camera(scene: Scene, size: int) -> np.ndarray:
    """`(size, size, 3)` pixel-centre ray directions in camera coordinates: (x_ndc tan, y_ndc tan, -1)."""
    return (camera_rays(scene, size) @ camera_rotation(scene).T).reshape(size, size, 3)


def test_camera_rotation_is_orthogonal_and_maps_view_axes():
    cam = Camera(position=(0.0, 2.0, -3.0), yaw=0.7, pitch=0.4, roll=-0.3)
    scene = _scene([], cam)
    rot = camera_rotation(scene)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    forward, right, up = cam.axes()
    np.testing.assert_allclose(rot @ forward, [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(rot @ right, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rot @ up, [0, 1, 0], atol=1e-12)
    # the centre ray looks along -z in camera coordinates
    np.testing.assert_allclose(_pixel_rays_in_camera(scene, SIZE)[C, C], [0, 0, -1], atol=1e-12)


def test_sphere_normals_point_from_its_centre():
    r = 0.9
    cam = Camera(position=(0.4, 1.6, -4.0), yaw=-0.1, pitch=0.2, roll=0.5)
    sphere = Primitive("sphere", x=0.0, z=0.0, radius=r, height=2 * r)
    scene = _scene([sphere], cam)
    out = render_scene(scene, SIZE, antialias=1)
    on = out.objects[0]
    assert on.sum() > 50
    # camera-frame hit points from depth alone (the ray's view-axis component is 1), minus the camera-frame centre
    points = out.depth[..., None] * _pixel_rays_in_camera(scene, SIZE)
    centre = camera_rotation(scene) @ (np.array([0.0, r, 0.0]) - np.asarray(cam.position))
    np.testing.assert_allclose(out.normals[on], (points[on] - centre) / r, atol=1e-4)
    straight = Camera(position=(0.0, r, -5.0), yaw=0.0, pitch=0.0)  # centre pixel looks at the sphere's centre
    np.testing.assert_allclose(render_scene(_scene([sphere], straight), SIZE, 1).normals[C, C], [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("pitch_deg, roll_deg", [(0.0, 0.0), (30.0, 0.0), (55.0, 25.0), (90.0, -40.0)])
def test_floor_normal_and_light_in_camera_coordinates(pitch_deg, roll_deg):
    """The floor's normal (0, 1, 0) and a light straight above, seen by a camera pitched by p and rolled by r, are
    (sin r cos p, cos r cos p, sin p) in camera coordinates, at every floor pixel and whatever the yaw."""
    p, r = math.radians(pitch_deg), math.radians(roll_deg)
    scene = _scene([], Camera(position=(0.5, 2.0, -1.0), yaw=1.1, pitch=p, roll=r))
    out = render_scene(scene, SIZE, antialias=1)
    floor = trace(scene, camera_rays(scene, SIZE))[1].reshape(SIZE, SIZE) == FLOOR
    assert floor.sum() > SIZE  # every case sees some floor
    expected = [math.sin(r) * math.cos(p), math.cos(r) * math.cos(p), math.sin(p)]
    np.testing.assert_allclose(out.normals[floor], np.broadcast_to(expected, (floor.sum(), 3)), atol=1e-6)
    np.testing.assert_allclose(out.light_direction, expected, atol=1e-6)
    assert (out.surface == floor).all()  # outdoors: what is not floor is sky
    assert (out.normals[~floor] == 0).all()


def test_room_wall_straight_ahead_faces_the_camera():
    cam = Camera(position=(0.0, 1.0, 0.0), yaw=math.pi / 2, pitch=0.0)  # looking along +x at the wall x = half_x
    out = render_scene(_scene([], cam, room=True), SIZE, antialias=1)
    np.testing.assert_allclose(out.normals[C, C], [0, 0, 1], atol=1e-6)
    assert out.surface.all()  # a room has no sky


def test_light_direction_matches_the_shading():
    """Plain grey sphere in a room (no haze, no shadow on its lit side): its colour is exactly
    albedo * (ambient + diffuse * max(n.l, 0)) with n and l the returned camera-frame normal and light direction,
    so brighter pixels are those where n.l is larger."""
    light = tuple(np.array([0.6, 0.7, -0.4]) / np.linalg.norm([0.6, 0.7, -0.4]))
    cam = Camera(position=(0.5, 1.8, -4.0), yaw=-0.1, pitch=0.25, roll=0.6)
    sphere = Primitive("sphere", x=0.0, z=0.0, radius=0.9, height=1.8, albedo=(0.5, 0.5, 0.5))
    scene = _scene([sphere], cam, light=light, room=True)
    out = render_scene(scene, SIZE, antialias=1)
    on = out.objects[0]
    lambert = np.clip(out.normals[on] @ out.light_direction, 0, None)
    assert lambert.min() == 0 and lambert.max() > 0.9  # both sides of the terminator are in view
    expected = 0.5 * (scene.light.ambient + scene.light.diffuse * lambert)
    np.testing.assert_allclose(out.rgb[on][:, 0] / 255, expected, atol=0.6 / 255)
    # a light given in the wrong frame (world, not camera) does not explain the shading
    wrong = 0.5 * (scene.light.ambient + scene.light.diffuse * np.clip(out.normals[on] @ np.asarray(light), 0, None))
    assert np.abs(out.rgb[on][:, 0] / 255 - wrong).max() > 0.05


def test_normals_are_unit_face_the_camera_and_light_is_above_the_floor():
    b = render_batch(list(range(40)), size=32, antialias=1)
    assert b.normals.shape == (40, 32, 32, 3) and b.normals.dtype == np.float32
    assert b.surface.shape == (40, 32, 32) and b.surface.dtype == bool
    assert b.light_direction.shape == (40, 3) and b.light_direction.dtype == np.float32
    norms = np.linalg.norm(b.normals, axis=-1)
    np.testing.assert_allclose(norms[b.surface], 1, atol=1e-5)
    assert (norms[~b.surface] == 0).all()
    assert b.objects.any(1)[~b.surface].sum() == 0  # object pixels always have a surface
    np.testing.assert_allclose(np.linalg.norm(b.light_direction, axis=-1), 1, atol=1e-6)
    for i, scene in enumerate(b.scenes):
        rays = _pixel_rays_in_camera(scene, 32)
        facing = (b.normals[i] * rays).sum(-1)[b.surface[i]]
        assert (facing < 1e-6).all()  # every visible surface faces the camera (cylinder rims included)
        # the light's elevation is 25-75 degrees: n_floor . l = sin(elevation), whatever the camera
        floor_normal = camera_rotation(scene) @ np.array([0.0, 1.0, 0.0])
        elevation_sine = floor_normal @ b.light_direction[i]
        assert math.sin(math.radians(25)) - 1e-5 < elevation_sine < math.sin(math.radians(75)) + 1e-5


def test_cylinder_side_just_below_the_rim_has_the_side_normal():
    """Seen from below its top, a cylinder's side right under the rim keeps the side's horizontal normal (a fixed
    band below the rim once got the cap's, facing away from the camera)."""
    cyl = Primitive("cylinder", x=0.0, z=0.0, radius=0.5, height=1.0)
    p = np.array([[0.5, 1.0 - 5e-4, 0.0], [0.0, 1.0, 0.2], [0.3, 1.0, 0.399]])  # side under the rim; cap; cap near rim
    n = normal(cyl, p)
    np.testing.assert_allclose(n, [[1, 0, 0], [0, 1, 0], [0, 1, 0]], atol=1e-12)
