"""Response caches, pure: keys, normalisation, the exact store (LRU by bytes, TTL), the semantic index and
the guard that keeps negated or reversed requests from hitting it.

- **Exact**: the key is a digest of team, privacy class, tier (with its upstream model), the normalised
  sampling parameters and the normalised messages. Only complete 2xx answers are stored (`answer_from_json`,
  `answer_from_sse` refuse anything else); an answer is kept as one non-streamed completion body and
  served as a stream by synthesising SSE chunks from it (`sse_from_answer`).
- **Semantic**: entries are grouped by scope — everything of the exact key but the last user message's
  text (team, privacy class, tier, parameters, earlier messages) — so they never cross teams or privacy
  classes; within a scope the last user message's embedding is compared by cosine. A candidate above the
  threshold is served only if `conflict()` finds no negation, antonym, number or order difference between
  the two texts: sentence encoders put "is X safe" and "is X not safe" closer (~0.99) than most
  paraphrases (~0.97), so the threshold alone cannot tell them apart.

Time is an argument (`now`, monotonic seconds). numpy is needed only by `SemanticIndex` (extra
`tiered[router-ml]`, like the encoder). Must not: do I/O, import an HTTP framework or see a request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class _CacheModel(BaseModel):
    # As config.py's `_Model` (not imported: config imports this module).
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class ExactCache(_CacheModel):
    """Answers kept by the exact request (team, privacy class, tier, sampling parameters, messages)."""

    ttl_seconds: float = Field(300.0, gt=0, description="How long an answer is served from the cache.")
    max_bytes: int = Field(64 << 20, ge=1024, description="Size bound of stored answers; least recently used go first.")
    max_entry_bytes: int = Field(1 << 20, ge=256, description="Answers larger than this are not stored.")


class SemanticCache(_CacheModel):
    """Answers served to requests whose last user message means the same (opt-in; needs the encoder)."""

    threshold: float = Field(0.95, ge=0, le=1, description="Cosine similarity of the last user messages at least this.")
    ttl_seconds: float = Field(300.0, gt=0, description="How long an answer is served from the semantic cache.")
    max_entries: int = Field(10000, ge=1, description="Size bound in entries; least recently used go first.")
    max_bytes: int = Field(64 << 20, ge=1024, description="Size bound of stored answers; least recently used go first.")
    serve_sampled: bool = Field(
        False,
        description="Serve (and store) requests with temperature > 0 or unset (the provider default, 1) too.",
    )
    all_requests: bool = Field(
        True, description="false: only `model: auto` requests routed by a rule with `semanticCache: true`."
    )


class CacheSettings(_CacheModel):
    """The response caches; each is off when its section is absent."""

    exact: ExactCache | None = Field(None, description="The exact cache; none turns it off.")
    semantic: SemanticCache | None = Field(None, description="The semantic cache; none turns it off.")


# --- keys -----------------------------------------------------------------------------------------------

NOT_SAMPLING = frozenset({"model", "messages", "prompt", "stream", "stream_options", "metadata", "user", "store"})
"""Body fields that do not change the answer (or are the messages themselves): left out of the key."""


def _canonical(value: Any) -> Any:
    """Numbers compare by value (1 == 1.0), mappings by content; None fields are dropped."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return str(value)


def sampling_params(body: dict[str, Any]) -> dict[str, Any]:
    """The fields that shape the answer, normalised: `max_completion_tokens` is `max_tokens`, a single `stop`
    string is a list of one, numbers compare by value, unset (None) fields are dropped."""
    params = {k: v for k, v in body.items() if k not in NOT_SAMPLING and v is not None}
    if "max_completion_tokens" in params:
        params["max_tokens"] = params.pop("max_completion_tokens")
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    return dict(_canonical(params))


def _message_text(content: Any) -> Any:
    """A text-only content array is the same request as its joined string; other content is kept as is."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content).strip()
    return content.strip() if isinstance(content, str) else _canonical(content)


def normalised_messages(body: dict[str, Any], chat: bool) -> list[Any]:
    """Messages (or the prompt) with surrounding whitespace and text-part arrays normalised away."""
    if not chat:
        prompt = body.get("prompt")
        return [prompt.strip() if isinstance(prompt, str) else _canonical(prompt)]
    out = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            out.append({**_canonical(message), "content": _message_text(message.get("content"))})
    return out


def _digest(*parts: Any) -> bytes:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).digest()


def exact_key(team: str, private: bool, tier: str, body: dict[str, Any], chat: bool) -> bytes:
    """The exact cache key; `tier` should carry the tier's upstream model (`name:model`)."""
    return _digest("exact", team, private, tier, chat, sampling_params(body), normalised_messages(body, chat))


