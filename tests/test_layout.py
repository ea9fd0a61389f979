"""The layout of DESIGN.md section 2, checked: library files never import a script; the
top-level files import each other without a cycle; `import chat` loads no trainer; no
top-level file is over 800 lines; README's file tree lists exactly the repository's top-level
files and folders; the old command lines still run, with a notice.

Imports are read with `ast` wherever they stand, inside functions and `if __name__ ==
"__main__":` blocks too. The old command lines (python vision.py, python data.py shapes,
python eval_vlm.py ablate) run the new script by path (common.run_moved), not by import.
Run: python -m pytest -q tests/test_layout.py
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = {"common", "model", "vision", "xdp", "vlm", "tokenizer", "data", "shapes", "scorers", "kernels"}
SCRIPTS = {"train_lm", "train_clip", "train_vlm", "chat", "eval_vlm", "bench", "bench_gpu", "ablate", "lookup"}


def modules():
    """{top-level module: its files}: each top-level .py, and the kernels package as one."""
    found = {f[:-3]: [os.path.join(ROOT, f)] for f in os.listdir(ROOT) if f.endswith(".py")}
    kernels = os.path.join(ROOT, "kernels")
    found["kernels"] = sorted(os.path.join(kernels, f) for f in os.listdir(kernels) if f.endswith(".py"))
    return found


def imported(paths, local):
    """The local top-level modules that the files import, anywhere in them."""
    names = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add("kernels" if node.level else node.module.split(".")[0])  # relative: inside kernels/
    return names & local


def import_graph():
    mods = modules()
    return {name: imported(paths, set(mods)) - {name} for name, paths in mods.items()}


def test_every_top_level_file_is_a_library_file_or_a_script():
    assert set(modules()) == LIBRARY | SCRIPTS, "a new top-level file: add it to LIBRARY or SCRIPTS here"


def test_no_library_file_imports_a_script():
    graph = import_graph()
    bad = {lib: sorted(graph[lib] & SCRIPTS) for lib in LIBRARY if graph[lib] & SCRIPTS}
    assert not bad, f"library files import scripts: {bad}"


def test_no_import_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, path):  # depth first; a module met again on the current path closes a cycle
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_import_chat_loads_no_trainer():
    code = f"import chat, sys; print(' '.join(sorted(m for m in sys.modules if m in {sorted(SCRIPTS - {'chat'})})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import chat also loads the scripts {out.stdout.split()}"


def test_no_top_level_file_is_over_800_lines():
    lengths = {name: sum(1 for _ in open(paths[0], encoding="utf-8"))
               for name, paths in modules().items() if name != "kernels"}
    assert max(lengths.values()) <= 800, {n: k for n, k in lengths.items() if k > 800}


def test_readme_file_tree_lists_exactly_the_repository():
    try:
        tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout  # tracked, or new and not ignored
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files are what git tracks")
    repo = {p.split("/")[0] + ("/" if "/" in p else "") for p in tracked.splitlines() if not p.startswith(".")}
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("## Files\n", 1)[1].split("```\n", 2)[1]  # the code block under the heading
    listed = [line.split()[0] for line in block.splitlines() if line.strip() and not line[0].isspace()]
    assert len(listed) == len(set(listed)), "an entry is listed twice"
    assert set(listed) == repo, f"only in README: {sorted(set(listed) - repo)}; not in README: {sorted(repo - set(listed))}"


@pytest.mark.parametrize("old, new, expect", [
    (["vision.py", "--help"], "train_clip.py", "class CLIPTrainConfig"),
    (["data.py", "shapes", "--help"], "shapes.py", "manifest.json"),
    (["eval_vlm.py", "ablate", "--help"], "ablate.py", "--projector"),
])
def test_old_command_lines_run_the_new_script_with_a_notice(old, new, expect):
    out = subprocess.run([sys.executable, *old], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"now `python {new}`" in out.stderr and expect in out.stdout
