"""A test backend for workflows (`backend: tests.test_workflows_backend`): the real ldm API plus injected faults.

Faults are switched by files in the directory named by $SCENEPROBE_TEST_CONTROL, so a test can arm them in Ray actor
processes it does not control:
    pause-<seed>  the first generate() call whose batch holds <seed> writes its pid to `paused` and sleeps (to be killed)
    fail-<seed>   every generate() call whose batch holds <seed> raises RuntimeError
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from ldm.capture import capture as _capture
from ldm.loading import load_model as _load_model

CONTROL = "SCENEPROBE_TEST_CONTROL"


class FaultyModel:
    """A LoadedModel whose generate() obeys the control files; everything else is the real model's."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, seeds):
        control = os.environ.get(CONTROL)
        if control:
            if any(os.path.exists(os.path.join(control, f"fail-{s}")) for s in seeds):
                raise RuntimeError(f"injected failure for seeds {list(seeds)}")
            if any(os.path.exists(os.path.join(control, f"pause-{s}")) for s in seeds):
                try:
                    fd = os.open(os.path.join(control, "paused"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass  # paused once already: generate normally now
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    time.sleep(300)  # the test SIGKILLs this process meanwhile
        return self.inner.generate(prompts, seeds)


def load_model(model, **kwargs):
    return FaultyModel(_load_model(model, **kwargs))


@contextmanager
def capture(model, sink, hooks=None, extras=()):
    with _capture(model.inner, sink, hooks=hooks, extras=extras):
        yield