def semantic_scope(team: str, private: bool, tier: str, body: dict[str, Any], chat: bool) -> bytes:
    """What must be equal for a semantic hit: the exact key without the last user message's text."""
    messages = normalised_messages(body, chat)
    if chat:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last is not None:
            messages = [*messages[:last], {**messages[last], "content": None}, *messages[last + 1 :]]
    else:
        messages = []
    return _digest("semantic", team, private, tier, chat, sampling_params(body), messages)


def sampled(body: dict[str, Any]) -> bool:
    """Whether the answer is drawn at random: temperature > 0, or unset (OpenAI's default is 1)."""
    temperature = body.get("temperature")
    return not isinstance(temperature, int | float) or temperature > 0


def semantic_eligible(settings: SemanticCache, rule_opt_in: bool | None, body: dict[str, Any]) -> bool:
    """Whether a request may be served from (and stored in) the semantic cache: the matched rule's
    `semanticCache` if it says, else `allRequests`; sampled requests only with `serveSampled`."""
    if sampled(body) and not settings.serve_sampled:
        return False
    return settings.all_requests if rule_opt_in is None else rule_opt_in


@dataclass(slots=True)
class Pending:
    """What a miss stores its answer under: the exact key, and the semantic scope, vector and text."""

    exact_key: bytes | None = None
    scope: bytes | None = None
    vector: Any = None
    text: str = ""

    @property
    def wanted(self) -> bool:
        return self.exact_key is not None or self.scope is not None


# --- answers --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete answer as a non-streamed completion body, with what it cost to get."""

    body: bytes
    tier: str
    """The tier that answered (its prices say what a hit saved)."""
    input_tokens: int
    output_tokens: int

    @property
    def size(self) -> int:
        return len(self.body) + 64


