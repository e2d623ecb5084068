"""The run's output location: a Zarr v3 activation store, completion records and Parquet tables.

Layout of `<output>` (a local path or an fsspec URL; every path is named once in `workflows.store.paths`; see
docs/store.md):

    store.zarr/               Zarr v3 group; attrs["sceneprobe"] holds the run config, the hook shapes and "format": 1
      images                  (image, y, x, rgb) uint8
      prompt, seed, split     (image,) the plan; `shard` (image,) int32 says which work shard made the image
      acts/<name>/act         (image, step, h, w, c) float16 per hook point (attrs["act_dtype"]; bfloat16 runs store the
                              bits as int16, float8_e4m3 runs uint8 codes with acts/<name>/scale (image, step, c)
                              float32: read them with `read_acts`); float32 for the "latent" and "x0" extras
      labels/<target>         float32 pseudo-labels (the label stage): (image, y, x) for saliency and depth;
                              (image, y, x, 3) unit normals in camera coordinates (0 where the labeler sees no
                              surface) with labels/normals_valid (image, y, x) bool; (image, 3) unit light directions
      interventions/<task>/<method>/images   (image, target, y, x, rgb) uint8 edited test images
    shards/<shard>.json       completion record, written last: the shard's data is valid only if this exists
    shards/<shard>.failed.json  written when a shard failed all its attempts; removed when it later completes
    label_records/<target>/<shard>.json      a label shard's completion record
    label_ceilings.parquet    toy model: each labeler scored against exact truth on held-out renders
    probes/rows/<variant>/<hook>/<step>.json a probe group's completion record (its metric rows)
    probes/weights/...        the fitted probes (safetensors; controls.safetensors the feature controls'); probes/
                              metrics.parquet the grid's table; probes/captions.safetensors the caption embeddings
    interventions/records/... an intervention unit's completion record; config.json, metrics.parquet,
                              summary.parquet, calibration.parquet/.json, moving_object.gif beside them
    interventions/patching/records/<image>.json  a patching pair's completion record; patching.parquet (the map) and
                              patching_cells.parquet beside interventions/metrics.parquet
    variants/<name>/          a control model's run (the permuted-weights U-Net), laid out like this one
    manifest.parquet          one row per image: image, prompt, seed, split, shard, status
    config.yaml               the run config, written last when the store is created
    lease.json                the running owner (host, pid, heartbeat) while a run writes: workflows.store.lease

Every image, activation and label chunk is stored as `compression` (lz4 by default) followed by its CRC32C, and
each activation shard's index carries one too: a flipped byte is a `DamagedChunkError` naming the array and the
images, never data (`sceneprobe verify RUN` finds them all and takes their shards back for `--resume`).

Activations use Zarr sharding: one Zarr shard (one object) per batch of `batch_size` images holds every step, as inner
chunks `(batch_size, 1, h, w, c)`. One (hook, step) for all images is one contiguous byte range per batch; a batch is
written whole, once. `batch_size` divides `shard_size`, so no Zarr shard is ever shared by two work shards: each work
shard has exactly one writer. Every unit of work publishes its outputs with one completion record
(`workflows.store.records`), so a crash or a kill leaves the store consistent and resumable.

Room of `workflows`: below the stages, above `workflows.config`; imports only `workflows.config` (and `ldm.errors`).
"""

from workflows.store.files import bytes_on_disk, read_file, read_table, remove_file, write_atomic, write_table
from workflows.store.records import Records
from workflows.store.run_store import (FLOAT32_EXTRAS, FORMAT, Layout, NoRunError, Plan, RunExistsError, check_output,
                                       complete_images, completion_records, create_store, failure_records, load_layout,
                                       load_plan, load_run_config, mark_failed, open_store, read_acts, read_manifest,
                                       require_run,
                                       shard_ranges, shard_records, shard_states, stored_config, take_images,
                                       write_manifest)
from workflows.store.writer import ShardWriter

__all__ = ["FLOAT32_EXTRAS", "FORMAT", "Layout", "NoRunError", "Plan", "Records", "RunExistsError", "ShardWriter",
           "bytes_on_disk", "check_output", "complete_images", "completion_records", "create_store",
           "failure_records", "load_layout", "load_plan", "load_run_config", "mark_failed", "open_store", "read_acts",
           "read_file", "read_manifest", "read_table", "remove_file", "require_run", "shard_ranges", "shard_records", "shard_states",
           "stored_config", "take_images", "write_atomic", "write_manifest", "write_table"]
