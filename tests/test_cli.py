import os

from bodil.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "converged" in out and "omega^2: MAP" in out
    assert os.path.getsize(tmp_path / "oscillator_map.png") > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["oscillator_map.png"]  # no temporary left behind
