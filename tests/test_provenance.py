"""The commit a benchmark records: ``+changes`` for edited code, not for rewritten results."""

import subprocess

from mlrkit.provenance import git_commit


def _git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder,
                   check=True, capture_output=True)


def test_rewritten_benchmark_results_do_not_mark_the_commit_as_changed(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and "+" not in clean
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("new\n")
    assert git_commit(tmp_path / "benchmarks") == clean  # from any folder of the checkout
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+changes"
