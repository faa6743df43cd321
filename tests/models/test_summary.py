import json

from seedstory.cli.main import main
from seedstory.models.summary import COMPONENTS, parameter_counts


def test_summary_json_for_the_paper_preset_is_one_object(capsys):
    assert main(["summary", "--config", "paper", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert set(COMPONENTS) <= set(counts)
    assert counts["llm"] == 6_738_956_288 and counts["unet"] == 2_567_463_684 and counts["vae"] == 83_653_863
    assert counts["total"] == sum(counts[name] for name in COMPONENTS)


def test_summary_table_and_overrides(capsys, tiny):
    assert main(["summary", "--config", "tiny", "model.lora.r=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines][: len(COMPONENTS)] == list(COMPONENTS)
    assert parameter_counts(tiny)["llm_adapter"] > int(dict(line.split() for line in lines)["llm_adapter"].replace(",", ""))
