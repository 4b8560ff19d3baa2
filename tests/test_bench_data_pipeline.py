"""`python -m bench.data_pipeline` runs end to end (tiny sizes; figures come from the bench)."""

import math

from bench.data_pipeline import main, run


def test_data_pipeline_bench_reports_positive_rates(capsys):
    rates = run(batches=2, windows=2, warmup=1, folder_images=40, image_size=16, batch_size=8)
    assert sorted(rates) == [
        "folder 40 JPEG 16px b=8 workers=0",
        "folder 40 JPEG 16px b=8 workers=2",
        "mnist5k b=8 workers=0",
    ]
    for pipeline, step in rates.values():  # images/s of the pipeline and of the step
        assert math.isfinite(pipeline) and pipeline > 0 and math.isfinite(step) and step > 0
    args = ["--batches", "1", "--windows", "1", "--warmup", "0", "--folder-images", "20"]
    args.append("--no-step")
    assert main([*args, "--image-size", "8", "--workers", "0", "--batch-size", "4"]) == 0
    assert "images/s" in capsys.readouterr().out
