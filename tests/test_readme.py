"""The README's quick start runs as written (on CPU) and ends with a non-trivial selection; the
files and commands the README names exist."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quick start: tests/test_readme.py runs this block -->"


def quick_start_code() -> str:
    text = README.read_text()
    assert MARKER in text, "README.md lost the quick-start marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "no ```python block after the quick-start marker"
    return block.group(1)


@pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
def test_quick_start_runs_on_cpu_and_selects_a_real_coreset(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CI runs it on CPU
    ns = {"__name__": "readme_quick_start"}
    exec(compile(quick_start_code(), str(README), "exec"), ns)
    assert ns["device"] == "cpu"
    tracker, scores, kept, n = ns["tracker"], ns["scores"], ns["kept"], ns["N"]
    assert tracker.complete and tracker.stats["windows"] > 0
    assert scores.shape == (n,) and torch.isfinite(scores).all()
    assert scores.unique().numel() > n // 2, "scores should separate the samples"
    k = n - int(0.7 * n)
    assert kept.dtype == torch.int64 and kept.numel() == k
    assert torch.equal(kept, kept.unique()), "kept: distinct dataset indices, ascending"
    assert not torch.equal(kept, torch.arange(k)), "the selection must not be the first k indices"
    # The kept samples are the highest-scoring ones.
    assert scores[kept].min() >= scores.topk(k).values.min()
    assert f"kept {k} of {n}" in capsys.readouterr().out


def test_named_files_exist():
    text = README.read_text()
    root = README.parent
    paths = set(re.findall(r"\]\(((?:docs|examples|benchmarks|tests|scripts|csrc|tdds_kernels)/[^)#\s]+)", text))
    paths |= set(re.findall(r"`((?:examples|benchmarks|scripts|docs)/[\w./-]+\.(?:py|md|sh))`", text))
    assert paths, "README should link its docs and examples"
    missing = sorted(p for p in paths if not (root / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_short_and_its_make_targets_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md: keep it a five-minute read; details go to docs/"
    makefile = (README.parent / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"`make (\w+)`|^make (\w+)", text, re.M))
    named = {a or b for a, b in named}
    assert {"demo", "test"} <= named and named <= targets, (named, targets)


def test_make_test_is_said_to_lint_first():
    makefile = (README.parent / "Makefile").read_text()
    prerequisites = re.search(r"^test:(.*)$", makefile, re.M).group(1).split()
    assert "lint" in prerequisites, "make test no longer runs lint: update README"
    line = next(line for line in README.read_text().splitlines() if line.startswith("make test"))
    assert "lint" in line and line.index("lint") < line.index("test suite"), line


# Phrases of a lab notebook rather than of the project's documentation.
NOTEBOOK = [r"\bsandbox\b", r"\bof mine\b", r"\b[Ii]ssue \d+\b", r"\bI (measured|ran|tried|found)\b"]


def test_docs_speak_in_the_project_voice():
    root = README.parent
    found = []
    for path in [README, *sorted((root / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(root)}:{n}: {line.strip()}" for p in NOTEBOOK if re.search(p, line)]
    assert not found, "\n".join(found)
