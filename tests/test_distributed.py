"""Issue #4: the training-side scoring split over processes and gathered by id (cases C08, C30)."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_pairdots.distributed import gather_by_id, reassemble, shard, sharded_train_influence

SCRIPT = textwrap.dedent('''
    """Explain a few queries of a tiny BERT; rank 0 writes the records. argv: out_dir n_train..."""
    import json, random, sys, time
    from pathlib import Path

    import datasets, torch
    from accelerate import PartialState

    from hf_pairdots.arguments import ExplainArguments, SolverOptions
    from hf_pairdots.callback import explain_dataset
    from hf_pairdots.distributed import is_distributed, rank_and_world_size, sharded_train_influence
    from hf_pairdots.loss import make_train_loss, prepare_data
    from hf_pairdots.modeling import influence_mode
    from hf_pairdots.models import load_tokenizer, tiny_bert

    WORDS = "good bad movie film great terrible plot actor boring fun story slow nice awful".split()

    def texts(n, seed):
        rng = random.Random(seed)
        return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]

    def main():
        PartialState()  # initialises the process group under accelerate launch / torchrun
        torch.set_num_threads(1)
        out = Path(sys.argv[1])
        rank, world = rank_and_world_size()
        tok = load_tokenizer()
        args = ExplainArguments(queries="all", max_queries=2, top_k=3, max_length=16, batch_size=4,
                                solver=SolverOptions(solver="cg", damping=0.5, cg_max_iter=20))
        for spec in sys.argv[2:]:
            timing = spec.startswith("time:")
            n = int(spec.split(":")[-1])
            train_texts = texts(n, seed=n)
            train = datasets.Dataset.from_dict({"text": train_texts, "label": [i % 2 for i in range(n)]})
            model = tiny_bert(seed=0)
            if timing:  # wall time of the streamed scoring alone, Q=4 queries
                with influence_mode(model) as m:
                    objective = make_train_loss(m, "head")
                    data = prepare_data(objective, tok, train_texts, train["label"], batch_size=8, max_length=16)
                    s_test = torch.randn(4, objective.params.numel, generator=torch.Generator().manual_seed(0))
                    if is_distributed():
                        torch.distributed.barrier()
                    start = time.perf_counter()
                    scores = sharded_train_influence(objective, data, s_test)
                    seconds = time.perf_counter() - start
                if rank == 0:
                    (out / f"time-{n}.json").write_text(json.dumps({"world": world, "seconds": seconds,
                                                                    "scores": scores.tolist()}))
                continue
            dev = datasets.Dataset.from_dict({"text": texts(3, seed=1000 + n), "label": [0, 1, 0]})
            target = out / f"n{n}"
            summary = explain_dataset(model, tok, train, dev, args, target)
            (out / f"summary-{n}-rank{rank}.json").write_text(json.dumps(summary, default=str))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # gloo aborts at exit otherwise

    if __name__ == "__main__":
        main()
''')

TRAINER_SCRIPT = textwrap.dedent('''
    """A Trainer run with PairDotsCallback attached. argv: spec.json (out, train, dev, explain args).

    Every rank records the files it creates, renames or opens for writing under ``out`` while
    training and explaining (a ``sys.addaudithook`` hook; pyarrow's own writes are not seen),
    then writes ``rank<R>.json``. Rank 0 saves the final model into ``out/final``.
    """
    import json, os, sys
    from pathlib import Path

    import datasets, torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_pairdots.arguments import ExplainArguments
    from hf_pairdots.callback import PairDotsCallback, explain_dataset
    from hf_pairdots.distributed import rank_and_world_size
    from hf_pairdots.models import load_tokenizer, tiny_bert
    from hf_pairdots.training import tokenize_dataset

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def main():
        spec = json.loads(Path(sys.argv[1]).read_text())
        out = Path(spec["out"])
        writes, recording = [], [True]

        def audit(event, args):
            if not recording[0] or event not in ("open", "os.rename", "os.mkdir", "os.remove"):
                return
            path = args[1] if event == "os.rename" else args[0]
            if event == "open":
                mode, flags = args[1], args[2]
                if not (any(c in (mode or "") for c in "wax+") or (mode is None and flags & WRITE_FLAGS)):
                    return
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(str(out)):
                writes.append([event, os.path.relpath(os.fsdecode(path), out)])

        sys.addaudithook(audit)
        torch.set_num_threads(1)
        tok = load_tokenizer()
        train = datasets.Dataset.from_dict(spec["train"])
        dev = datasets.Dataset.from_dict(spec["dev"])
        args = TrainingArguments(output_dir=str(out), max_steps=10, per_device_train_batch_size=2, learning_rate=3e-2,
                                 use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", seed=0)
        trainer = Trainer(model=tiny_bert(seed=0), args=args, train_dataset=tokenize_dataset(train, tok, 16),
                          data_collator=DataCollatorWithPadding(tok), processing_class=tok)
        explain_args = ExplainArguments.from_dict(spec["args"])
        callback = PairDotsCallback.attach(trainer, dev, train_dataset=train, args=explain_args)
        trainer.train()
        # The DDP-wrapped module explains the same (influence_mode unwraps it).
        explain_dataset(trainer.model_wrapped, tok, train, dev, explain_args, out / "wrapped")
        recording[0] = False
        rank, world = rank_and_world_size()
        trainer.save_model(str(out / "final"))  # writes on rank 0 only (args.should_save)
        info = {"world": world, "wrapped": type(trainer.model_wrapped).__name__, "writes": writes,
                "summary": callback.last_summary,
                "logged": [e for e in trainer.state.log_history if "pairdots/queries" in e]}
        (out / f"rank{rank}.json").write_text(json.dumps(info))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # gloo aborts at exit otherwise

    if __name__ == "__main__":
        main()
''')

SIZES = (12, 11)  # batches of 4: 3 batches either way, 2 on rank 0 and 1 on rank 1; 11 leaves one short


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher() -> list[str] | None:
    exe = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    if os.path.exists(exe):
        return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return None


def _run(cmd, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _records(folder):
    return [json.loads(line) for line in (folder / "explanations.jsonl").read_text().splitlines() if line.strip()]


# --- unit: shard + gather in one process ------------------------------------------------------

def test_shard_round_robin_uneven():
    items = list(range(7))
    shards = [shard(items, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for s in shards for x in s) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_reassemble_each_id_once_in_order_c30():
    """C30: 1,001 examples on 2 ranks, the last shard padded by repeating ids -> 1,001 entries."""
    n, q = 1001, 2
    truth = torch.randn(q, n, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    pieces = []
    for rank in range(2):
        ids = perm[rank::2]
        if len(ids) < 501:  # a padding sampler repeats the first ids to even the shards
            ids = torch.cat([ids, perm[:501 - len(ids)]])
        pieces.append((ids, truth[:, ids]))
    assert sum(len(i) for i, _ in pieces) == 1002
    out = reassemble(pieces, n)
    assert out.shape == (q, n)
    torch.testing.assert_close(out, truth, rtol=0, atol=0)
    # stable: the order of the pieces does not matter
    torch.testing.assert_close(reassemble(pieces[::-1], n), truth, rtol=0, atol=0)


def test_reassemble_missing_or_bad_ids_raise():
    with pytest.raises(ValueError, match="missing"):
        reassemble([(torch.tensor([0, 2]), torch.zeros(1, 2))], 3)
    with pytest.raises(ValueError, match="outside"):
        reassemble([(torch.tensor([0, 3]), torch.zeros(1, 2))], 3)
    # empty shard (more ranks than batches) is fine
    out = reassemble([(torch.tensor([1, 0]), torch.tensor([[1.0, 0.0]])), (torch.empty(0), torch.zeros(1, 0))], 2)
    assert out.tolist() == [[0.0, 1.0]]


def test_single_process_is_identity(tok):
    from hf_pairdots.influence import train_influence
    from hf_pairdots.loss import make_train_loss, prepare_data
    from hf_pairdots.modeling import influence_mode
    from hf_pairdots.models import tiny_bert

    assert gather_by_id(torch.tensor([2, 0, 1]), torch.tensor([[2.0, 0.0, 1.0]]), 3).tolist() == [[0.0, 1.0, 2.0]]
    with influence_mode(tiny_bert(seed=0)) as model:
        objective = make_train_loss(model, "head")
        texts = ["good movie", "a bad plot indeed", "fun", "slow and boring story", "nice"]
        data = prepare_data(objective, tok, texts, [0, 1, 0, 1, 0], batch_size=2, max_length=16)
        s = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(sharded_train_influence(objective, data, s), train_influence(objective, data, s))


# --- real: two processes vs one -----------------------------------------------------------------

def test_two_processes_equal_one_process(tmp_path):
    launcher = _launcher()
    if launcher is None:
        pytest.skip("`accelerate` launcher not found next to the Python interpreter")
    script = tmp_path / "explain_script.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    sizes = [str(n) for n in SIZES]
    _run([sys.executable, str(script), str(one), *sizes], tmp_path)
    _run([*launcher, str(script), str(two), *sizes], tmp_path)
    for n in SIZES:
        a, b = _records(one / f"n{n}"), _records(two / f"n{n}")
        assert [r["query_index"] for r in a] == [r["query_index"] for r in b] and len(a) == 2
        for ra, rb in zip(a, b):
            for la, lb in zip(ra["labels"], rb["labels"], strict=True):
                assert [t["train_index"] for t in la["top_train"]] == [t["train_index"] for t in lb["top_train"]]
                for ta, tb in zip(la["top_train"], lb["top_train"]):
                    assert ta["influence"] == pytest.approx(tb["influence"], abs=1e-5, rel=1e-5)
        # every rank took part and got rank 0's summary; only rank 0 wrote the store
        s0 = json.loads((two / f"summary-{n}-rank0.json").read_text())
        s1 = json.loads((two / f"summary-{n}-rank1.json").read_text())
        assert s0 == s1 and s0["queries"] == 2


@pytest.mark.usefixtures("one_torch_thread")  # the launched ranks run one thread: same reduction order
def test_trainer_with_callback_two_processes_equals_one_process(tmp_path):
    """A Trainer under ``accelerate launch`` with 2 CPU processes (DDP over gloo) explains with
    PairDotsCallback attached; the records equal a 1-process explain_dataset on the saved
    weights, every training id appears once per list (11 examples: uneven shards), and only
    rank 0 wrote."""
    launcher = _launcher()
    if launcher is None:
        pytest.skip("`accelerate` launcher not found next to the Python interpreter")
    import datasets

    from hf_pairdots.arguments import ExplainArguments, SolverOptions
    from hf_pairdots.callback import explain_dataset
    from hf_pairdots.models import load_classifier, load_tokenizer

    rng = random.Random(0)
    words = "good bad movie film great terrible plot actor boring fun story slow nice awful".split()
    texts = sorted({" ".join(rng.choice(words) for _ in range(rng.randint(3, 7))) for _ in range(14)})
    assert len(texts) == 14
    labels = [int(sum(w in ("good", "great", "fun", "nice") for w in t.split()) > 0) for t in texts]
    train = {"text": texts[:11], "label": labels[:11]}
    dev = {"text": texts[11:], "label": labels[11:]}
    args = ExplainArguments(queries="all", top_k=11, max_length=16, batch_size=4, saliency_target="margin",
                            solver=SolverOptions(solver="cg", cg_max_iter=50))  # damping: from the eigenvalue estimates
    out = tmp_path / "trainer"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "train": train, "dev": dev, "args": args.to_dict()}))
    script = tmp_path / "trainer_script.py"
    script.write_text(TRAINER_SCRIPT)
    _run([*launcher, str(script), str(spec)], tmp_path)

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["wrapped"] == "DistributedDataParallel"
    assert ranks[0]["summary"] == ranks[1]["summary"] and ranks[0]["summary"]["queries"] == 3
    for r in ranks:  # Trainer.log ran on each rank, as the Trainer's own logs do
        assert [{k: v for k, v in e.items() if k.startswith("pairdots/")} for e in r["logged"]] == [
            {"pairdots/" + k: v for k, v in ranks[0]["summary"].items()}]
    assert ranks[1]["writes"] == []
    written = {path for _, path in ranks[0]["writes"]}
    for name in ("explanations.jsonl", "meta.json", "report.html", "explain_args.json"):
        assert any(p.startswith(os.path.join("pairdots", "")) and name in p for p in written), name
        assert any(p.startswith(os.path.join("wrapped", "")) and name in p for p in written), name

    one = tmp_path / "one"
    explain_dataset(load_classifier(str(out / "final")), load_tokenizer(str(out / "final")),
                    datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(dev), args, one)
    expected = _records(one)
    assert [r["query_index"] for r in expected] == [0, 1, 2]
    for folder in (out / "pairdots", out / "wrapped"):
        got = _records(folder)
        assert [r["query_index"] for r in got] == [0, 1, 2]
        for ra, rb in zip(expected, got):
            assert ra["probabilities"] == pytest.approx(rb["probabilities"], abs=1e-6)
            for la, lb in zip(ra["labels"], rb["labels"], strict=True):
                ids = [t["train_index"] for t in lb["top_train"]]
                assert sorted(ids) == list(range(11))  # each training id exactly once
                assert [t["train_index"] for t in la["top_train"]] == ids
                for ta, tb in zip(la["top_train"], lb["top_train"]):
                    assert ta["influence"] == pytest.approx(tb["influence"], rel=1e-5, abs=1e-9)
                    assert ta["word_influence"] == pytest.approx(tb["word_influence"], rel=1e-5, abs=1e-9)
