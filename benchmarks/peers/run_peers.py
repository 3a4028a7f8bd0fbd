"""Peer stage of benchmarks/bench_peers.py: the same loss-influence job with peer libraries.

Runs in the peers' own venv (made by ``benchmarks/peers/setup.sh``), never in the project's:
it imports only torch and the peers, never hf_pairdots.

    PEERS_PY benchmarks/peers/run_peers.py JOB.pt OUT.pt [--only NAME ...]

JOB.pt (written by bench_peers.py in the project's venv) holds the pooled features of the
training and test examples, their labels, the fine-tuned classifier's weight and bias, the
damping λ and the largest eigenvalue of the mean-loss Hessian. Every peer sees the same
problem: ``nn.Linear(384, 2)`` on the pooled features with those weights, loss = mean
cross-entropy, damping λ on the Hessian of the mean loss (captum: ``hessian_reg = λ·N``
because it builds the Hessian of the summed loss, see ../shared/PEERS.md).

OUT.pt: {name: {"scores": (Q, N) raw scores as the peer returns them (its sign and scale),
"seconds": wall time of construction + fit + scoring (after an untimed warm-up), "factor": the documented conversion to our
sign and scale, "api": the call, "error": None or the exception text}}. Peer APIs are called, not
copied.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


class Job:
    def __init__(self, path: str):
        job = torch.load(path)
        self.xtr, self.ytr = job["train_features"].float(), job["train_labels"].long()
        self.xte, self.yte = job["test_features"].float(), job["test_labels"].long()
        self.weight, self.bias = job["weight"].float(), job["bias"].float()
        self.damping = float(job["damping"])
        self.lambda_max = float(job["lambda_max"])
        self.work = Path(job["work_dir"])
        self.n, self.q = len(self.ytr), len(self.yte)

    def subset(self, n: int, q: int) -> "Job":
        """The first n training and q test examples (for the untimed warm-up)."""
        small = copy.copy(self)
        small.xtr, small.ytr, small.xte, small.yte = self.xtr[:n], self.ytr[:n], self.xte[:q], self.yte[:q]
        small.n, small.q = n, q
        return small

    def linear(self) -> nn.Linear:
        """A fresh ``nn.Linear`` with the fine-tuned classifier's weights (parameters: weight, bias)."""
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            lin.bias.copy_(self.bias)
        return lin.eval()

    def train_set(self) -> TensorDataset:
        return TensorDataset(self.xtr, self.ytr)

    def loader(self, batch_size: int | None = None) -> DataLoader:
        return DataLoader(self.train_set(), batch_size=batch_size or self.n, shuffle=False)


# ---------------------------------------------------------------------------------------------
# pyDVL 0.10: influences(x_test, y_test, x, y, mode=Up) -> (Q, N) = +g_test (H + λI)^-1 g_train
# ---------------------------------------------------------------------------------------------

def _pydvl(job: Job, make, batch_size=None):
    from pydvl.influence import InfluenceMode

    model = job.linear()
    fitted = make(model).fit(job.loader(batch_size))
    return fitted.influences(job.xte, job.yte, job.xtr, job.ytr, mode=InfluenceMode.Up)


def pydvl_direct(job):
    from pydvl.influence.torch import DirectInfluence
    return _pydvl(job, lambda m: DirectInfluence(m, F.cross_entropy, regularization=job.damping))


def pydvl_cg(job):
    from pydvl.influence.torch import CgInfluence
    return _pydvl(job, lambda m: CgInfluence(m, F.cross_entropy, regularization=job.damping, rtol=1e-6,
                                             atol=1e-10, maxiter=1000, warn_on_max_iteration=False))


def pydvl_lissa(job):
    from pydvl.influence.torch import LissaInfluence
    torch.manual_seed(0)
    return _pydvl(job, lambda m: LissaInfluence(m, F.cross_entropy, regularization=job.damping, maxiter=1000,
                                                scale=2 * (job.lambda_max + job.damping), rtol=1e-6,
                                                warn_on_max_iteration=False), batch_size=128)


def pydvl_arnoldi(job, woodbury=False):
    from pydvl.influence.torch import ArnoldiInfluence
    # use_woodbury=False (default) drops the part of g outside the top-rank eigenvectors; True adds
    # it back divided by λ, as our low-rank solver does
    return _pydvl(job, lambda m: ArnoldiInfluence(m, F.cross_entropy, regularization=job.damping, rank=50,
                                                  use_woodbury=woodbury))


def pydvl_nystroem(job):
    from pydvl.influence.torch import NystroemSketchInfluence
    torch.manual_seed(0)
    return _pydvl(job, lambda m: NystroemSketchInfluence(m, F.cross_entropy, regularization=job.damping, rank=50))