def answer_from_json(data: bytes, tier: str, input_tokens: int, output_tokens: int) -> Answer | None:
    """A 200 JSON completion whose every choice finished (has a finish_reason), else None."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    if not all(isinstance(c, dict) and c.get("finish_reason") for c in choices):
        return None
    return Answer(data, tier, input_tokens, output_tokens)


DELTA_FIELDS = frozenset({"role", "content", "refusal"})
"""What a streamed delta may carry for the stream to be stored (tool calls are not assembled)."""


def answer_from_sse(stream: bytes, tier: str, chat: bool, input_tokens: int, output_tokens: int) -> Answer | None:
    """The answer a whole SSE stream carried, assembled into one completion body; None unless the stream
    ended with `[DONE]` and every choice finished, or if it carried anything but text (tool calls,
    logprobs, errors)."""
    events = [e.strip() for e in re.split(rb"\r?\n\r?\n", stream) if e.strip()]
    if not events or events[-1] != b"data: [DONE]":
        return None
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    head: dict[str, Any] = {}
    usage: Any = None
    for event in events[:-1]:
        if not event.startswith(b"data:"):
            continue
        try:
            chunk = json.loads(event[5:])
        except ValueError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        head = head or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("logprobs"):
                return None
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {} if chat else {"content": choice.get("text")}
            if not isinstance(delta, dict) or not DELTA_FIELDS.issuperset(k for k, v in delta.items() if v):
                return None
            texts.setdefault(index, []).append(str(delta.get("content") or ""))
            if choice.get("finish_reason"):
                finish[index] = str(choice["finish_reason"])
    if not texts or set(finish) != set(texts):
        return None
    choices = []
    for index in sorted(texts):
        text = "".join(texts[index])
        if chat:
            choices.append(
                {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish[index]}
            )
        else:
            choices.append({"index": index, "text": text, "finish_reason": finish[index]})
    body: dict[str, Any] = {
        "id": head.get("id", "cached"),
        "object": "chat.completion" if chat else "text_completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return Answer(json.dumps(body).encode(), tier, input_tokens, output_tokens)


def sse_from_answer(answer: Answer, chat: bool, include_usage: bool) -> bytes:
    """The stream a client would have received: a role chunk, one content chunk per choice, a finish chunk
    per choice, the usage chunk if the client asked for it (`stream_options.include_usage`), `[DONE]`."""
    value = json.loads(answer.body)
    head = {
        "id": value.get("id", "cached"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": value.get("created", 0),
        "model": value.get("model", ""),
    }
    events: list[dict[str, Any]] = []
    for choice in value.get("choices") or []:
        index = choice.get("index", 0)
        logprobs = choice.get("logprobs")
        if chat:
            message = choice.get("message") or {}
            events.append(
                {
                    **head,
                    "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            events.append(
                {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "delta": {"content": message.get("content") or ""},
                            "logprobs": logprobs,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            events.append(
                {**head, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
            )
        else:
            events.append(
                {
                    **head,
                    "choices": [
                        {"index": index, "text": choice.get("text") or "", "logprobs": logprobs, "finish_reason": None}
                    ],
                }
            )
            events.append(
                {**head, "choices": [{"index": index, "text": "", "finish_reason": choice.get("finish_reason")}]}
            )
    if include_usage and value.get("usage") is not None:
        events.append({**head, "choices": [], "usage": value["usage"]})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


# --- the exact store ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stored:
    answer: Answer
    expires: float


class ExactStore:
    """Answers by key, least recently used evicted past `max_bytes`, each expiring `ttl` after it was stored."""

    def __init__(self, settings: ExactCache) -> None:
        self.settings = settings
        self.entries: OrderedDict[bytes, _Stored] = OrderedDict()
        self.bytes = 0

    def configure(self, settings: ExactCache) -> None:
        """New bounds (a reload): entries stay, trimmed to the new size."""
        self.settings = settings
        self._trim()

    def get(self, key: bytes, now: float) -> Answer | None:
        stored = self.entries.get(key)
        if stored is None:
            return None
        if stored.expires <= now:
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return stored.answer

    def put(self, key: bytes, answer: Answer, now: float) -> bool:
        """Store (replacing any answer under `key`); False when the answer is over `maxEntryBytes`."""
        if answer.size > self.settings.max_entry_bytes:
            return False
        if key in self.entries:
            self._drop(key)
        self.entries[key] = _Stored(answer, now + self.settings.ttl_seconds)
        self.bytes += answer.size
        self._trim()
        return True

    def _drop(self, key: bytes) -> None:
        self.bytes -= self.entries.pop(key).answer.size

    def _trim(self) -> None:
        while self.bytes > self.settings.max_bytes and self.entries:
            self._drop(next(iter(self.entries)))


# --- the semantic guard ---------------------------------------------------------------------------------


def _listed(text: str) -> list[str]:
    """Word lists below are written as prose, one space apart."""
    return text.split()


_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*|->|→|<-|←")
NEGATIONS = frozenset(
    _listed(
        "not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt isnt arent "
        "wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt neednt aint"
    )
)
DIRECTION_MARKERS = frozenset(
    _listed(
        "to into from than vs versus -> → <- ← before after by onto toward towards over under above below "
        "cause causes caused causing affect affects imply implies beat beats defeat defeats owe owes"
    )
)
"""Words that make word order matter: `A to B`, `A than B`, `A causes B`, `A by B`."""
ANTONYMS: tuple[tuple[str, str], ...] = tuple(
    (a, b)
    for a, _, b in (
        pair.partition("/")
        for pair in _listed(
            "safe/dangerous safe/unsafe true/false increase/decrease increases/decreases before/after more/less "
            "higher/lower high/low max/min maximum/minimum best/worst buy/sell add/remove enable/disable "
            "open/close start/stop accept/reject allow/deny allow/block import/export encrypt/decrypt "
            "upload/download win/lose wins/loses won/lost hot/cold pros/cons advantages/disadvantages push/pull "
            "ascending/descending "
            "above/below inside/outside input/output left/right first/last cheap/expensive fast/slow "
            "faster/slower bigger/smaller larger/smaller good/bad legal/illegal healthy/unhealthy "
            "possible/impossible likely/unlikely positive/negative rise/fall gain/lose include/exclude "
            "compress/decompress serialize/deserialize encode/decode lock/unlock connect/disconnect "
            "install/uninstall subscribe/unsubscribe older/newer old/new early/late earlier/later"
        )
    )
)
_OPPOSITES: dict[str, set[str]] = {}
for _a, _b in ANTONYMS:
    _OPPOSITES.setdefault(_a, set()).add(_b)
    _OPPOSITES.setdefault(_b, set()).add(_a)
STOP_WORDS = frozenset(
    _listed(
        "a an the is are was were be been being am do does did i you we they he she it me my your our their "
        "what which who whom whose how why when where can could should would will shall may might must "
        "of in on at for with and or but if so as it's its this that these those there here please tell "
        "explain give show let lets let's me some any there's what's whats how's hows ok okay just about "
        "way ways way? i'm im"
    )
)


def _words(text: str) -> list[str]:
    """Lower-case words; `isn't` is `isnt` (one negation word either way)."""
    return [w.replace("'", "") if w.endswith("n't") else w for w in _WORD.findall(text.lower())]


def _negations(words: list[str]) -> int:
    return sum(1 for w in words if w in NEGATIONS)


_NUMBER = re.compile(r"^\d+(?:[.]\d+)?$")
_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")


def conflict(a: str, b: str) -> str | None:
    """Why two requests that embed alike may still ask different things, or None when no difference is seen:

    - `negation`: a different number of negations (not, no, never, without, -n't…);
    - `antonym`: one says a word, the other its opposite (a list, and un-/in-/dis-/non- prefixes);
    - `numbers`: different numbers;
    - `reversal`: two shared words on either side of a word that makes order matter (to, into, from,
      than, vs, by, causes…) swap sides — "convert A to B" / "B to A" — or both are the same words in
      around a word that stays between them ("does the moon orbit the earth" / "the earth orbit the moon").
    A false alarm costs one upstream call; a false hit serves a wrong answer, so the guard errs on alarms.
    """
    wa, wb = _words(a), _words(b)
    if wa == wb:
        return None
    if _negations(wa) != _negations(wb):
        return "negation"
    sa, sb = set(wa), set(wb)
    only_a, only_b = sa - sb, sb - sa
    for word in only_a:
        if not _OPPOSITES.get(word, set()).isdisjoint(only_b):
            return "antonym"
        for prefix in _PREFIXES:
            if word.startswith(prefix) and word[len(prefix) :] in only_b and len(word) - len(prefix) >= 3:
                return "antonym"
            if prefix + word in only_b:
                return "antonym"
    if sorted(w for w in wa if _NUMBER.match(w)) != sorted(w for w in wb if _NUMBER.match(w)):
        return "numbers"
    shared = (sa & sb) - STOP_WORDS - DIRECTION_MARKERS
    across_a, across_b = _across_markers(wa, shared), _across_markers(wb, shared)
    if any((y, x) in across_b for x, y in across_a):
        return "reversal"
    if _swapped_around_pivot(wa, wb, shared):
        return "reversal"
    return None


ARTICLES = frozenset({"a", "an", "the"})


def _swapped_around_pivot(wa: list[str], wb: list[str], shared: set[str]) -> bool:
    """Two shared words swap order around a word that stays between them in both: "the moon orbits the
    earth" / "the earth orbits the moon", "100 dollars in yen" / "100 yen in dollars"."""
    at_a = {w: i for i, w in reversed(list(enumerate(wa)))}  # first occurrences
    at_b = {w: i for i, w in reversed(list(enumerate(wb)))}
    ordered = sorted(shared, key=at_a.__getitem__)
    for i, x in enumerate(ordered):
        for y in ordered[i + 1 :]:
            if at_b[y] < at_b[x]:
                between_a = set(wa[at_a[x] + 1 : at_a[y]]) - ARTICLES
                between_b = set(wb[at_b[y] + 1 : at_b[x]]) - ARTICLES
                if not between_a.isdisjoint(between_b):
                    return True
    return False


def _across_markers(words: list[str], shared: set[str]) -> set[tuple[str, str]]:
    """(x, y) for shared words x before and y after some direction marker: `x to y`, `x than y`."""
    pairs: set[tuple[str, str]] = set()
    for i, word in enumerate(words):
        if word in DIRECTION_MARKERS:
            before = {w for w in words[:i] if w in shared}
            after = {w for w in words[i + 1 :] if w in shared}
            pairs.update((x, y) for x in before for y in after if x != y)
    return pairs


# --- the semantic index ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    scope: bytes
    slot: int
    text: str
    answer: Answer
    expires: float


@dataclass(slots=True)
class _Scope:
    vectors: NDArray[np.float32]
    """Unit-norm embeddings, one row per slot (rescoring the few candidates)."""
    codes: NDArray[np.int8]
    """The same rows quantised to int8 (row × scale ≈ vector): what every lookup reads, a quarter of the bytes."""
    scales: NDArray[np.float32]
    entries: list[_Entry | None] = field(default_factory=list)
    free: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SemanticHit:
    answer: Answer
    similarity: float


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    """A lookup's result: the hit (or None) and, on a miss, whether a candidate above the threshold was
    refused by the guard (`guarded`: its reason)."""

    hit: SemanticHit | None
    guarded: str | None = None


CANDIDATES = 8
"""Candidates above the threshold the guard looks at, best first, before the lookup gives up."""


COARSE_MARGIN = 0.03
"""Rows whose int8 score is within this of the threshold are rescored exactly (int8 error is < 0.01 here)."""


class _Int8Dot:
    """int8 matrix × int8 vector → int32, by ONNX Runtime's MatMulInteger (vectorised; numpy has no int8 BLAS).

    At 10k rows of 384 a float32 matrix is 15 MB and a lookup reads all of it: ~5-15 ms here once the
    matrix no longer stays in cache on a busy machine; the int8 copy is 3.8 MB (measured in bench/cache.py)."""

    def __init__(self) -> None:
        import onnxruntime
        from onnx import TensorProto, helper

        inputs = [
            helper.make_tensor_value_info("rows", TensorProto.INT8, [None, None]),
            helper.make_tensor_value_info("query", TensorProto.INT8, [None, 1]),
        ]
        output = helper.make_tensor_value_info("dots", TensorProto.INT32, [None, 1])
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["rows", "query"], ["dots"])], "dot", inputs, [output]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one lookup per request: parallelism comes from requests
        self._session = onnxruntime.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])

    def __call__(self, rows: NDArray[np.int8], query: NDArray[np.int8]) -> NDArray[np.int32]:
        dots: NDArray[np.int32] = self._session.run(None, {"rows": rows, "query": query.reshape(-1, 1)})[0]
        return dots[:, 0]


