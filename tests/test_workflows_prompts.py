import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflows.config import RunConfig, PromptsConfig
from workflows.stages.prompts import PromptsError, build_plan, hash_split, read_rows

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paper-splits"


def file_cfg(**prompts) -> RunConfig:
    return RunConfig(prompts=PromptsConfig(source="file", **prompts), num_images=None)


@pytest.fixture
def paper_splits() -> Path:
    if not (SPLITS / "train_split_prompts_seeds.csv").is_file():
        pytest.skip(f"the paper's split files are not at {SPLITS}")
    return SPLITS


def test_paper_split_files(paper_splits):
    cfg = file_cfg(train=str(paper_splits / "train_split_prompts_seeds.csv"),
                   test=str(paper_splits / "test_split_prompts_seeds.csv"))
    plan = build_plan(cfg)
    assert (len(plan), plan.count("train"), plan.count("test")) == (617, 246, 371)
    assert plan.splits == ["train"] * 246 + ["test"] * 371  # train first, in file order
    # quoted prompts with commas survive, seeds are integers
    assert plan.prompts[0].startswith("Elle Fanning at Variety's Power of Young Hollywood") and "," in plan.prompts[0]
    assert (plan.seeds[0], plan.seeds[246]) == (5107435, 30918977)
    # the file's doubled quotes decode as CSV says: "" -> "
    assert plan.prompts[246] == '"""36"""" Electric Cooktop with 5 Elements and Knob Controls - Black"""'


def test_cap_keeps_split_proportions(paper_splits):
    cfg = file_cfg(train=str(paper_splits / "train_split_prompts_seeds.csv"),
                   test=str(paper_splits / "test_split_prompts_seeds.csv"))
    cfg.num_images = 20
    plan = build_plan(cfg)
    assert (plan.count("train"), plan.count("test")) == (8, 12)


def test_csv_parquet_jsonl_give_the_same_plan(tmp_path):
    rows = [{"prompt": f"a red cube, number {i}", "seed": 10 + i, "split": "test" if i % 3 == 0 else "train"}
            for i in range(6)]
    with open(tmp_path / "p.csv", "w") as f:
        f.write("prompt,seed,split\n" + "".join(f'"{r["prompt"]}",{r["seed"]},{r["split"]}\n' for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plans = [build_plan(file_cfg(path=str(tmp_path / f"p.{ext}"))) for ext in ("csv", "parquet", "jsonl")]
    assert plans[0] == plans[1] == plans[2]
    assert plans[0].splits == ["train"] * 4 + ["test"] * 2
    assert plans[0].seeds == [11, 12, 14, 15, 10, 13]


def test_hash_split_without_split_column_is_stable(tmp_path):
    lines = [f"p{i},{i}" for i in range(200)]
    (tmp_path / "a.csv").write_text("prompts,seeds\n" + "\n".join(lines))
    (tmp_path / "b.csv").write_text("prompts,seeds\n" + "\n".join(reversed(lines)))
    cfg = file_cfg(path=str(tmp_path / "a.csv"))
    cfg.test_fraction = 0.25
    a = build_plan(cfg)
    cfg.prompts.path = str(tmp_path / "b.csv")
    b = build_plan(cfg)
    split_of = lambda plan: dict(zip(plan.seeds, plan.splits))
    assert split_of(a) == split_of(b)  # the split depends on the row, not on its position
    assert 30 < a.count("test") < 70
    assert a.splits[0] == hash_split("p0", 0, 0.25)


def test_missing_file(tmp_path):
    with pytest.raises(PromptsError, match="not found"):
        build_plan(file_cfg(path=str(tmp_path / "none.csv")))


def test_missing_column_lists_the_columns(tmp_path):
    (tmp_path / "p.csv").write_text("caption,seed\na,1\n")
    with pytest.raises(PromptsError, match=r"no prompt column \(looked for prompt, prompts\); its columns are: caption, seed"):
        build_plan(file_cfg(path=str(tmp_path / "p.csv")))


def test_duplicate_rows_are_refused(tmp_path):
    (tmp_path / "train.csv").write_text("prompts,seeds\na cat,1\na dog,2\n")
    (tmp_path / "test.csv").write_text("prompts,seeds\na bird,3\na cat,1\n")
    with pytest.raises(PromptsError, match=r"duplicate \(prompt, seed\).*\('a cat', 1\) at train.csv row 1 and test.csv row 2"):
        build_plan(file_cfg(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv")))


def test_bad_seed_names_the_row(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "seed": 1}\n{"prompt": "b", "seed": "x"}\n')
    with pytest.raises(PromptsError, match="row 2: seed 'x' is not an integer"):
        read_rows(tmp_path / "p.jsonl") and build_plan(file_cfg(path=str(tmp_path / "p.jsonl")))


def test_toy_plan_follows_the_seed_convention():
    pytest.importorskip("ldm.toy.render")
    cfg = RunConfig(num_images=8, test_fraction=0.25)
    plan = build_plan(cfg)
    assert plan.seeds == [0, 1, 2, 3, 4, 5, 1_000_000, 1_000_001]
    assert plan.splits == ["train"] * 6 + ["test"] * 2
    assert all(isinstance(p, str) and p for p in plan.prompts)