def pydvl_ekfac(job):
    from pydvl.influence import InfluenceMode
    from pydvl.influence.torch import EkfacInfluence

    model = nn.Sequential(job.linear())  # EK-FAC looks for Linear submodules (PEERS.md pitfall 11)
    fitted = EkfacInfluence(model, hessian_regularization=job.damping).fit(job.loader(256))
    return fitted.influences(job.xte, job.yte, job.xtr, job.ytr, mode=InfluenceMode.Up)


# ---------------------------------------------------------------------------------------------
# dattri 0.3: attribute(train_loader, test_loader) -> (N, Q) = +g_train (H + λI)^-1 g_test
# ---------------------------------------------------------------------------------------------

def _dattri(job: Job, make, model=None, layer_name=None):
    from dattri.task import AttributionTask

    model = model if model is not None else job.linear()

    def loss_func(params, data):
        x, y = data
        logits = torch.func.functional_call(model, params, (x,))
        return F.cross_entropy(logits, y.long())  # y.long(): the LiSSA collate casts labels to float

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    attributor = make(task)
    attributor.cache(job.loader())  # batch_size = N: one full batch, so H is the full-data Hessian (pitfall 5)
    test = DataLoader(TensorDataset(job.xte, job.yte), batch_size=job.q, shuffle=False)
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
        return attributor.attribute(job.loader(), test).T


def dattri_explicit(job):
    from dattri.algorithm.influence_function import IFAttributorExplicit
    return _dattri(job, lambda t: IFAttributorExplicit(t, regularization=job.damping))


def dattri_cg(job, max_iter):
    from dattri.algorithm.influence_function import IFAttributorCG
    return _dattri(job, lambda t: IFAttributorCG(t, regularization=job.damping, max_iter=max_iter))


def dattri_lissa(job):
    from dattri.algorithm.influence_function import IFAttributorLiSSA
    scaling = 2 * (job.lambda_max + job.damping)
    # effective damping is damping * scaling (PEERS.md pitfall 4)
    return _dattri(job, lambda t: IFAttributorLiSSA(t, batch_size=128, recursion_depth=1000,
                                                    damping=job.damping / scaling, scaling=scaling))


def dattri_datainf(job):
    from dattri.algorithm.influence_function import IFAttributorDataInf
    return _dattri(job, lambda t: IFAttributorDataInf(t, regularization=job.damping))


# ---------------------------------------------------------------------------------------------
# captum 0.9: influence((x, y)) -> (Q, N) = +g_test (H_sum + reg I)^-1 g_train, H of the SUMMED loss
# ---------------------------------------------------------------------------------------------

def _captum(job: Job, cls, **kwargs):
    model = job.linear()
    ckpt = job.work / "captum_linear.pt"
    torch.save(model.state_dict(), ckpt)  # captum wants a checkpoint file path (pitfall 20)
    fn = cls(model, job.train_set(), str(ckpt), loss_fn=nn.CrossEntropyLoss(reduction="none"),
             batch_size=job.n, hessian_reg=job.damping * job.n, **kwargs)
    return fn.influence((job.xte, job.yte))


def captum_naive(job):
    from captum.influence import NaiveInfluenceFunction
    p = job.weight.numel() + job.bias.numel()
    return _captum(job, NaiveInfluenceFunction, projection_dim=p)  # rank P: exact H


def captum_arnoldi(job):
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction  # not exported
    return _captum(job, ArnoldiInfluenceFunction, arnoldi_dim=200, projection_dim=100)


# ---------------------------------------------------------------------------------------------
# kronfluence 1.0.1: pairwise scores (Q, N) = +g_test (F_ekfac + λI)^-1 g_train
# ---------------------------------------------------------------------------------------------

def kronfluence_ekfac(job, empirical: bool = False):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class LinearTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:  # true Fisher: labels drawn from the model (seeded below)
                with torch.no_grad():
                    y = torch.distributions.Categorical(logits=logits.detach()).sample()
            return F.cross_entropy(logits, y, reduction="sum")  # kronfluence wants a summed loss (pitfall 14)

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def get_influence_tracked_modules(self):
            return ["0"]

    torch.manual_seed(0)
    task = LinearTask()
    model = prepare_model(nn.Sequential(job.linear()), task)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        analyzer = Analyzer("bench_peers", model, task, cpu=True, disable_tqdm=True,
                            output_dir=str(job.work / "kronfluence"))
        analyzer.fit_all_factors("ekfac", job.train_set(), per_device_batch_size=256, overwrite_output_dir=True,
                                 factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=empirical))
        analyzer.compute_pairwise_scores("scores", "ekfac", TensorDataset(job.xte, job.yte), job.train_set(),
                                         per_device_query_batch_size=job.q, per_device_train_batch_size=256,
                                         score_args=ScoreArguments(damping_factor=job.damping),
                                         overwrite_output_dir=True)
    return analyzer.load_pairwise_scores("scores")["all_modules"]


