"""The package layout (docs/DESIGN.md, "Where each stage lives"): imports go one way, `import onnxprune`
does not import torch, every option has one default shared by the API and the command line, and the
method registry is the one list of methods."""
import ast
import dataclasses
import inspect
import pathlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune import options
from onnxprune.cli import main
from onnxprune.selection import methods

PACKAGE = pathlib.Path(onnxprune.__file__).parent
# a module may import from its own stage and from stages of a lower rank only
RANK = {"errors": 0, "options": 1, "graph": 2, "analysis": 3, "twin": 4, "rewrite": 4, "calibration": 5,
        "statistics": 6, "selection": 7, "latency": 7, "pipeline": 8, "report": 9, "distill": 9,
        "bias_correction": 9, "api": 10, "finetune": 10, "cli": 11,
        "__init__": 12, "__main__": 12}


def _stage(parts: tuple[str, ...]) -> str:
    """The stage of a module given its path inside the package, e.g. ('selection', 'greedy')."""
    return parts[0]


def _imports(path: pathlib.Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, module path inside onnxprune) of every import of an onnxprune module, lazy ones included."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + tuple(node.module.split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == "onnxprune":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            names = [target + (alias.name,) for alias in node.names] if not node.module or not target else [target]
            out += [(node.lineno, t) for t in names if t]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names
                    if a.name.split(".")[0] == "onnxprune" and len(a.name.split(".")) > 1]
    return out


def _module_files():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_stage():
    for path in _module_files():
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        assert _stage(rel) in RANK, f"{path}: not in a known stage"


def test_imports_go_one_way():
    bad = []
    for path in _module_files():
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        mine = _stage(rel)
        for line, target in _imports(path):
            theirs = _stage(target)
            if theirs not in RANK:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports unknown module {'.'.join(target)}")
            elif theirs != mine and RANK[theirs] >= RANK[mine]:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({mine}) imports {'.'.join(target)} ({theirs})")
    assert not bad, "\n".join(bad)


def test_the_import_walker_sees_upward_imports(tmp_path):
    """The check above can fail: an upward import, relative or absolute, lazy or not, is found."""
    fake = PACKAGE / "graph" / "_layout_probe.py"
    fake.write_text("def f():\n    from ..pipeline import counts\n    import onnxprune.report.html\n")
    try:
        found = {_stage(t) for _, t in _imports(fake)}
        assert found == {"pipeline", "report"}
        assert all(RANK[stage] > RANK["graph"] for stage in found)
    finally:
        fake.unlink()


def test_import_onnxprune_does_not_import_torch():
    code = "import sys, onnxprune; onnxprune.analyze; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "onnxprune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prune" in out.stdout and "analyze" in out.stdout


def test_no_top_level_cli_package():
    root = PACKAGE.parent
    assert not (root / "cli" / "__init__.py").exists() and not (root / "cli" / "main.py").exists()


def test_version_comes_from_the_installed_metadata():
    from importlib.metadata import version
    assert onnxprune.__version__ == version("onnxprune")


# ------------------------------------------------------------------------------------------ options
def _prune_options():
    command = main.commands["prune"]
    return {p.name: p for p in command.params}


def test_cli_defaults_are_the_dataclass_defaults():
    params = _prune_options()
    for group in options.GROUPS:
        for f in dataclasses.fields(group):
            if not f.metadata.get("cli", True):
                assert f.name not in params or f.name == "keep", f.name
                continue
            p = params[f.name]
            default = f.default.value if hasattr(f.default, "value") else f.default
            shown = None if p.default is None or type(p.default).__name__ == "Sentinel" else p.default
            assert shown == default, (f.name, p.default, default)
            assert p.help == f.metadata["help"]


def test_api_signature_defaults_are_the_dataclass_defaults():
    sig = inspect.signature(onnxprune.prune)
    defaults = options.flat_defaults()
    for name, default in defaults.items():
        assert name in sig.parameters, name
        got = sig.parameters[name].default
        assert got == default or (name == "keep" and got is None), (name, got, default)
    assert set(sig.parameters) - set(defaults) == {"model", "calibration", "quiet"}


def test_method_choices_come_from_the_registry():
    assert list(_prune_options()["method"].type.choices) == list(methods.method_names())
    assert methods.method_names() == ("greedy-local", "greedy-convex", "gfs", "greedy-omp", "greedy-taylor",
                                      "greedy-global", "greedy-combined", "taylor", "magnitude", "random")
    for name in methods.method_names():
        assert methods.get_method(name).name == name


def test_a_registered_method_is_accepted_everywhere(zoo_models):
    """Adding a method is one class: the API takes it by name (here, a method keeping the first channels)."""
    import numpy as np

    @methods.register
    class FirstChannels(methods.Method):
        name = "first-channels"
        needs_calibration = False

        def candidates(self, p):
            idx = np.arange(p.k)
            return [methods.Candidate(self.name, idx, np.ones(p.k), p.curve)]

    try:
        z = next(z for z in zoo_models if z.name == "chain" and z.exporter == "ts17")
        import zoo
        cal = {"input": zoo.random_input(z, 16, 0)["input"]}
        _, report = onnxprune.prune(str(z.path), cal, method="first-channels", keep_ratio=0.5)
        pruned = [g for g in report.groups if not g.frozen]
        assert pruned and all(g.kept == list(range(g.kept_count)) and g.method == "first-channels"
                              for g in pruned)
    finally:
        del methods._REGISTRY["first-channels"]


@pytest.mark.parametrize("option,value,flag", [
    ("batch_size", 0, "--batch-size"), ("holdout", 1.0, "--holdout"), ("max_positions", -1, "--max-positions"),
    ("seed", -1, "--seed"), ("global_samples", 0, "--global-samples"), ("image_size", -5, "--image-size"),
    ("round_to", 0, "--round-to"), ("min_channels", 0, "--min-channels"), ("flops", 1.5, "--flops"),
])
def test_bad_option_values_name_the_option(zoo_models, tmp_path, option, value, flag):
    z = next(z for z in zoo_models if z.name == "chain" and z.exporter == "ts17")
    kwargs = {"keep_ratio": 0.5, option: value} if option != "flops" else {option: value}
    with pytest.raises(options.OptionError) as exc:
        onnxprune.prune(str(z.path), None, method="magnitude", **kwargs)
    assert str(exc.value).startswith(f"{option}=")
    args = ["prune", str(z.path), "-o", str(tmp_path / "o.onnx"), "--method", "magnitude", flag, str(value)]
    if option != "flops":
        args += ["--keep-ratio", "0.5"]
    res = CliRunner().invoke(main, args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"onnxprune: error: {flag} {value}:"), \
        res.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_click_usage_errors_are_one_line(tmp_path):
    for args in (["prune"], ["prune", "m.onnx", "-o", "o.onnx", "--batch-size", "many"], ["nonsense"],
                 ["prune", "m.onnx", "-o", "o.onnx", "--method", "best"]):
        res = CliRunner().invoke(main, args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.stderr, (args, res.stderr)
