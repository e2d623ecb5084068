"""A chaos run: every stage of a config on a local multi-node Ray cluster while a killer SIGKILLs this run's own
workers, and once removes a whole node; the run must end equal to a calm one, array for array and table for table.

    python benchmarks/chaos.py configs/toy.yaml                          # the whole toy run (hours on 2 cores)
    python benchmarks/chaos.py configs/toy.yaml --set num_images=32 --set steps=6 --every 4 --root /tmp/chaos

1. Start a `ray.cluster_utils.Cluster` of `--nodes` simulated nodes (a head and workers, `--cpus` CPUs each).
2. The calm run: the config's stages one at a time into <root>/calm, each timed.
3. The chaos run: the same into <root>/chaos, while a killer thread SIGKILLs a random process of this run's Ray
   workers (generator, label, probe-grid, patching and intervention actors, between calls or in one, and task
   workers running a task: descendants of this process whose title starts with `ray::`; pooled idle workers, actors
   still loading and Ray's own agents are left alone, as are the raylets and the GCS): the first of each kind it sees in a stage at once, then one every `--every` seconds, up to `--kills` of
   each kind (GeneratorActor, _label_task, _fit_group_task, PatchingActor, InterventionActor, _animate) per stage:
   faults without end would outpace any retry on a small machine, and a few per kind still exhaust a unit's retries
   at times, which the resume must then repair. Once, `--remove-after` seconds into the stage `--remove-node-in`, it removes a
   whole worker node. A stage that raises or reports failed units is run again with `--resume`, up to `--resumes`
   times.
4. Compare every Zarr array and every Parquet table of the two runs (timing columns aside: same_results.py), and print
   per stage what was killed, the resumes, and the calm and chaos times: the difference per kill is what a fault cost.
   <root>/chaos.json keeps it all. Exit status 0 when the runs are equal, 1 otherwise.

Stages run one at a time (what `sceneprobe run` does in one call) so that every kill is charged to the stage it hit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # same_results, beside this script

from same_results import compare_stores, compare_tables  # noqa: E402

from ldm.errors import UserError  # noqa: E402
from workflows.config import STAGES, load_config  # noqa: E402
from workflows.pipeline import run_pipeline  # noqa: E402

# Ray's own processes that carry a `ray::` title: an idle pooled worker (killing it would test nothing) and each
# node's agents (killing one takes its whole node down: that is the node removal's part, not a worker fault's)
NOT_WORKERS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def kind(title: str) -> str:
    """A worker's kind from its title: `ray::GeneratorActor.run_shard` -> GeneratorActor, `ray::_label_task` ->
    _label_task."""
    return title.removeprefix("ray::").split(".")[0].split()[0]


def ray_workers(root_pid: int) -> dict[int, str]:
    """{pid: process title} of the Ray actors and working task workers below `root_pid` (Linux /proc: a worker's title is
    `ray::<actor or task>`): the only processes the killer may touch, since this run started them. An actor still in
    its constructor is left alone: it is Ray restarting one (reloading its model), and kills faster than a reload would
    starve any system of actors, which tests nothing."""
    parent, title = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                parent[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                title[int(entry.name)] = f.read().split(b"\0")[0].decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    ours, frontier = set(), {root_pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - ours
        ours |= frontier
    return {p: t for p in ours if (t := title.get(p, "")).startswith("ray::") and t not in NOT_WORKERS
            and not t.endswith(".__init__")}


@dataclass
class Kill:
    stage: str
    seconds: float  # into the stage
    pid: int
    process: str  # its title: ray::GeneratorActor.run_shard, ray::_label_task, ray::_fit_group_task, ...


@dataclass
class Killer:
    """SIGKILLs this run's Ray workers while `stage` is set (see the module docstring); removes one node once."""

    cluster: object
    every: float
    per_kind: int
    remove_node_in: str | None
    remove_after: float
    rng: random.Random
    stage: str | None = None
    stage_start: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    removed: dict | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def enter(self, stage: str | None) -> None:
        self.stage, self.stage_start = stage, time.monotonic()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.wait(0.05):
            stage, now = self.stage, time.monotonic()
            if stage is None:
                continue
            into = now - self.stage_start
            if stage == self.remove_node_in and self.removed is None and into >= self.remove_after:
                node = self.cluster.list_all_nodes()[-1]  # a worker node: the head holds the GCS and this driver
                self.cluster.remove_node(node, allow_graceful=False)
                self.removed = {"stage": stage, "seconds": round(into, 2), "node": node.node_id}
                print(f"chaos: removed node {node.node_id[:8]} {into:.1f}s into {stage}", flush=True)
            hit = Counter(kind(k.process) for k in self.kills if k.stage == stage)
            workers = {p: t for p, t in ray_workers(os.getpid()).items() if hit[kind(t)] < self.per_kind}
            fresh = {p: t for p, t in workers.items() if kind(t) not in hit}  # not hit yet in this stage: now
            if not fresh and (not workers or now - last < self.every):
                continue
            workers = fresh or workers
            pid = self.rng.choice(sorted(workers))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            last = now
            self.kills.append(Kill(stage, round(into, 2), pid, workers[pid]))
            print(f"chaos: killed {workers[pid]} (pid {pid}) {into:.1f}s into {stage}", flush=True)