# name: (runner, documented factor to our sign/scale, API in short)
PEERS = {
    "pyDVL Direct": (pydvl_direct, -1, "DirectInfluence(m, cross_entropy, regularization=λ).fit(dl_N)"),
    "pyDVL CG": (pydvl_cg, -1, "CgInfluence(..., regularization=λ, rtol=1e-6, maxiter=1000)"),
    "pyDVL LiSSA": (pydvl_lissa, -1, "LissaInfluence(..., regularization=λ, maxiter=1000, scale=2(λmax+λ)), batch 128"),
    "pyDVL Arnoldi r=50": (pydvl_arnoldi, -1, "ArnoldiInfluence(..., regularization=λ, rank=50)"),
    "pyDVL Arnoldi r=50, use_woodbury": (lambda j: pydvl_arnoldi(j, True), -1,
                                         "ArnoldiInfluence(..., regularization=λ, rank=50, use_woodbury=True)"),
    "pyDVL Nyström r=50": (pydvl_nystroem, -1, "NystroemSketchInfluence(..., regularization=λ, rank=50)"),
    "pyDVL EK-FAC": (pydvl_ekfac, -1, "EkfacInfluence(Sequential(m), hessian_regularization=λ), batch 256"),
    "dattri explicit": (dattri_explicit, -1, "IFAttributorExplicit(task, regularization=λ); cache(dl_N)"),
    "dattri CG (max_iter=30)": (lambda j: dattri_cg(j, 30), -1, "IFAttributorCG(task, regularization=λ, max_iter=30)"),
    "dattri CG (max_iter=100)": (lambda j: dattri_cg(j, 100), -1, "IFAttributorCG(task, regularization=λ, max_iter=100)"),
    "dattri LiSSA": (dattri_lissa, -1, "IFAttributorLiSSA(task, batch_size=128, recursion_depth=1000, "
                                       "scaling=2(λmax+λ), damping=λ/scaling)"),
    "dattri DataInf": (dattri_datainf, -1, "IFAttributorDataInf(task, regularization=λ)"),
    "captum Naive": (captum_naive, "-N", "NaiveInfluenceFunction(..., projection_dim=P, hessian_reg=λN)"),
    "captum Arnoldi": (captum_arnoldi, "-N", "ArnoldiInfluenceFunction(..., arnoldi_dim=200, projection_dim=100, "
                                             "hessian_reg=λN)"),
    "kronfluence EK-FAC": (kronfluence_ekfac, -1, "strategy='ekfac' (sampled-label Fisher), damping_factor=λ"),
    "kronfluence EK-FAC (emp. Fisher)": (lambda j: kronfluence_ekfac(j, True), -1,
                                         "strategy='ekfac', use_empirical_fisher=True, damping_factor=λ"),
}


def warm_up(job: Job) -> None:
    """Import every peer and run one cheap method of each on 64 examples, untimed, so that the timed
    runs do not pay imports and first calls (the project's stage warms up the same way)."""
    small = job.subset(64, 2)
    for runner in (pydvl_direct, dattri_explicit, captum_naive, kronfluence_ekfac):
        try:
            runner(small)
        except Exception:  # the timed run reports it
            pass


def versions() -> dict:
    from importlib.metadata import version
    return {name: version(name) for name in ("torch", "numpy", "pyDVL", "dattri", "captum", "kronfluence")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("job")
    p.add_argument("out")
    p.add_argument("--only", nargs="*", default=None, help="names of PEERS to run (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the same as the project's stage)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    job = Job(a.job)
    warm_up(job)
    results = {"_versions": versions()}
    for name, (runner, factor, api) in PEERS.items():
        if a.only and name not in a.only:
            continue
        factor = -job.n if factor == "-N" else factor
        start = time.perf_counter()
        try:
            scores = torch.as_tensor(runner(job)).detach().float()
            if scores.shape != (job.q, job.n):
                raise ValueError(f"unexpected shape {tuple(scores.shape)}")
            error = None
        except Exception as err:  # one peer failing must not stop the others; the error is reported
            scores, error = None, f"{type(err).__name__}: {err}".splitlines()[0][:200]
            traceback.print_exc(file=sys.stderr)
        seconds = time.perf_counter() - start
        results[name] = {"scores": scores, "seconds": seconds, "factor": factor, "api": api, "error": error}
        print(f"{name}: {seconds:.1f} s" + (f" ERROR {error}" if error else ""), flush=True)
        torch.save(results, a.out)  # after every peer, so a killed run keeps what it had
    torch.save(results, a.out)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
