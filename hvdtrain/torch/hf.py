"""Hugging Face ``transformers`` models in hvdtrain's torch loop.

``ht.fit``, ``ht.evaluate`` and ``log_model`` call ``model(inputs)`` with one tensor and take
logits back; a transformers model takes ``input_ids=`` and ``attention_mask=`` and returns a
``ModelOutput``. ``Logits`` adapts the one to the other and keeps the transformers model as
``.model`` (for ``save_pretrained``). It lives in hvdtrain, not in a script, so a model logged
with ``mlflow.pytorch`` (pickled) loads wherever hvdtrain and transformers are installed.
"""

from __future__ import annotations

import torch
from torch import nn


class Logits(nn.Module):
    """``model(input_ids=ids, attention_mask=ids != pad_token_id).logits``; no mask when
    ``pad_token_id`` is None (windows of a causal LM have no padding)."""

    def __init__(self, model: nn.Module, pad_token_id: int | None = None):
        super().__init__()
        self.model, self.pad_token_id = model, pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.long()
        mask = None if self.pad_token_id is None else (input_ids != self.pad_token_id).long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits
