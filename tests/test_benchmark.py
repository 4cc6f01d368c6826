"""benchmarks/: a short CPU run of benchmark.py end to end, the ratios of its table, and op_counts.py."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_script():
    yield load_script("benchmark")
    del sys.modules["benchmark"]


@pytest.fixture
def op_counts():
    yield load_script("op_counts")
    del sys.modules["op_counts"]


def test_cpu_run_writes_every_row_and_the_table(benchmark_script, tmp_path):
    output = tmp_path / "cpu.json"
    variants = "train:reference,train:medsa-fused,train:lora,infer:sam"
    benchmark_script.main(["--preset", "cpu", "--variants", variants, "--steps", "1", "--warmup", "0", "--depth", "2",
                           "--output", str(output)])

    payload = json.loads(output.read_text())
    assert payload["agreement"]["fused_vs_reference"] < 1e-4
    rows = {row["variant"]: row for row in payload["rows"]}
    assert list(rows) == ["train:reference", "train:medsa-fused", "train:lora", "infer:sam"]
    assert all("error" not in row for row in rows.values()), rows
    assert all(row["images_per_s"] > 0 and row["peak_bytes"] > 0 for row in rows.values())
    assert rows["train:medsa-fused"]["trainable_percent"] > rows["train:lora"]["trainable_percent"] > 0
    assert rows["infer:sam"]["trainable_percent"] == 0
    assert "train:medsa-fused" in payload["table"]


def row(benchmark_script, name: str, images_per_s: float, peak_mib: float) -> dict:
    variant = benchmark_script.ALL_VARIANTS[name]
    return {"variant": name, "task": variant.task, "method": variant.method, "volumetric": variant.volumetric,
            "compiled": variant.compiled, "images_per_s": images_per_s, "peak_bytes": peak_mib * 2**20,
            "trainable_percent": 1.0, "host_percent": 50.0}


def test_ratios_compare_with_the_reference_and_with_lora_compiled_the_same_way(benchmark_script):
    rows = [
        row(benchmark_script, "train:reference", 10.0, 400),
        row(benchmark_script, "train:lora", 20.0, 200),
        row(benchmark_script, "train:lora+compile", 25.0, 200),
        row(benchmark_script, "train:lora+cudagraphs", 40.0, 250),
        row(benchmark_script, "train:medsa-fused+cudagraphs", 60.0, 100),
        row(benchmark_script, "train:medsa-fused+compile-blocks", 35.0, 100),
        {"variant": "train:full", "error": "out of memory"},
        row(benchmark_script, "infer:sam", 50.0, 100),
        row(benchmark_script, "infer:medsa-fused+compile", 100.0, 100),
    ]
    lines = {line.split()[0]: line.split()[1:] for line in benchmark_script.report(rows).splitlines()[2:]}

    # img/s, x ref, x LoRA, x SAM, peak MiB, mem x LoRA, train %, host %
    assert lines["train:medsa-fused+cudagraphs"] == ["60.00", "6.00", "1.50", "-", "100", "0.40", "1.00", "50"]
    # no LoRA+compile-blocks row: LoRA+compile is the baseline; no SamModel+compile row: eager SamModel
    assert lines["train:medsa-fused+compile-blocks"][:3] == ["35.00", "3.50", "1.40"]
    assert lines["infer:medsa-fused+compile"][:4] == ["100.00", "-", "-", "2.00"]
    assert lines["train:full"] == ["out", "of", "memory"]


def test_op_counts_of_vit_b_on_the_meta_device(op_counts):
    counts = op_counts.count("medsa-fused", batch=1)

    assert counts["image-encoder layers"] > counts["decoder two-way blocks"] > counts["rest of the mask decoder"]
    assert counts["rest of the mask decoder"] > counts["prompt encoder"] > 0 and counts["patch embedding, neck"] > 0
    left_eager = {name: sum(n for part, n in counts.items() if part not in parts)
                  for name, parts in op_counts.COMPILED.items()}
    # the decoder compiled whole leaves the stem, the neck and the loss: under 1% of the step's calls
    assert left_eager["whole decoder"] < 0.01 * sum(counts.values()) < left_eager["blocks"]
