"""Recipe provenance (issue 25, item 1): what produced each finished step is recorded, and a rerun, a dry run or a
report of an edited recipe is refused instead of presenting outputs of another protocol as the recipe's. Also: a
step's marker must hold content, not merely exist. No training here: steps are marked done by hand."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.recipes.plan import Context, check_provenance, fingerprints, has_content, plan_steps
from nnunet_mtl.recipes.schema import load_recipe, shipped_recipes

SYNTHETIC = shipped_recipes()["synthetic"]


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """The synthetic recipe with one edit, under its own name."""
    text = SYNTHETIC.read_text()
    assert old in text
    path = tmp_path / "synthetic.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def plan(recipe_path, workdir: Path, processes: int = 2, device: str = "cpu"):
    recipe = load_recipe(str(recipe_path))
    ctx = Context(workdir=workdir, data={}, device=device, processes=processes)
    return recipe, ctx, plan_steps(recipe, ctx)


def test_fingerprints_ignore_where_and_how_but_not_what(tmp_path):
    """The work folder's place, worker counts and the device leave a step's fingerprint as it is; the split seed
    changes the split's and everything made from it, not the conversion's."""
    _, ctx, steps = plan(SYNTHETIC, tmp_path / "a")
    _, ctx2, steps2 = plan(SYNTHETIC, tmp_path / "elsewhere" / "b", processes=8, device="cuda")
    assert {k: v["fingerprint"] for k, v in fingerprints(steps, ctx).items()} == \
        {k: v["fingerprint"] for k, v in fingerprints(steps2, ctx2).items()}
    _, ctx3, steps3 = plan(edited(tmp_path, "seed = 0", "seed = 1"), tmp_path / "a")
    a, b = fingerprints(steps, ctx), fingerprints(steps3, ctx3)
    assert a["convert:phantom"] == b["convert:phantom"] and a["plan:phantom"] == b["plan:phantom"]
    for step in ("split:phantom", "train:mtl:0", "predict:mtl:test", "compare:mtl_vs_others", "report"):
        assert a[step]["fingerprint"] != b[step]["fingerprint"], step


def test_an_edited_recipe_is_refused_naming_the_first_step_and_the_change(tmp_path):
    recipe, ctx, steps = plan(SYNTHETIC, tmp_path / "w")
    done = {s.id: "" for s in steps if s.kind in ("convert", "plan", "split", "train")}
    assert check_provenance(steps, done, ctx) == len(done)  # a run from before records: adopted once
    assert check_provenance(steps, done, ctx) == 0
    record = json.loads(ctx.provenance("split:phantom").read_text())
    assert record["fingerprint"] == fingerprints(steps, ctx)["split:phantom"]["fingerprint"]
    _, ctx2, steps2 = plan(edited(tmp_path, "seed = 0", "seed = 1"), tmp_path / "w")
    with pytest.raises(NnunetMtlError) as info:
        check_provenance(steps2, done, ctx2)
    message = str(info.value)
    assert message.startswith("step split:phantom is done, but by another protocol") and "\n" not in message
    assert "was 0, now 1" in message and "undo the edit" in message
    # a dataset option: the conversion is named first
    _, ctx3, steps3 = plan(edited(tmp_path, '"--seed", "3"', '"--seed", "4"'), tmp_path / "w")
    with pytest.raises(NnunetMtlError, match=r"step convert:phantom is done.*was 3, now 4"):
        check_provenance(steps3, done, ctx3)
    # not adopting (dry run, report) writes nothing
    ctx.provenance("train:mtl:0").unlink()
    check_provenance(steps, done, ctx, adopt=False)
    assert not ctx.provenance("train:mtl:0").exists()


def test_a_marker_must_hold_content(tmp_path):
    """A step whose output was emptied or cut short is not done."""
    good_json, empty, cut = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    good_json.write_text('{"x": 1}')
    empty.write_text("")
    cut.write_text('{"x": ')
    assert has_content(good_json) and not has_content(empty) and not has_content(cut)
    header_only, rows = tmp_path / "h.csv", tmp_path / "r.csv"
    header_only.write_text("case_id,predicted_class\n")
    rows.write_text("case_id,predicted_class\na,b\n")
    assert not has_content(header_only) and has_content(rows)
    weights = tmp_path / "checkpoint_final.pth"
    weights.write_bytes(b"")
    assert not has_content(weights)
    weights.write_bytes(b"\x80\x02")
    assert has_content(weights) and not has_content(tmp_path / "missing.json")


def test_a_step_records_its_provenance_only_when_it_succeeds(tmp_path):
    from nnunet_mtl.recipes.launch import run_step
    record = {"fingerprint": "abc", "command": ["x"]}
    ok, failed = tmp_path / "ok.json", tmp_path / "failed.json"
    assert run_step([sys.executable, "-c", "pass"], {}, str(tmp_path / "ok.log"), provenance=(str(ok), record)) == 0
    assert json.loads(ok.read_text()) == record
    assert run_step([sys.executable, "-c", "raise SystemExit(3)"], {}, str(tmp_path / "f.log"),
                    provenance=(str(failed), record)) == 3
    assert not failed.exists()
