"""Real data from ../shared/data: accuracy floors for the real students, in a few minutes of CPU.

The teacher here is timm's tiny test_efficientnet: these tests check the pipeline on real images
(loading, training, export, INT8, benchmark metrics), not the teacher recipe.
"""

import pytest

from kdcompress.deploy.benchmark import benchmark_run
from kdcompress.runs.compress import compress
from kdcompress.train.config import CompressConfig

pytestmark = pytest.mark.realdata


def test_cifar3_resnet18_students_learn_and_survive_export_and_int8(shared_data, tmp_path):
    config = CompressConfig(
        dataset="cifar3", data_dir=str(shared_data), teacher="test_efficientnet", student="resnet18",
        epochs=4, teacher_epochs=3, int8=True, control="none", artifacts=str(tmp_path),
    )
    result = compress(config)
    models = result.manifest.to_dict()["models"]
    assert models["baseline"]["test_accuracy"] >= 0.65  # chance is 0.33
    assert models["student"]["test_accuracy"] >= 0.60
    for role in ("teacher", "baseline", "student"):
        export = models[role]["export"]
        assert export["max_abs_diff"] <= export["allowed_diff"] and export["same_top1"] >= 0.99
    int8 = models["int8"]
    assert models["student"]["onnx_bytes"] / int8["onnx_bytes"] >= 3.5
    assert models["student"]["test_accuracy"] - int8["test_accuracy"] <= 0.02
    bench = benchmark_run(result.run_dir, quick=True, gpu=False)
    assert all(m.agrees_with_manifest for m in bench.models.values())


def test_chest_xray_full_set_loads_and_a_student_beats_the_majority_class(chest_xray, tmp_path):
    config = CompressConfig(
        dataset="chest-xray", data_dir=str(chest_xray), teacher="test_efficientnet", student="resnet18",
        epochs=2, teacher_epochs=1, control="none", artifacts=str(tmp_path),
    )
    result = compress(config)
    manifest = result.manifest.to_dict()  # what the run loaded: every image of the set, once
    counts = manifest["dataset"]["counts"]
    assert counts["train"] + counts["val"] == 5216 and counts["test"] == 624
    assert manifest["dataset"]["classes"] == ["NORMAL", "PNEUMONIA"] and manifest["preprocessing"]["channels"] == 1
    baseline = manifest["models"]["baseline"]
    assert baseline["test_accuracy"] >= 0.70  # all-PNEUMONIA would score 390 / 624 = 0.625
    metrics = benchmark_run(result.run_dir, quick=True, gpu=False).models["baseline"].reference.metrics
    assert metrics["roc_auc"] >= 0.80 and metrics["sensitivity"] is not None and metrics["specificity"] is not None
