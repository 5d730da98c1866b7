"""The one place for defects in the libraries we build on: each fix names its defect and when it can go.

Fixes (call them explicitly; nothing here patches anything at import):

1. ``fix_frozen_layer_norms(layer)`` -- Paddle's ``layer_norm`` backward ignores a frozen weight.
2. ``fix_beam_search_inputs_embeds(model)`` -- paddlenlp beam search with ``inputs_embeds`` crashes.
3. ``stride_kernels()`` -- safetensors' paddle frontend needs a kernel our device presets turn off.
4. ``log_softmax(x, axis)`` -- Paddle's CPU ``log_softmax`` floors at -64 and is 7-470x slower than the arithmetic.
5. ``raise_loader_errors()`` -- Paddle's ``DataLoader`` without workers hangs when a sample or batch fails.
6. ``catch_dataset_errors`` / ``catch_collate_errors`` / ``raise_caught_errors`` -- with workers, Paddle's
   ``DataLoader`` loses the error of a sample or batch (a bare ``SystemError: Blocking queue is killed``).
7. ``fix_t5(model, activation, max_distance)`` -- paddlenlp's T5 ignores the checkpoint's FFN activation and
   ``relative_attention_max_distance``, its layer norm casts a bfloat16 model's activations to float32, and
   its state dict holds the shared embedding three times.

Each has a test in ``tests/test_workarounds.py`` that asserts the defect is still there on the
unpatched library: when an upgrade fixes one, that test fails and says the workaround can go.
A speed defect is shown by a bench instead (tests assert no timings): ``bench/log_softmax.py`` for 4.

Defects we avoid by design, so no code is needed (kept here so the list is in one place):

- paddlenlp 2.8.1 ``OPTForCausalLM``: ``return_dict`` defaults to False (bare logits; a Trainer step
  on paddlenlp's BLIP-2 fails), ``__getattr__`` answers ``None`` for unknown attributes (breaks
  ``paddle.jit.to_static`` and LoRA merging), its loss does not shift labels, and its separate LM head
  is not tied to the embedding (HF ties it; the head even has the wrong shape when
  ``word_embed_proj_dim != hidden_size``). ``models/language/opt.py`` uses ``OPTModel`` and ties the
  head itself, passing ``return_dict=True`` explicitly.
- paddlenlp 2.8.1 ``OPTModel.forward`` builds its additive attention mask in Paddle's global default
  dtype, not the model's (its ``finfo`` helper knows no bfloat16), and adds two float minima where
  padding and causality both block (-inf). ``models/language/opt.py`` builds the mask in the LLM's dtype
  and runs ``OPTModel``'s embeddings and decoder itself.
- paddlenlp 2.8.1 ``generate`` with ``inputs_embeds``: a dummy BOS id is put in front of the generated
  ids, so the repetition penalty and n-gram blocking see it (for OPT, BOS is EOS: the penalty makes
  stopping harder); beams are scored with the GNMT length penalty ((n + 5) / 6) ** lp with n
  excluding EOS (HF: n ** lp, EOS included); custom ``logits_processors`` crash (its
  ``LogitsProcessorList`` is not iterable). ``models/decoding.py`` decodes with HF's semantics.
- Paddle's ``CrossEntropyLoss(reduction="mean", ignore_index=...)`` divides by all positions, not the
  counted ones. ``models/language/base.py`` divides the summed loss by the number of label tokens.
- Paddle 3.3.1 on CPU has no float16/bfloat16 kernels for matmul, softmax or layer_norm: an LLM held
  in half precision runs only on devices that have them.
- paddlenlp 2.8.1's ``VisualDLCallback`` (``report_to: visualdl``) crashes at the start of training with
  visualdl 2.5.3: it logs the training arguments as hparams and visualdl's protobuf refuses booleans
  ("Expected an int, got a boolean"). ``engine/trainer.py``'s ``LogLines`` writes the scalars itself.
- paddlenlp 2.8.1's ``Trainer`` restores the RNG state only after skipping batches inside an epoch, so a
  run resumed at an epoch boundary continues with a fresh RNG; ``engine/trainer.py`` restores it on load.
- Paddle 3.3.1's ``DygraphShardingOptimizer`` (fleet sharding stage 1) takes no parameter groups;
  ``engine/optim.flat_parameters`` puts each group's lr on its parameters instead.
- Paddle 3.3.1 under ``paddle.distributed.launch`` (CPU, gloo): a rank sometimes dies with SIGABRT
  while the interpreter shuts down, after all its work is done and written, and the launcher reports
  the job failed (4 of 19 runs of ``tests/test_engine.py::test_sharding_stage1_...``, also on the
  code before the concept head). ``tools/train.py`` ends a multi-rank run with ``os._exit(0)`` once
  every rank has passed a final barrier and flushed its output; no teardown, no abort.
"""
from __future__ import annotations

