"""The bodil command: argument handling. The tumour path end to end: tests/test_tumor_cli.py (synth + ctv, the
same code `bodil demo` runs)."""

from bodil.cli import main


def test_unknown_tissue_combination_is_refused(tmp_path, capsys):
    code = main(["ctv", "--seg", str(tmp_path / "missing.nii.gz"), "--atlas", "mni152", "--wm", "x.nii.gz",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_keeps_compiled_kernels_in_the_user_cache(monkeypatch, tmp_path):
    """Without a JAX_COMPILATION_CACHE_DIR of the user's, the command caches every compiled kernel in
    $XDG_CACHE_HOME/bodil/jax; with one (here empty: no cache) it leaves JAX's setting alone. JAX's settings are
    restored afterwards."""
    import jax

    from bodil.cli import _enable_compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {n: getattr(jax.config, n) for n in names}
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        _enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "bodil" / "jax")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
        jax.config.update("jax_compilation_cache_dir", None)
        _enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        for n, v in before.items():
            jax.config.update(n, v)