def _grown(array: Any, size: int) -> Any:
    """`array` with `size` rows: the old ones, then zeros."""
    import numpy as np

    grown = np.zeros((size, *array.shape[1:]), array.dtype)
    grown[: len(array)] = array
    return grown


class SemanticIndex:
    """Unit-norm embeddings per scope in one growing matrix each; a lookup is one int8 matrix-vector
    product over the scope, then an exact float32 rescoring of the rows near the threshold.

    Eviction is least recently used across scopes, past `max_entries` or `max_bytes`; an expired entry is
    dropped when a lookup meets it. A freed row is zeroed (cosine 0 never passes a threshold) and reused.
    """

    def __init__(self, settings: SemanticCache, dimensions: int = 384) -> None:
        import numpy as np

        self._np = np
        self._dot = _Int8Dot()
        self.settings = settings
        self.dimensions = dimensions
        self.scopes: dict[bytes, _Scope] = {}
        self.order: OrderedDict[tuple[bytes, int], _Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.order)

    def configure(self, settings: SemanticCache) -> None:
        self.settings = settings
        self._trim()

    def lookup(self, scope: bytes, vector: NDArray[np.float32], text: str, now: float) -> SemanticLookup:
        found = self.scopes.get(scope)
        if found is None or not self.order:
            return SemanticLookup(None)
        np = self._np
        rows = len(found.entries)
        codes, scale = self._quantise(vector)
        coarse = self._dot(found.codes[:rows], codes) * found.scales[:rows] * scale
        near = np.flatnonzero(coarse >= self.settings.threshold - COARSE_MARGIN)
        exact = found.vectors[near] @ vector
        keep = exact >= self.settings.threshold
        near, exact = near[keep], exact[keep]
        guarded = None
        for rank in np.argsort(-exact)[:CANDIDATES]:
            slot, similarity = int(near[rank]), float(exact[rank])
            entry = found.entries[slot]
            if entry is None:
                continue
            if entry.expires <= now:
                self._drop(entry)
                continue
            reason = conflict(text, entry.text)
            if reason is not None:
                guarded = guarded or reason
                continue
            self.order.move_to_end((scope, entry.slot))
            return SemanticLookup(SemanticHit(entry.answer, similarity))
        return SemanticLookup(None, guarded)

    def _quantise(self, vector: NDArray[np.float32]) -> tuple[NDArray[np.int8], float]:
        peak = float(self._np.abs(vector).max())
        scale = peak / 127 if peak > 0 else 1.0
        codes: NDArray[np.int8] = self._np.round(vector / scale).astype(self._np.int8)
        return codes, scale

    def put(self, scope: bytes, vector: NDArray[np.float32], text: str, answer: Answer, now: float) -> None:
        np = self._np
        found = self.scopes.get(scope)
        if found is None:
            found = self.scopes[scope] = _Scope(
                np.zeros((8, self.dimensions), np.float32),
                np.zeros((8, self.dimensions), np.int8),
                np.zeros(8, np.float32),
            )
        if found.free:
            slot = found.free.pop()
        else:
            slot = len(found.entries)
            found.entries.append(None)
            if slot >= len(found.vectors):  # grow by doubling: amortised O(1) per entry
                size = 2 * len(found.vectors)
                found.vectors = _grown(found.vectors, size)
                found.codes = _grown(found.codes, size)
                found.scales = _grown(found.scales, size)
        found.vectors[slot] = vector
        found.codes[slot], found.scales[slot] = self._quantise(vector)
        entry = _Entry(scope, slot, text, answer, now + self.settings.ttl_seconds)
        found.entries[slot] = entry
        self.order[(scope, slot)] = entry
        self.bytes += answer.size
        self._trim()

    def _drop(self, entry: _Entry) -> None:
        found = self.scopes[entry.scope]
        found.vectors[entry.slot] = 0.0
        found.codes[entry.slot], found.scales[entry.slot] = 0, 0.0
        found.entries[entry.slot] = None
        found.free.append(entry.slot)
        del self.order[(entry.scope, entry.slot)]
        self.bytes -= entry.answer.size
        if len(found.free) == len(found.entries):
            del self.scopes[entry.scope]

    def _trim(self) -> None:
        while self.order and (len(self.order) > self.settings.max_entries or self.bytes > self.settings.max_bytes):
            self._drop(next(iter(self.order.values())))


