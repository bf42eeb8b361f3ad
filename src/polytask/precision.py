"""Numeric precision: which devices compute bf16 natively, training's ``train.mixed_precision:
auto``, and inference precision (``--precision`` of ``predict``, ``evaluate`` and ``serve``).

Native bf16 means the hardware multiplies bf16 matrices itself rather than emulating them:

- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
- CPU: the ``amx_bf16`` or ``avx512_bf16`` flag in ``/proc/cpuinfo`` (Linux), or torch's own
  check of the same instructions (``torch.cpu._is_amx_tile_supported`` /
  ``_is_avx512_bf16_supported``) where there is no such file. Other CPUs (AVX2 only, Apple and
  other Arm CPUs) emulate bf16 and stay in float32.
- MPS: float32 (not measured here).

Native is not always faster. With AMX (its tile units multiply bf16 matrices) bf16 autocast was
faster than float32 everywhere it was tried: 2.1x for the demo's training, 2.7x for MiniLM
inference. With AVX512_BF16 alone it depends on the CPU: a Xeon ran MiniLM's steps (batch 32, 48
tokens, torch 2.13; benchmarks/bf16_speed.py) at 0.60-0.67x of float32 speed, an AMD EPYC at
1.54-1.86x (BENCHMARKS.md, "bf16 on a CPU without AMX"). So ``auto`` takes bf16 where it is
*fast* (:func:`fast_bf16`): a bf16 CUDA device, a CPU with AMX, or a CPU with AVX512_BF16 alone
where :func:`measured_bf16_speedup` (a transformer MLP block's forward and backward, timed in both,
about 0.4 s once per CPU model, torch version and thread count, then cached) finds bf16 at least
:data:`MIN_SPEEDUP` times as fast; an explicit ``bf16`` is accepted wherever it is native.

``train.mixed_precision: auto`` (the default) resolves to ``bf16`` where the training device
computes it fast and to ``no`` (float32) elsewhere; ``no``, ``bf16`` and ``fp16`` are taken as
given. Inference precisions: ``fp32``; ``bf16`` (forward passes under bf16 autocast: weights
stay float32, matrix products run in bf16; refused on a CPU without native bf16, where it would
be slower); ``int8`` (PyTorch dynamic quantization of every ``nn.Linear``: int8 weights,
activations quantized per batch; CPU only, encoder and vision backbones only); ``auto`` = the
run's training precision when this device computes it fast (a run trained in bf16 predicts
in bf16 on a bf16 GPU or an AMX CPU), else fp32. int8 is never chosen by ``auto``: it changes some predictions (docs/serving.md
has the measured share of identical labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from pathlib import Path

import torch

from polytask.errors import PolytaskError
from polytask.files import cache_root, write_json

MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
CPU_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512_BF16"}  # /proc/cpuinfo flag -> unit name
CPUINFO = Path("/proc/cpuinfo")
MIN_SPEEDUP = 1.2  # the probe's matrix products gain more than a whole model (whose softmax and norms stay fp32)


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (first processor), or None without that file."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_unit() -> str | None:
    """The CPU's native bf16 unit ('AMX' or 'AVX512_BF16'), or None when it has neither."""
    flags = cpu_flags()
    if flags is not None:
        return next((unit for flag, unit in CPU_BF16_FLAGS.items() if flag in flags), None)
    checks = {"AMX": "_is_amx_tile_supported", "AVX512_BF16": "_is_avx512_bf16_supported"}
    return next((unit for unit, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()), None)


