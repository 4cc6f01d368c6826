"""The entry points answer `--help` without importing torch, peft or the data libraries, and the package's lazy names
still load, and register MEDSA with PEFT, whatever is imported first."""

import importlib
import re

import pytest

from helpers import REPO_ROOT, run_python
from medsa_peft.cli import build_parser

HEAVY_MODULES = ("torch", "peft", "datasets", "monai", "SimpleITK", "nibabel", "pydicom")
SUBPACKAGES = sorted(init.parent.name for init in REPO_ROOT.glob("medsa_peft/*/__init__.py"))
PACKAGES = ["medsa_peft", *(f"medsa_peft.{name}" for name in SUBPACKAGES)]


def subcommands() -> list[str]:
    """The subcommands of `medsa-peft`, as its usage line lists them: `{predict,convert-official,...}`."""
    return re.search(r"\{(.+?)\}", build_parser().format_usage())[1].split(",")


@pytest.mark.parametrize(
    "run, argv",
    [
        ("runpy.run_path('examples/train.py', run_name='__main__')", ["examples/train.py", "--help"]),
        ("runpy.run_module('medsa_peft.cli', run_name='__main__')", ["medsa-peft", "--help"]),
        *(
            ("runpy.run_module('medsa_peft.cli', run_name='__main__')", ["medsa-peft", command, "--help"])
            for command in subcommands()
        ),
    ],
)
def test_help_imports_no_heavy_library(run, argv):
    printed = run_python(
        f"""
        import runpy, sys
        sys.argv = {argv!r}
        try:
            {run}
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        print("imported:", *sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))
        """
    ).stdout
    assert "usage:" in printed
    assert printed.splitlines()[-1] == "imported:"


@pytest.mark.parametrize(
    "first",
    [
        "import medsa_peft; import peft",  # as the README and model cards say
        "import peft; import medsa_peft",
        "import medsa_peft.compat",  # peft imported by a module of the package
        "from medsa_peft import MedSAConfig",
    ],
)
def test_medsa_is_registered_whatever_is_imported_first(first):
    printed = run_python(
        f"""
        {first}
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
        print(PEFT_TYPE_TO_CONFIG_MAPPING["MEDSA"].__name__, PEFT_TYPE_TO_TUNER_MAPPING["MEDSA"].__name__)
        print(PEFT_TYPE_TO_PREFIX_MAPPING["MEDSA"])
        """
    ).stdout
    assert printed.split() == ["MedSAConfig", "MedSAModel", "medsa_"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_loads_and_is_listed(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        getattr(module, name)  # an AttributeError names a wrong entry of the package's export list
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'missing'"):
        module.missing
