"""Every bad-record kind counted exactly on a crafted dataset, and the failure budget enforced."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from seedstory.cli.main import main
from seedstory.data.badrecords import FailureBudgetExceeded
from seedstory.data.stories import scan_dataset


def _png(colour=(10, 200, 30), size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _story(i: int, frames: int = 3, **fields) -> dict:
    story = {"id": i, "images": [f"s{i}/f{k}.png" for k in range(frames)],
             "captions": [f"Story {i} frame {k}." for k in range(frames)], "orders": list(range(frames))}
    story.update(fields)
    return story


@pytest.fixture()
def crafted(tmp_path):
    """Ten lines in two files: six good stories (one without id/orders), one of each bad kind."""
    images = tmp_path / "images"
    good = [_story(0), _story(1, 2), _story(2, 5), _story(3)]
    no_keys = {k: v for k, v in _story(4).items() if k not in ("id", "orders")}
    bad_lines = [
        "{\"id\": 10, \"images\": [\"s10/f0.png\"], \"captions\": [",          # bad_json
        json.dumps(_story(11, images=["s11/f0.png", "s11/f1.png", "s11/gone.png"])),  # missing_image (frame 2)
        json.dumps(_story(12)),                                                  # corrupt_image (frame 1)
        json.dumps(_story(13, captions=["one", "two"])),                         # count_mismatch
        # empty caption at frame 1 comes before the missing image at frame 2: counted once, as empty_caption
        json.dumps(_story(14, captions=["fine", "  ", "fine"], images=["s14/f0.png", "s14/f1.png", "s14/gone.png"])),
    ]
    for story in [*good, no_keys, _story(11), _story(12), _story(14)]:
        for path in story["images"]:
            (images / path).parent.mkdir(parents=True, exist_ok=True)
            (images / path).write_bytes(_png())
    (images / "s12/f1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    first = tmp_path / "part-0.jsonl"
    second = tmp_path / "part-1.jsonl"
    first.write_text("\n".join(json.dumps(s) for s in good[:2]) + "\n" + "\n".join(bad_lines[:3]) + "\n")
    second.write_text("\n".join([json.dumps(good[2]), json.dumps(good[3]), json.dumps(no_keys), *bad_lines[3:]]) + "\n")
    return tmp_path, images


EXPECTED_BAD = {"bad_json": 1, "missing_image": 1, "corrupt_image": 1, "count_mismatch": 1, "empty_caption": 1}


def test_each_kind_is_counted_once_and_good_stories_pass(crafted):
    root, images = crafted
    ledger = scan_dataset([str(root / "part-*.jsonl")], str(images), failure_budget=0.5)
    summary = ledger.summary()
    assert summary["bad"] == EXPECTED_BAD
    assert summary["stories"] == 5 and summary["frames"] == 3 + 2 + 5 + 3 + 3
    assert [(b["file"].rsplit("/", 1)[-1], b["line"], b["kind"]) for b in summary["first_bad"]] == [
        ("part-0.jsonl", 3, "bad_json"), ("part-0.jsonl", 4, "missing_image"), ("part-0.jsonl", 5, "corrupt_image"),
        ("part-1.jsonl", 4, "count_mismatch"), ("part-1.jsonl", 5, "empty_caption"),
    ]
    assert "frame 2" in summary["first_bad"][1]["detail"] and "frame 1" in summary["first_bad"][2]["detail"]
    assert ledger.metrics()["data/bad_corrupt_image"] == 1.0
    ledger.check()


def test_budget_is_enforced_with_the_first_bad_records_named(crafted):
    root, images = crafted
    ledger = scan_dataset([str(root / "part-0.jsonl"), str(root / "part-1.jsonl")], str(images), failure_budget=0.4)
    assert ledger.allowed == 4 and ledger.over_budget
    with pytest.raises(FailureBudgetExceeded, match=r"5 bad stories of 10 .*part-0.jsonl:3 bad_json"):
        ledger.check()


def test_validate_data_cli_prints_one_json_object(crafted, capsys):
    root, images = crafted
    jsonl = f"{root / 'part-0.jsonl'},{root / 'part-1.jsonl'}"
    code = main(["validate-data", "--jsonl", jsonl, "--image-root", str(images), "--json", "--failure-budget", "0.5"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) == {"stories", "frames", "bad", "first_bad"}
    assert out["bad"] == EXPECTED_BAD and out["stories"] == 5
    assert set(out["first_bad"][0]) == {"file", "line", "kind", "detail"}


def test_validate_data_cli_exits_1_over_budget_via_the_console_script(crafted):
    root, images = crafted
    result = subprocess.run(
        [str(Path(sys.executable).parent / "seedstory"), "validate-data", "--jsonl", str(root / "part-*.jsonl"),
         "--image-root", str(images), "--json", "data.failure_budget=0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["bad"] == EXPECTED_BAD


def test_a_glob_matching_nothing_is_a_clear_error(tmp_path, capsys):
    code = main(["validate-data", "--jsonl", str(tmp_path / "*.jsonl"), "--image-root", str(tmp_path)])
    assert code == 2 and "no JSONL files match" in capsys.readouterr().err