class ResponseCache:
    """The process's caches, kept across reloads (keys name the tier and its upstream model, so an answer
    never outlives the model that gave it) and resized or turned off by `configure`."""

    def __init__(self) -> None:
        self.exact: ExactStore | None = None
        self.semantic: SemanticIndex | None = None

    def configure(self, settings: CacheSettings | None) -> None:
        settings = settings or CacheSettings()
        if settings.exact is None:
            self.exact = None
        elif self.exact is None:
            self.exact = ExactStore(settings.exact)
        else:
            self.exact.configure(settings.exact)
        if settings.semantic is None:
            self.semantic = None
        elif self.semantic is None:
            self.semantic = SemanticIndex(settings.semantic)
        else:
            self.semantic.configure(settings.semantic)

    def entry_limit(self) -> int:
        """The largest answer some cache would store: a longer stream is not collected."""
        limits = [self.exact.settings.max_entry_bytes if self.exact else 0]
        limits.append(self.semantic.settings.max_bytes if self.semantic else 0)
        return max(limits)

    def store(self, pending: Pending, answer: Answer, now: float) -> list[tuple[str, bool]]:
        """Store a complete answer where `pending` says; returns (kind, stored) for the metrics."""
        done = []
        if self.exact is not None and pending.exact_key is not None:
            done.append(("exact", self.exact.put(pending.exact_key, answer, now)))
        if self.semantic is not None and pending.scope is not None:
            fits = answer.size <= self.semantic.settings.max_bytes
            if fits:
                self.semantic.put(pending.scope, pending.vector, pending.text, answer, now)
            done.append(("semantic", fits))
        return done
