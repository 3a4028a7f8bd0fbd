"""Fine-tuning and evaluation loops shared by the recipes (Accelerate-driven).

:func:`train_classifier` is a plain Accelerate loop (AdamW, linear decay, seeded), so the same
code runs on one CPU process here and on many GPUs with ``accelerate launch``. Accuracy comes
from the repo's own ``evaluate`` metric script (:func:`hf_pairdots.metrics.load_accuracy`),
which works offline.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from .modeling import predict_proba
from .metrics import load_accuracy


def tokenize_dataset(dataset, tokenizer, max_length: int = 128):
    """``text``/``label`` rows -> model inputs + ``labels`` (no padding: the collator pads).

    The raw texts are tokenised (``tokenizer(text)``): the ids that saliency and influence use
    too (:func:`~hf_pairdots.text.word_encoding`), for every kind of tokenizer."""
    def encode(batch):
        enc = tokenizer(list(batch["text"]), truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc
    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def train_classifier(model, tokenizer, train_dataset, *, epochs: float = 2, learning_rate: float = 5e-5,
                     batch_size: int = 16, max_length: int = 128, seed: int = 0, weight_decay: float = 0.01,
                     accelerator: Accelerator | None = None, show_progress: bool = True):
    """Fine-tune ``model`` on a ``text``/``label`` dataset with Accelerate; returns the unwrapped model
    (on the accelerator's device).

    Cost: ``epochs`` x len(train) forward + backward passes (the unit other costs are quoted in).
    The model is left in eval mode.
    """
    set_seed(seed)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    loader = DataLoader(tokenize_dataset(train_dataset, tokenizer, max_length), batch_size=batch_size, shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer), generator=torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    steps = math.ceil(epochs * len(loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    bar = tqdm(total=steps, disable=not (show_progress and accelerator.is_main_process), desc="train")
    step = 0
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= steps:
                break
    bar.close()
    model = accelerator.unwrap_model(model)
    return model.eval()


def accuracy(model, tokenizer, dataset, *, batch_size: int = 64, max_length: int = 128) -> float:
    """Accuracy of ``model`` (on any device) on a ``text``/``label`` dataset; an empty text is
    classified as ``"."``."""
    texts = [t if t.strip() else "." for t in dataset["text"]]
    predictions = predict_proba(model, tokenizer, texts, batch_size=batch_size, max_length=max_length).argmax(-1)
    return load_accuracy().compute(predictions=predictions.tolist(), references=list(dataset["label"]))["accuracy"]
