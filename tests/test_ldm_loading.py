import numpy as np
import pytest
import torch

from ldm.errors import UserError
from ldm.loading import load_model


def test_defaults_are_the_papers(sd1_path):
    model = load_model(str(sd1_path))
    assert type(model.pipe.scheduler).__name__ == "LMSDiscreteScheduler"
    assert model.config.steps == 15 and model.config.guidance_scale == 7.5


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"), ("pndm", "PNDMScheduler")])
def test_scheduler_selectable(sd1_path, name, cls):
    model = load_model(str(sd1_path), scheduler=name, steps=2)
    assert type(model.pipe.scheduler).__name__ == cls
    assert model.generate(["a"], [0]).shape == (1, 32, 32, 3)


def test_image_depends_on_its_seed_alone(sd1_path):
    model = load_model(str(sd1_path), steps=3)
    together = model.generate(["red ball", "blue cube", "red ball"], [7, 8, 9])
    alone = model.generate(["blue cube"], [8])
    assert together.dtype == np.uint8 and together.shape == (3, 32, 32, 3)
    # the noise is exactly the seed's; the images agree up to the rounding of batched matrix products
    torch.testing.assert_close(model.initial_noise([7, 8, 9])[1:2], model.initial_noise([8]), rtol=0, atol=0)
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[2])  # same prompt, other seed


def test_initial_noise_matches_papers_recipe(sd1_path):
    model = load_model(str(sd1_path), steps=2)
    torch.manual_seed(123)
    expected = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(model.initial_noise([123]), expected, rtol=0, atol=0)


def test_float16_dtype_is_applied(sd1_path):
    model = load_model(str(sd1_path), steps=2, dtype="float16")
    assert model.dtype == torch.float16


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scheduler": "heun"}, "unknown scheduler 'heun'; choose one of lms, ddim, euler, pndm"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"dtype": "int8"}, "unknown dtype"),
        ({"height": 30}, "multiple of 8"),
    ],
)
def test_bad_settings(sd1_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        load_model(str(sd1_path), **kwargs)


def test_missing_local_folder():
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/folder")


def test_hub_id_without_network_names_the_fix():
    with pytest.raises(UserError, match="not in the Hugging Face cache.*hf download"):
        load_model("nobody/not-a-real-model-xyz")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(UserError, match="no model_index.json"):
        load_model(str(tmp_path))
