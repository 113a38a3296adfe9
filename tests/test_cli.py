"""The bodil command: argument handling. The tumour path end to end: tests/test_tumor_cli.py (synth + ctv, the
same code `bodil demo` runs)."""

from bodil.cli import main


def test_unknown_tissue_combination_is_refused(tmp_path, capsys):
    code = main(["ctv", "--seg", str(tmp_path / "missing.nii.gz"), "--atlas", "mni152", "--wm", "x.nii.gz",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
