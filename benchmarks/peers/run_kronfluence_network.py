"""Peer side of bench_kfac's whole-network comparison: kronfluence 1.0.1 EK-FAC over every
nn.Linear of the fine-tuned MiniLM-L6, on the token tensors of JOB.pt (run in the peers' venv).

    PEERS_PYTHON benchmarks/peers/run_kronfluence_network.py JOB.pt OUT.pt

Writes ``{"scores": (Q, N) +g_test (F_ekfac + λI)^-1 g_train (kronfluence's sign, PEERS.md),
"fit_seconds", "score_seconds", "versions"}``. The Fisher uses labels sampled from the model
(kronfluence's default); the loss is summed over the batch (kronfluence's convention), padding
masked by ``get_attention_mask``.
"""

import sys
import tempfile
import time
from importlib.metadata import version

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import AutoModelForSequenceClassification

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Rows(Dataset):
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


def main(job_path: str, out_path: str) -> None:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    torch.set_num_threads(1)
    job = torch.load(job_path)

    class SequenceClassification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(**{k: batch[k] for k in INPUTS}).logits.float()
            if not sample:
                return F.cross_entropy(logits, batch["labels"], reduction="sum")
            with torch.no_grad():
                sampled = torch.multinomial(logits.softmax(-1), 1).flatten()
            return F.cross_entropy(logits, sampled, reduction="sum")

        def compute_measurement(self, batch, model):
            logits = model(**{k: batch[k] for k in INPUTS}).logits.float()
            return F.cross_entropy(logits, batch["labels"], reduction="sum")

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    task = SequenceClassification()
    model = AutoModelForSequenceClassification.from_pretrained(job["model_dir"]).eval()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as work:
        analyzer = Analyzer("kfac_network", model, task, cpu=True, disable_tqdm=True, output_dir=work)
        start = time.perf_counter()
        analyzer.fit_all_factors("ekfac", Rows(job["train"]), per_device_batch_size=32, overwrite_output_dir=True,
                                 factor_args=FactorArguments(strategy="ekfac"))
        fit = time.perf_counter() - start
        start = time.perf_counter()
        analyzer.compute_pairwise_scores("scores", "ekfac", Rows(job["query"]), Rows(job["train"]),
                                         per_device_query_batch_size=len(job["query"]["labels"]),
                                         per_device_train_batch_size=32, overwrite_output_dir=True,
                                         score_args=ScoreArguments(damping_factor=job["damping"]))
        score = time.perf_counter() - start
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    torch.save({"scores": scores, "fit_seconds": fit, "score_seconds": score,
                "versions": {n: version(n) for n in ("torch", "kronfluence", "transformers")}}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
