"""Run-folder operations that write a trained model in another format.

- :func:`export_adapter` (``lora.py``): one task's adapter and head of an ``adapters`` run;
- :func:`merge_lora` (``lora.py``): a causal LM with a LoRA adapter merged into its weights;
- :func:`export_hf` (``hf.py``): the shared encoder and every task as Hugging Face model
  folders, with a model card (``card.py``); ``polytask export --format hf``; for ``adapters``
  runs the encoder and each task's adapter, for ``causal_lm`` runs each task's PEFT adapter with
  its prompt and decoding settings (``llm.py``);
- :func:`export_onnx` (``onnx.py``): the encoder with every head as one ONNX graph;
  ``polytask export --format onnx``.

Each loads the run with :class:`polytask.predict.Predictor`; docs/export.md says what each
format holds.
"""

from __future__ import annotations

from polytask.export.hf import export_hf
from polytask.export.lora import export_adapter, merge_lora
from polytask.export.onnx import export_onnx

__all__ = ["export_adapter", "export_hf", "export_onnx", "merge_lora"]