def run_stages(cfg, stages: tuple[str, ...], address: str, killer: Killer | None, resumes: int,
               log: io.TextIOBase) -> dict[str, dict]:
    """Run `stages` one at a time; {stage: {seconds, resumes, errors}}. A stage that raises or leaves work undone is
    resumed, as a user would with `--resume`."""
    out: dict[str, dict] = {}
    for k, stage in enumerate(stages):
        start, errors = time.monotonic(), []
        if killer:
            killer.enter(stage)
        for attempt in range(resumes + 1):
            try:
                failed = run_pipeline(cfg, (stage,), resume=k > 0 or attempt > 0, use_ray=True, address=address,
                                      stream=log)
                if failed is None:
                    break
                errors.append(f"{failed}: work left undone")
            except Exception as err:  # noqa: BLE001 — any crash of the stage is one the next resume must repair
                errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        else:
            raise SystemExit(f"error: stage {stage} still failing after {resumes} resumes: {errors[-1]}")
        if killer:
            killer.enter(None)
        out[stage] = {"seconds": round(time.monotonic() - start, 2), "resumes": len(errors), "errors": errors}
    return out


def user_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a run config (configs/toy.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--root", default="runs/chaos", help="folder for the calm and chaos runs (default %(default)s)")
    parser.add_argument("--nodes", type=int, default=3, help="simulated nodes, head included (default %(default)s)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each node offers Ray (default %(default)s)")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between kills (default %(default)s)")
    parser.add_argument("--kills", type=int, default=3,
                        help="kills of each worker kind per stage, at most (default %(default)s)")
    parser.add_argument("--remove-node-in", default="probe", choices=STAGES,
                        help="the stage in which one worker node is removed (default %(default)s)")
    parser.add_argument("--remove-after", type=float, default=2.0, help="seconds into that stage (default %(default)s)")
    parser.add_argument("--resumes", type=int, default=3, help="resumes allowed per stage (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the killer's choice of victims (default %(default)s)")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2: a node is removed, and the head must stay")

    from ray.cluster_utils import Cluster

    root = Path(args.root)
    try:
        base = load_config(args.config, args.set)
    except UserError as err:
        return user_error(str(err))
    stages = tuple(s for s in STAGES if s in base.stages)
    calm_cfg, chaos_cfg = (replace(base, output=str(root / name)) for name in ("calm", "chaos"))
    for cfg in (calm_cfg, chaos_cfg):
        if Path(cfg.output).exists():
            return user_error(f"{cfg.output} exists; remove it or pass another --root")

    # 1. The cluster: the head and `nodes - 1` workers, on this machine.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus)
    cluster.wait_for_nodes()
    root.mkdir(parents=True, exist_ok=True)
    logs = {name: open(root / f"{name}.log", "w") for name in ("calm", "chaos")}  # the stages' own progress lines
    try:
        # 2. The calm run.
        print(f"calm run into {calm_cfg.output}: stages {', '.join(stages)}", flush=True)
        calm = run_stages(calm_cfg, stages, cluster.address, None, args.resumes, logs["calm"])
        # 3. The chaos run.
        print(f"chaos run into {chaos_cfg.output}: up to {args.kills} kills per worker kind and stage, {args.every:g}s apart, a node removed in "
              f"{args.remove_node_in}", flush=True)
        killer = Killer(cluster, args.every, args.kills, args.remove_node_in, args.remove_after, random.Random(args.seed))
        thread = killer.start()
        try:
            chaos = run_stages(chaos_cfg, stages, cluster.address, killer, args.resumes, logs["chaos"])
        finally:
            killer.stop()
            thread.join()
    finally:
        for f in logs.values():
            f.close()
        import ray

        ray.shutdown()
        cluster.shutdown()

    # 4. Compare, and what the faults cost.
    problems = compare_stores(Path(calm_cfg.output), Path(chaos_cfg.output)) + \
        compare_tables(Path(calm_cfg.output), Path(chaos_cfg.output))
    print(f"\n{'stage':10s} {'kills':>5s} {'resumes':>7s} {'calm s':>7s} {'chaos s':>7s} {'s/kill':>7s}  killed")
    for stage in stages:
        kills = [k for k in killer.kills if k.stage == stage]
        extra = chaos[stage]["seconds"] - calm[stage]["seconds"]
        what = ", ".join(f"{n} {name}" for name, n in sorted(Counter(kind(k.process) for k in kills).items())) or "-"
        per_kill = f"{extra / len(kills):7.1f}" if kills else f"{'-':>7s}"
        print(f"{stage:10s} {len(kills):5d} {chaos[stage]['resumes']:7d} {calm[stage]['seconds']:7.1f} "
              f"{chaos[stage]['seconds']:7.1f} {per_kill}  {what}")
    if killer.removed:
        print(f"node removed {killer.removed['seconds']}s into {killer.removed['stage']}")
    print("\n".join(problems) if problems else "chaos run equals the calm run: every array and every table")
    report = {"config": args.config, "overrides": args.set, "nodes": args.nodes, "cpus": args.cpus,
              "every": args.every, "kills_per_kind": args.kills, "calm": calm, "chaos": chaos, "kills": [asdict(k) for k in killer.kills],
              "node_removed": killer.removed, "problems": problems}
    (root / "chaos.json").write_text(json.dumps(report, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
