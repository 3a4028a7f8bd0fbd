import math

from hf_pairdots.metrics import METRICS_DIR, load_accuracy


def test_accuracy_by_hand():
    accuracy = load_accuracy()
    # 3 of 4 right (the third is wrong)
    assert accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == {"accuracy": 0.75}
    # weights 1+2+4 of 1+2+3+4 right
    result = accuracy.compute(
        predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], sample_weight=[1, 2, 3, 4]
    )
    assert math.isclose(result["accuracy"], 0.7)
    assert accuracy.compute(predictions=[2, 2], references=[2, 1], normalize=False) == {
        "accuracy": 1.0
    }


def test_accuracy_batches():
    accuracy = load_accuracy()
    accuracy.add_batch(predictions=[1, 1], references=[1, 0])
    accuracy.add_batch(predictions=[3], references=[3])
    assert math.isclose(accuracy.compute()["accuracy"], 2 / 3)


def test_script_is_named_like_its_folder():
    assert (METRICS_DIR / "accuracy" / "accuracy.py").is_file()