def cuda_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (Ampere or newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def native_bf16(device_type: str) -> tuple[bool, str]:
    """Whether ``device_type`` ('cpu', 'cuda', 'mps', ...) computes bf16 natively, and why (printed)."""
    if device_type == "cuda":
        ok = cuda_bf16()
        return ok, f"CUDA device {'supports' if ok else 'lacks'} bf16"
    if device_type == "cpu":
        unit = cpu_bf16_unit()
        return (True, f"CPU has {unit}") if unit else (False, "CPU has neither AMX nor AVX512_BF16")
    return False, f"bf16 on {device_type} is not measured"


def fast_bf16(device_type: str) -> tuple[bool, str]:
    """Whether bf16 autocast runs faster than float32 on ``device_type``, and why (printed): a
    bf16 CUDA device, a CPU with AMX, or a CPU with AVX512_BF16 alone where it measured faster."""
    ok, why = native_bf16(device_type)
    if device_type == "cpu" and ok and cpu_bf16_unit() != "AMX":
        speedup = measured_bf16_speedup()
        fast = speedup >= MIN_SPEEDUP
        return fast, (f"CPU has AVX512_BF16 but no AMX; bf16 autocast measured {speedup:.2f}x float32 here "
                      f"({'at least' if fast else 'under'} {MIN_SPEEDUP}x: {'bf16' if fast else 'float32'})")
    return ok, why


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ('' where there is none)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def probe_cache() -> Path:
    return cache_root() / "bf16_speed.json"


def measured_bf16_speedup() -> float:
    """float32 time / bf16 autocast time of :func:`bf16_probe` on this CPU at the current thread
    count, cached in :func:`probe_cache` per CPU model, flags, torch version and thread count (so a
    machine decides once, and a resumed run decides as its first part did)."""
    flags = hashlib.sha1(" ".join(sorted(cpu_flags() or ())).encode()).hexdigest()[:8]
    key = f"{cpu_model()}|{flags}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    path = probe_cache()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = round(bf16_probe(), 3)
        try:
            write_json(path, cache)
        except OSError:  # a read-only home: measured again next time
            pass
    return float(cache[key])


def bf16_probe(rows: int = 256, width: int = 384, repeats: int = 8) -> float:
    """fp32 time / bf16 time of an MLP block (``width`` -> 4 x ``width`` -> ``width``, GELU) on
    ``rows`` tokens, forward and backward, alternating, the fastest of ``repeats`` each. Draws
    from its own generator: the global random state is untouched."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen)  # (T, H)
    w1 = (torch.randn(4 * width, width, generator=gen) * 0.05).requires_grad_()
    w2 = (torch.randn(width, 4 * width, generator=gen) * 0.05).requires_grad_()

    def once(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, w1)), w2)
        y.float().square().mean().backward()
        w1.grad = w2.grad = None
        return time.perf_counter() - start

    for bf16 in (False, True, False, True):  # warm-up: oneDNN builds its kernels on first use
        once(bf16)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], once(bf16))
    return best[False] / best[True]


def resolve_mixed_precision(setting: str, device_type: str) -> tuple[str, str]:
    """``train.mixed_precision`` for a device: ``(no | bf16 | fp16, why)``; ``auto`` picks bf16 only
    where the device computes it faster than float32 (:func:`fast_bf16`), else ``no`` (float32)."""
    if setting != "auto":
        return setting, "set in the config"
    ok, why = fast_bf16(device_type)
    return ("bf16" if ok else "no"), f"auto: {why}"


def resolve_inference(precision: str, device_type: str, trained: str = "no") -> str:
    """The inference precision to use (``fp32 | bf16 | int8``) for ``--precision`` on this device.

    ``trained``: the run's resolved training precision (``no``, ``bf16``, ``fp16``, or ``auto``
    for a run whose resolution was not recorded: resolved here). Raises PolytaskError naming the
    option where the hardware lacks what was asked for.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise PolytaskError(f"--precision {precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "auto":
        if trained == "auto":
            trained = resolve_mixed_precision("auto", device_type)[0]
        return "bf16" if trained == "bf16" and fast_bf16(device_type)[0] else "fp32"
    if precision == "bf16":
        ok, why = native_bf16(device_type)
        if not ok:
            raise PolytaskError(f"--precision bf16: {why}, so bf16 would be emulated and slower than fp32; "
                                f"use --precision fp32" + (" or int8" if device_type == "cpu" else ""))
    if precision == "int8":
        if device_type != "cpu":
            raise PolytaskError(f"--precision int8: dynamic quantization runs on the CPU only, the model is on "
                                f"{device_type}; use --precision bf16 or fp32")
        if not int8_engine():
            raise PolytaskError("--precision int8: this torch build has no quantized engine (x86, fbgemm, onednn "
                                "or qnnpack); use --precision fp32")
    return precision


def int8_engine() -> str | None:
    """The quantized-kernel engine torch uses for int8 here, or None without one."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return None
    current = torch.backends.quantized.engine
    return current if current in engines else engines[0]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every ``nn.Linear`` of ``model`` as a dynamically quantized int8 layer, in place (eval only:
    the quantized layers have no gradients). Embeddings, LayerNorms and convolutions stay float32."""
    engine = int8_engine()
    if engine is None:
        raise PolytaskError("int8: this torch build has no quantized engine")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def prepare_inference(model: torch.nn.Module, precision: str = "auto", trained: str = "no",
                      kind: str = "encoder") -> str:
    """Resolve ``--precision`` for a loaded model (``trained``: the run's ``train.mixed_precision``;
    ``kind``: its ``model.kind``) and quantize it for int8; returns fp32, bf16 or int8. int8 is
    refused for decoder LLM runs (their LoRA adapters wrap the layers it would replace)."""
    device = next(iter(model.parameters()), torch.empty(0)).device.type
    chosen = resolve_inference(precision, device, trained)
    if chosen == "int8":
        if kind == "causal_lm":
            raise PolytaskError("--precision int8: not for decoder LLM runs (model.kind: causal_lm), whose LoRA "
                                "adapters wrap the linear layers; use --precision bf16 or fp32")
        quantize_int8(model)
    return chosen


def autocast(precision: str, device_type: str):
    """The context forward passes run in for an inference precision (bf16: autocast; else none)."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["INFERENCE_PRECISIONS", "MIXED_PRECISIONS", "autocast", "cpu_bf16_unit", "cpu_flags", "cuda_bf16",
           "int8_engine", "native_bf16", "prepare_inference", "quantize_int8", "resolve_inference",
           "resolve_mixed_precision"]
