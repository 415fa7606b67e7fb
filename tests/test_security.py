"""Security by default, checked on the source: user files are never unpickled freely, evaluated,
or loaded as unsafe YAML; checkpoints load with weights_only; no shell runs a string."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpe_ray"
SOURCES = sorted(PACKAGE.rglob("*.py"))
RESTRICTED_UNPICKLER = PACKAGE / "data" / "pickles.py"


def _calls(path: Path):
    """(dotted callee, keyword names and constant values, line) of every call in a module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: getattr(k.value, "value", k.value) for k in node.keywords}, node.lineno


def _findings(check) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
            for path in SOURCES for name, keywords, line in _calls(path) if check(path, name, keywords)]


def test_sources_are_found():
    assert len(SOURCES) > 40 and RESTRICTED_UNPICKLER in SOURCES


@pytest.mark.parametrize("what, check", [
    ("eval/exec of text", lambda path, name, kw: name in ("eval", "exec", "builtins.eval", "builtins.exec")),
    ("pickle outside the restricted unpickler",
     lambda path, name, kw: name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") and path != RESTRICTED_UNPICKLER),
    ("unsafe YAML", lambda path, name, kw: name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all")),
    ("numpy pickles", lambda path, name, kw: name in ("np.load", "numpy.load") and kw.get("allow_pickle") is True),
    ("torch.load without weights_only=True", lambda path, name, kw: name == "torch.load" and kw.get("weights_only") is not True),
    ("a shell running a string", lambda path, name, kw: name in ("os.system", "os.popen") or kw.get("shell") is True),
])
def test_no_unsafe_loading(what, check):
    assert _findings(check) == [], what


def test_the_checks_see_a_violation(tmp_path):
    """The same AST walk finds each pattern in a file that has them (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, yaml, torch, os\npickle.load(f)\nyaml.load(t)\ntorch.load(p)\n"
                   "eval('1')\nos.system('ls')\nnp.load(p, allow_pickle=True)\n")
    names = [name for name, _, _ in _calls(bad)]
    assert names == ["pickle.load", "yaml.load", "torch.load", "eval", "os.system", "np.load"]
