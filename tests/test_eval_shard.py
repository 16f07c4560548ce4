"""``kmax evaluate --shard i/n`` + ``--merge``: exactly the numbers of one run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from kmax_deeplab.cli import main
from kmax_deeplab.commands.evaluate import _jsonable
from kmax_deeplab.evaluation import PanopticEvaluationError, evaluate_files, merge_shard_results
from kmax_deeplab.evaluation.runner import parse_shard


@pytest.fixture()
def scored(pq_testdata, tmp_path):
    """The real GT/prediction set, predictions given scores (needed for AP)."""
    for name in ("coco_gt", "coco_pred"):
        shutil.copytree(pq_testdata / name, tmp_path / name)
    shutil.copy(pq_testdata / "coco_gt.json", tmp_path / "coco_gt.json")
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    k = 0
    for ann in pred["annotations"]:
        for s in ann["segments_info"]:
            s["score"] = 0.3 + 0.035 * (k % 20)  # distinct, deterministic
            k += 1
    (tmp_path / "coco_pred.json").write_text(json.dumps(pred))
    return tmp_path / "coco_gt.json", tmp_path / "coco_pred.json"


def _cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(list(argv))
    return rc, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("n", [1, 3, 4])
def test_cli_shards_merge_to_the_one_run_numbers(scored, tmp_path, n):
    gt, pred = scored
    one = evaluate_files(gt, pred, num_workers=0, progress=False, semantic=True, instance=True,
                         backend="kmax")
    files = []
    for i in reversed(range(n)):  # any order of the shards
        path = tmp_path / f"shard{i}.json"
        rc, text = _cli("evaluate", "--gt-json", str(gt), "--pred-json", str(pred), "--shard",
                        f"{i}/{n}", "--miou", "--ap", "--workers", "0", "--no-progress",
                        "--output", str(path))
        assert rc == 0, text
        files.append(str(path))
    merged_path = tmp_path / "merged.json"
    rc, text = _cli("evaluate", "--merge", *files, "--output", str(merged_path))
    assert rc == 0, text
    merged = json.loads(merged_path.read_text())
    want = json.loads(json.dumps(_jsonable(one)))
    for key in ("panoptic", "semantic", "instance", "num_images"):
        assert merged[key] == want[key], key  # exact: counts and exact IoU sums
    assert merged["num_images"] == 4
    # The shards really split the images (3 shards of 4 images: 1, 1, 2).
    sizes = sorted(json.loads(open(f).read())["num_images"] for f in files)
    assert sizes == {1: [4], 3: [1, 1, 2], 4: [1, 1, 1, 1]}[n]


def test_library_merge_equals_hotcoco_default_pq(scored):
    gt, pred = scored
    shards = [evaluate_files(gt, pred, num_workers=0, progress=False, shard=(i, 2)) for i in (1, 0)]
    merged = merge_shard_results(shards)["panoptic"]
    hot = evaluate_files(gt, pred, num_workers=0, progress=False)
    assert hot["backend"] == "hotcoco"
    for group in ("All", "Things", "Stuff"):
        assert merged[group]["pq"] == pytest.approx(hot["panoptic"][group]["pq"], abs=1e-15, rel=0)


def test_merge_errors(scored, tmp_path):
    gt, pred = scored
    s = [evaluate_files(gt, pred, num_workers=0, progress=False, shard=(i, 3)) for i in range(3)]
    with pytest.raises(PanopticEvaluationError, match=r"missing shard\(s\) 1/3"):
        merge_shard_results([s[0], s[2]])
    with pytest.raises(PanopticEvaluationError, match="shard 0/3 given twice"):
        merge_shard_results([s[0], s[0], s[1], s[2]])
    other = evaluate_files(gt, pred, num_workers=0, progress=False, shard=(1, 2))
    with pytest.raises(PanopticEvaluationError, match="another split"):
        merge_shard_results([s[0], other])
    g = json.loads(gt.read_text())  # same size, other ground truth (images reordered)
    g["annotations"].reverse()
    gt2 = gt.with_name("gt2.json")
    gt2.write_text(json.dumps(g))
    foreign = evaluate_files(gt2, pred, gt.with_suffix(""), None, num_workers=0, progress=False,
                             shard=(1, 3))
    with pytest.raises(PanopticEvaluationError, match="another split"):
        merge_shard_results([s[0], foreign, s[2]])
    sem = evaluate_files(gt, pred, num_workers=0, progress=False, shard=(1, 3), semantic=True)
    with pytest.raises(PanopticEvaluationError, match="other metrics"):
        merge_shard_results([s[0], sem, s[2]])
    with pytest.raises(PanopticEvaluationError, match="not a shard result"):
        merge_shard_results([evaluate_files(gt, pred, num_workers=0, progress=False)])


def test_cli_errors(scored, tmp_path):
    gt, pred = scored
    rc, text = _cli("evaluate", "--gt-json", str(gt), "--pred-json", str(pred), "--shard", "0/2")
    assert rc == 2 and "--shard needs --output" in text
    rc, text = _cli("evaluate", "--gt-json", str(gt), "--pred-json", str(pred), "--shard", "2/2",
                    "--output", str(tmp_path / "x.json"))
    assert rc == 2 and "need 0 <= i < n" in text
    (tmp_path / "bad.json").write_text("{}")
    rc, text = _cli("evaluate", "--merge", str(tmp_path / "bad.json"))
    assert rc == 1 and "is not a shard result" in text
    rc, text = _cli("evaluate")
    assert rc == 2 and "--gt-json and --pred-json are required" in text


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("2", "a/b", "-1/3", "3/3", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
