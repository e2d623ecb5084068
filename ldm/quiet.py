"""Silence the library messages known to be harmless for sceneprobe, at their source, and nothing else.

- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." (and the same for
  every image processor diffusers names at import): sceneprobe never runs an image processor (the safety checker and
  its feature extractor are not loaded), so the fallback is irrelevant. Other transformers warnings still show.
- transformers' and diffusers' "Loading weights" / "Loading pipeline components" progress bars: one bar per
  component per actor, all of them at 100% within a second, drowning the stages' own progress lines.
"""

from __future__ import annotations

import logging

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


def quiet_known_noise() -> None:
    """Idempotent; call before diffusers pipelines are imported (the fallback warning fires on that import)."""
    import diffusers
    import transformers

    source = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in source.filters):
        source.addFilter(_DropTorchvisionFallback())
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