import pickle
import traceback
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn

# ---------------------------------------------------------------------------- 1. layer_norm


def layer_norm(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None, bias: Tensor | None = None,
    epsilon: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` whose input gradient is right when ``weight`` is frozen.

    Defect (Paddle 3.3.1, seen on CPU): when the weight has ``stop_gradient=True``, the backward
    kernel computes the gradient w.r.t. ``x`` as if the weight were all ones (max error ~1.5 on a
    random [8, 384] case). A frozen LLM therefore sends wrong gradients into the trainable Q-Former.
    Fix: hand the kernel a view of the weight that asks for a gradient. The view is a new leaf
    tensor sharing the weight's memory; its gradient (a [D] vector) is dropped with the graph after
    backward, so the real parameter stays frozen, gets no ``.grad`` and never reaches an optimizer.
    Cost: the kernel's weight-gradient reduction, one multiply-add per element.
    The same wrong input gradient comes whenever the weight's gradient is not computed, trainable weight
    or not: ``paddle.grad(loss, [inputs only])`` is such a case, and this fix cannot reach it (seen
    0.55 for 0.60 on a random float64 [4, 32] case). Training uses ``backward()``, which it fixes;
    a gradient check must too (``tests/test_lora.py::gradients``).
    Remove when ``tests/test_workarounds.py::test_layer_norm_defect_still_present`` fails.
    """
    if weight is not None and weight.stop_gradient and not x.stop_gradient and paddle.in_dynamic_mode():
        weight = weight.detach()
        weight.stop_gradient = False
    return F.layer_norm(x, normalized_shape, weight, bias, epsilon)


class FrozenSafeLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed with ``workarounds.layer_norm``; same parameters, same names."""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self._normalized_shape, self.weight, self.bias, self._epsilon)


def fix_frozen_layer_norms(layer: nn.Layer) -> int:
    """Make every ``nn.LayerNorm`` in ``layer`` give right input gradients when its weight is frozen.

    Call it once on a model after building it (idempotent; the composed model may call it again on
    everything). It swaps the class of plain ``nn.LayerNorm`` sublayers to ``FrozenSafeLayerNorm``:
    parameters, names, state dicts and ``isinstance`` checks are unchanged, and the weight's frozen or
    trainable state is read at each call, so freezing by pattern later is fine. Returns the number of
    layers fixed by this call. Subclasses of ``nn.LayerNorm`` with their own ``forward`` are left alone
    and named in a warning: they must call ``workarounds.layer_norm`` themselves.
    """
    import warnings

    fixed, foreign = 0, []
    for name, sub in layer.named_sublayers(include_self=True):
        if type(sub) is nn.LayerNorm:
            sub.__class__ = FrozenSafeLayerNorm
            fixed += 1
        elif isinstance(sub, nn.LayerNorm) and not isinstance(sub, FrozenSafeLayerNorm):
            foreign.append(f"{name or '<root>'} ({type(sub).__name__})")
    if foreign:
        warnings.warn(
            "fix_frozen_layer_norms: these LayerNorm subclasses were not fixed; if their weight can be frozen "
            f"while their input needs a gradient, compute them with workarounds.layer_norm: {', '.join(foreign)}",
            stacklevel=2,
        )
    return fixed


# ---------------------------------------------------------------------------- 2. beam search with inputs_embeds


def expand_inputs_for_generation(
    input_ids: Tensor, expand_size: int, attention_mask: Tensor | None = None, **model_kwargs: Any
) -> tuple[Tensor, dict[str, Any]]:
    """paddlenlp's ``GenerationMixin.expand_inputs_for_generation`` that also expands ``inputs_embeds``."""
    from paddlenlp.generation.utils import GenerationMixin

    batch = input_ids.shape[0]
    input_ids, model_kwargs = GenerationMixin.expand_inputs_for_generation(
        input_ids, expand_size, attention_mask=attention_mask, **model_kwargs
    )
    embeds = model_kwargs.get("inputs_embeds")
    if embeds is not None and embeds.shape[0] == batch:
        index = paddle.arange(batch, dtype="int64").repeat_interleave(expand_size)
        model_kwargs["inputs_embeds"] = paddle.gather(embeds, index)
    return input_ids, model_kwargs


def fix_beam_search_inputs_embeds(model: nn.Layer) -> nn.Layer:
    """Let paddlenlp ``model.generate(inputs_embeds=..., decode_strategy="beam_search")`` run for batch > 1.

    Defect (paddlenlp 2.8.1): ``expand_inputs_for_generation`` repeats ``input_ids`` and the attention
    mask ``num_beams`` times but not ``inputs_embeds``, so the first forward fails with "Broadcast
    dimension mismatch ... [2, 6, 32] and [6, 6, 32]" (batch 1 broadcasts silently and happens to
    work). Fix: give this model instance an expand function that also repeats ``inputs_embeds``
    (``generate`` looks the method up on the instance first). Nothing global changes; idempotent.
    Our own decoding (``models/decoding.py``) does not use paddlenlp's ``generate``; this is for code
    that does (references, benchmarks). Remove when
    ``tests/test_workarounds.py::test_beam_search_inputs_embeds_defect_still_present`` fails.
    """
    model.__dict__["expand_inputs_for_generation"] = expand_inputs_for_generation
    return model


# ---------------------------------------------------------------------------- 3. safetensors without stride kernels


@contextmanager
def stride_kernels() -> Iterator[None]:
    """Stride kernels on for the duration (to read safetensors files through their paddle frontend).

    Defect (safetensors 0.8 with Paddle 3.3.1): ``safe_open(..., framework="paddle").get_tensor``
    reinterprets bytes with ``view_dtype``, a kernel that exists only while
    ``FLAGS_use_stride_kernel`` is on; our device presets turn that flag off (NPU plugins need it
    off, and on CPU it is faster), and loading then fails with "(NotFound) ... view_dtype".
    Remove when ``tests/test_workarounds.py::test_safetensors_needs_stride_kernels`` fails.
    """
    before = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    paddle.set_flags({"FLAGS_use_stride_kernel": True})
    try:
        yield
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": before})


# ---------------------------------------------------------------------------- 4. slow CPU log_softmax


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``F.log_softmax`` as ``x - logsumexp(x)``: exact where Paddle's kernel is not, and far faster on CPU.

    Defects (Paddle 3.3.1, CPU kernel): values below -64 come out as -64 (a token the model rules
    out gets a loss of at most 64 and no gradient); and it is slow, more so the larger the
    vocabulary (bench/log_softmax.py): 270 ms forward + backward on the demo's [736, 1025] Q-Former
    text loss against 31 ms, and 3.9 s for one beam step over OPT's vocabulary ([10, 50272])
    against 12 ms; along a non-last axis it is another 10x slower. It sits in every Q-Former
    text loss and every beam-search step. ``logsumexp`` subtracts the
    maximum first, so this is as stable as a fused kernel. Remove when
    ``tests/test_workarounds.py::test_log_softmax_defect_still_present`` fails and
    ``bench/log_softmax.py`` shows ``F.log_softmax`` no slower than this.
    """
    return x - paddle.logsumexp(x, axis=axis, keepdim=True)


# ---------------------------------------------------------------------------- 5. a loader error hangs


def raise_loader_errors() -> None:
    """Make ``paddle.io.DataLoader(num_workers=0)`` raise the error of the dataset or ``collate_fn``.

    Defect (Paddle 3.3.1): without workers, batches are made in a thread whose loop catches only
    StopIteration; any other error ends the thread (its traceback printed) but leaves the queue the
    main thread waits on open, so training hangs for ever after an undecodable image or a bad record.
    With workers Paddle kills the queue and raises. The fix does the same for the thread, and the
    iterator raises the thread's own error. Idempotent. Remove when
    ``tests/test_workarounds.py::test_loader_error_defect_still_present`` fails.
    """
    from paddle.io.dataloader.dataloader_iter import _DataLoaderIterSingleProcess as Iter

    if getattr(Iter, "_medvl_raises", False):
        return
    loop, next_batch = Iter._thread_loop, Iter.__next__

    def _thread_loop(self, *args: Any) -> None:
        try:
            loop(self, *args)
        except Exception as e:  # noqa: BLE001 -- handed to the main thread
            self._medvl_error = e
            self._exit_thread_unexpectedly()

    def __next__(self):  # noqa: ANN001
        try:
            return next_batch(self)
        except Exception:
            error = getattr(self, "_medvl_error", None)
            if error is None:
                raise
            raise error from None

    Iter._thread_loop, Iter.__next__, Iter._medvl_raises = _thread_loop, __next__, True



# ---------------------------------------------------------------------------- 6. a worker's error is lost

# The key of a sample or batch that stands for an error: its value is the pickled (error, traceback
# text) as a uint8 array, which Paddle's workers pass on like any other array (shared memory included).
WORKER_ERROR_KEY = "_medvl_worker_error"
WORKER_JOIN_SECONDS = 10.0  # how long a worker may take to finish its batch once told to stop


class WorkerTraceback(Exception):
    """Where a loader error was raised: the worker's traceback, chained under the re-raised error."""


def _error_value(error: Exception) -> dict:
    """``error`` as a sample/batch value; an error that does not survive pickling becomes a RuntimeError
    with its type and message (its class may take other constructor arguments than its message)."""
    text = traceback.format_exc()
    try:
        payload = pickle.dumps((error, text))
        pickle.loads(payload)
    except Exception:  # noqa: BLE001 -- any unpicklable error still reaches the caller
        payload = pickle.dumps((RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}"), text))
    return {WORKER_ERROR_KEY: np.frombuffer(payload, dtype=np.uint8).copy()}


def _is_error_value(value: Any) -> bool:
    return isinstance(value, dict) and WORKER_ERROR_KEY in value


class _CatchingDataset(paddle.io.Dataset):
    """A map-style dataset whose ``__getitem__`` returns its error as a value (module level: picklable)."""

    def __init__(self, dataset: paddle.io.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as e:  # noqa: BLE001 -- handed to the main process
            return _error_value(e)

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes (records, set_epoch, ...)
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _CatchingCollate:
    """A ``collate_fn`` that passes a sample's error on as the batch, and returns its own error as one."""

    def __init__(self, collate_fn: Callable[[list], Any] | None) -> None:
        from paddle.io.dataloader.collate import default_collate_fn

        self.collate_fn = collate_fn or default_collate_fn

    def __call__(self, samples: list) -> Any:
        for sample in samples:
            if _is_error_value(sample):
                return sample
        try:
            return self.collate_fn(samples)
        except Exception as e:  # noqa: BLE001 -- handed to the main process
            return _error_value(e)


def catch_dataset_errors(dataset: paddle.io.Dataset) -> paddle.io.Dataset:
    """``dataset`` (map-style) whose failing samples come back as error values; see ``raise_caught_errors``."""
    if isinstance(dataset, paddle.io.IterableDataset):
        raise TypeError("catch_dataset_errors takes a map-style dataset (paddle.io.Dataset), not an IterableDataset")
    return _CatchingDataset(dataset)


def catch_collate_errors(collate_fn: Callable[[list], Any] | None) -> Callable[[list], Any]:
    """``collate_fn`` (None: Paddle's default) that turns an error sample, or its own error, into an error batch."""
    return _CatchingCollate(collate_fn)


def close_loader_iterator(iterator: Iterator) -> None:
    """Stop a Paddle loader iterator now: its reader thread and queues, and its workers (joined, and
    terminated if one has not finished its batch within ``WORKER_JOIN_SECONDS``). Paddle has no public
    ``close``; this is what its own end of an epoch does, minus the wait for the rest of the epoch."""
    from paddle.io.dataloader.dataloader_iter import _DataLoaderIterMultiProcess

    shutdown = getattr(iterator, "_try_shutdown_all", None)
    if shutdown is None:
        return
    if not isinstance(iterator, _DataLoaderIterMultiProcess):
        shutdown()
        return
    shutdown(WORKER_JOIN_SECONDS)
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.terminate()
            worker.join()


def raise_caught_errors(batches: Iterable) -> Iterator:
    """The batches of a loader made with ``catch_dataset_errors`` / ``catch_collate_errors``; an error
    batch stops the loader (``close_loader_iterator``) and is raised here as the original error, its
    type and message as the worker raised them, with the worker's traceback chained as its cause.

    Defect (Paddle 3.3.1, ``DataLoader(num_workers > 0)``): a worker's exception reaches the loader's
    reader *thread* as a ``_WorkerException``; that thread kills the blocking queue and raises it
    there (printed as "Exception in thread ...", its message replaced by the worker's traceback text),
    so the main thread gets only ``SystemError: (Fatal) Blocking queue is killed because the data
    reader raises an exception`` -- no file, no record -- and a tool catching ``DataError`` prints a
    traceback instead of its one ``error:`` line. Nor is the failed iterator shut down (Paddle does
    that only at StopIteration): its workers keep running until its ``__del__``, whenever that comes,
    and a process that leaves without it orphans them for good (blocked in a pipe read, past their
    parent watchdog), holding the caller's stdout/stderr open. Fix: never let the error leave a worker as an
    exception; pass it on as an ordinary batch (a uint8 array of its pickle), which Paddle delivers
    in order like any other, and raise it in the main process after the workers are stopped.
    A pass left early (``break``, ``max_steps`` mid-epoch) stops its workers too, when this generator
    is closed, instead of at some later garbage collection (without workers there is nothing to leak,
    and Paddle's thread shutdown polls in 1 s sleeps: left to Paddle). Works without workers too. Remove when
    ``tests/test_workarounds.py::test_worker_error_defect_still_present`` fails.
    """
    iterator = iter(batches)
    try:
        for batch in iterator:
            if _is_error_value(batch):
                value = batch[WORKER_ERROR_KEY]
                payload = np.asarray(value.numpy() if isinstance(value, paddle.Tensor) else value, dtype=np.uint8).tobytes()
                close_loader_iterator(iterator)
                error, text = pickle.loads(payload)  # our own worker's bytes, not a file from elsewhere
                raise error from WorkerTraceback(f"in the loader worker:\n{text}")
            yield batch
    finally:  # idempotent: after the last batch Paddle has shut the iterator down itself
        from paddle.io.dataloader.dataloader_iter import _DataLoaderIterMultiProcess

        if isinstance(iterator, _DataLoaderIterMultiProcess):
            close_loader_iterator(iterator)


# ---------------------------------------------------------------------------- 7. paddlenlp's T5

# Hugging Face's names of the gated activations (its ACT2FN) -> a layer computing it (paddlenlp: always gelu_new)
T5_ACTIVATIONS: dict[str, Callable[[], nn.Layer]] = {
    "gelu": lambda: nn.GELU(approximate=False),
    "gelu_new": lambda: nn.GELU(approximate=True),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate=True),
    "silu": nn.Silu,
}


def t5_layer_norm(layer: nn.Layer, hidden: Tensor) -> Tensor:
    """T5's RMS norm as Hugging Face computes it: the variance and the scaling in the wider of the input's
    dtype and float32 (HF takes the variance in float32 even for float64, which only parity checks
    run), the result in the weight's dtype (explicit casts: Paddle's implicit type
    promotion would log a warning at every call)."""
    wide = "float64" if hidden.dtype == paddle.float64 else "float32"  # the dtype torch promotes to
    variance = paddle.pow(hidden.astype(wide), 2).mean(axis=-1, keepdim=True)  # float64 stays exact
    hidden = hidden.astype(wide) * paddle.rsqrt(variance + layer.variance_epsilon).astype(wide)
    return layer.weight * hidden.astype(layer.weight.dtype)


def fix_t5(model: nn.Layer, activation: str, max_distance: int) -> None:
    """Make paddlenlp's T5 blocks inside ``model`` compute what the checkpoint's config says.

    Defects (paddlenlp 2.8.1): (a) ``T5DenseGatedGeluDense`` hard-codes ``gelu_new`` (the tanh form)
    whatever the config's ``dense_act_fn`` names (exact ``gelu``: a 5e-4 logit error on a tiny model);
    (b) ``T5Attention.compute_bias`` never passes ``relative_attention_max_distance`` to the bucketing
    (fixed 128: Flan-T5's value, wrong for any other); (c) ``T5LayerNorm`` casts its output to float16
    only, so in a bfloat16 model it multiplies float32 activations into the next bfloat16 matmul (HF
    casts to the weight's dtype for both half types). Fix: set the activation, bind a ``compute_bias``
    with the distance, and swap the norm's class (same parameters and names). Remove (a), (b), (c) when
    ``tests/test_workarounds.py::test_t5_defects_still_present`` fails.

    Also (d): each ``T5Stack`` registers the shared embedding as its own sublayer ``embed_tokens``, so
    ``state_dict`` lists the one table under three names (``shared``, ``encoder.embed_tokens``,
    ``decoder.embed_tokens``) and a checkpoint would hold it three times (3 x 262 MB for Flan-T5-XL in
    float32). The stacks keep their reference, unregistered: one name, one copy.
    """
    from paddlenlp.transformers.t5.modeling import T5Attention, T5DenseGatedGeluDense, T5LayerNorm, T5Stack

    for layer in model.sublayers(include_self=True):
        if isinstance(layer, T5DenseGatedGeluDense):  # a relu or gated-silu FFN computes what it names
            if activation not in T5_ACTIVATIONS:
                raise ValueError(f"T5 activation {activation!r} is not supported (known: {', '.join(T5_ACTIVATIONS)})")
            layer.gelu_act = T5_ACTIVATIONS[activation]()
        elif isinstance(layer, T5Attention) and layer.has_relative_attention_bias:
            layer.compute_bias = _t5_bias(layer, max_distance)
        elif type(layer) is T5LayerNorm:
            layer.__class__ = _t5_norm_class()
        elif isinstance(layer, T5Stack) and "embed_tokens" in layer._sub_layers:
            shared = layer._sub_layers.pop("embed_tokens")
            object.__setattr__(layer, "embed_tokens", shared)  # a plain attribute: not in state_dict


def _t5_bias(layer: nn.Layer, max_distance: int) -> Callable[[int, int], Tensor]:
    def compute_bias(query_length: int, key_length: int) -> Tensor:
        context = paddle.arange(query_length, dtype="int64").unsqueeze(-1)
        memory = paddle.arange(key_length, dtype="int64").unsqueeze(0)
        buckets = layer._relative_position_bucket(memory - context, bidirectional=not layer.is_decoder,
                                                  num_buckets=layer.relative_attention_num_buckets,
                                                  max_distance=max_distance)
        return layer.relative_attention_bias(buckets).transpose([2, 0, 1]).unsqueeze(0)  # [1, heads, q, k]

    return compute_bias


@lru_cache(maxsize=1)
def _t5_norm_class() -> type:
    """Made on first use: importing paddlenlp at module level would cost every tool seconds."""
    from paddlenlp.transformers.t5.modeling import T5LayerNorm

    class T5LayerNormHF(T5LayerNorm):
        """paddlenlp's ``T5LayerNorm`` computed by ``t5_layer_norm``; same parameters and names."""

        def forward(self, hidden_states: Tensor) -> Tensor:
            return t5_layer_norm(self, hidden_states)

    return T5LayerNormHF
