"""A classification task whose loss is NaN on chosen training steps (for fault-injection tests).

Selected in YAML with ``type: "nan_task:NaNTask"``; the steps are read from the environment
variable POLYTASK_TEST_NAN_CALLS (comma-separated loss-call numbers, 1-based).
"""

import os

import torch

from polytask.tasks.classification import ClassificationTask


class NaNTask(ClassificationTask):
    type_name = "nan-test"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0
        self.bad = {int(x) for x in os.environ.get("POLYTASK_TEST_NAN_CALLS", "").split(",") if x}

    def loss(self, out, batch):
        loss = super().loss(out, batch)
        if out.requires_grad:  # training calls only, not evaluation
            self.calls += 1
            if self.calls in self.bad:
                return loss * torch.tensor(float("nan"))
        return loss


class PoisonTask(ClassificationTask):
    """Classification whose loss is NaN for any batch holding an example whose text contains
    POISON (so the offending examples can be located one by one)."""

    type_name = "poison-test"

    def encode(self, examples, tokenizer, max_length):
        feats = super().encode(examples, tokenizer, max_length)
        for f, e in zip(feats, examples):
            f["poison"] = "POISON" in e.fields["text"]
        return feats

    def collate(self, feats, pad_id):
        batch = super().collate(feats, pad_id)
        batch["poison"] = torch.tensor([f["poison"] for f in feats])
        return batch

    def loss(self, out, batch):
        loss = super().loss(out, batch)
        return loss * torch.tensor(float("nan")) if bool(batch["poison"].any()) else loss
