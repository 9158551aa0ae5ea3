"""A tiny synthetic model in sherpa-onnx's SenseVoice (offline CTC) format.

It has the exact interface of the ``model.onnx`` that sherpa-onnx's
``scripts/sense-voice/export-onnx.py`` writes, so that sherpa-onnx's
``OfflineRecognizer.from_sense_voice`` loads it and serves as the test oracle::

    inputs   x          float32 (N, T, 560)   LFR-stacked, CMVN-normalised fbank
             x_length   int32   (N,)          valid frames of each item
             language   int32   (N,)          metadata lang_* (0: auto)
             text_norm  int32   (N,)          metadata with_itn / without_itn
    outputs  logits     float32 (N, T + 4, V) raw CTC logits (not log-softmax)

and the same metadata keys (``lfr_window_size``, ``lfr_window_shift``,
``normalize_samples``, ``neg_mean``, ``inv_stddev``, ``lang_*``,
``with_itn``, ``without_itn``, ``vocab_size``, ...).  Blank is id 0
(``<unk>``), as in the real ``tokens.txt``.

The network is random but built like the real one where it matters: the four
query embeddings (language, event and emotion, text normalisation) come
first, the frames are masked by ``x_length`` before a depthwise convolution
over time (SenseVoice's FSMN memory block is one), and an utterance-wide
pooled context feeds every output frame.  So each item of a padded batch
gives what it gives alone, and the output depends on the input frames, the
length, the language and the text normalisation.  The first four output
frames are confined to the tag tokens of their position (``<|zh|>`` ...,
``<|NEUTRAL|>`` ..., ``<|Speech|>`` ..., ``<|withitn|>``/``<|woitn|>``); a
language other than auto forces its tag, and frame 3 echoes ``text_norm``.
Built with ``onnx.helper``; no torch.


The real-size variant for benchmarks is in
:mod:`trio_asr.testing.sense_voice_real_size`.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper

from trio_asr.testing.onnx_graph import const, finish_model, write_model_dir

__all__ = [
    "EMOTIONS",
    "EVENTS",
    "LANGUAGES",
    "SenseVoiceSpec",
    "TOKENS",
    "write_sense_voice_model",
]

#: tag tokens, without their ``<|`` ``|>``, in tokens.txt order
LANGUAGES = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENTS = ("BGM", "Speech", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK")
_ITN = ("withitn", "woitn")

# SentencePiece pieces of several languages, as SenseVoice's vocabulary mixes them.
_PIECES = (
    "▁the", "▁a", "s", "▁and", "▁to", "ing", "ed", "▁i", "e", "t", "▁go", "▁we",
    "▁one", "▁two", "o", "y", "▁for", "er", "你", "好", "的", "是", "我", "们",
    "一", "二", "三", "在", "。", "，", "の", "は", "안", "녕", "▁Go", "?",
)  # fmt: skip

#: tokens.txt: blank ``<unk>``, ``<s>``, ``</s>``, pieces, then the tags
TOKENS = (
    "<unk>", "<s>", "</s>", *_PIECES,
    *(f"<|{tag}|>" for tag in (*LANGUAGES, *EMOTIONS, *EVENTS, *_ITN)),
)

# The real export's embedding ids (SenseVoiceSmall's lid_dict and textnorm_dict).
_LANG_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
_WITH_ITN, _WITHOUT_ITN = 14, 15
_EMBEDDINGS = 16

_CLOSED = -30.0  # logit bias of a token a frame never emits
_FORCED = 20.0


@attrs.frozen
class SenseVoiceSpec:
    """Shape parameters of a synthetic model."""

    num_bins: int = 80
    lfr_window_size: int = 7
    lfr_window_shift: int = 6
    hidden: int = 32
    kernel: int = 11  # the FSMN memory block's depthwise kernel
    # Gains, tuned on the speech clips so that about 0.6 tokens come per
    # output frame, from some 30 distinct tokens, and the tags vary.
    input_scale: float = 2.0
    frame_gain: float = 3.0
    context_scale: float = 1.0
    embed_scale: float = 0.3
    tag_scale: float = 4.0
    scale: float = 3.0  # of the output weights
    blank_bias: float = 1.0
    seed: int = 0


def write_tokens(path: Path) -> None:
    path.write_text("".join(f"{p} {i}\n" for i, p in enumerate(TOKENS)), encoding="utf-8")


def write_sense_voice_model(
    model_dir: Path, spec: SenseVoiceSpec = SenseVoiceSpec(), *, filename: str = "model.onnx"
) -> Path:
    """Write ``filename`` and ``tokens.txt`` into ``model_dir``; return the model path."""
    return write_model_dir(model_dir, _build(spec), write_tokens, filename)


def _allowed(ids: list[int], vocab: int) -> np.ndarray:
    bias = np.full(vocab, _CLOSED, np.float32)
    bias[ids] = 0.0
    return bias


def _tag_ids(names: tuple[str, ...]) -> list[int]:
    return [TOKENS.index(f"<|{n}|>") for n in names]


def _prefix_tables(vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prefix position, the tokens allowed (bias), and the forcing of
    the language tag by ``language`` and of the text-norm tag by ``text_norm``."""
    allowed = np.stack([
        _allowed(_tag_ids(LANGUAGES), vocab), _allowed(_tag_ids(EMOTIONS), vocab),
        _allowed(_tag_ids(EVENTS), vocab), _allowed(_tag_ids(_ITN), vocab),
    ])  # fmt: skip
    by_language = np.zeros((_EMBEDDINGS, 4, vocab), np.float32)
    for name, index in _LANG_IDS.items():
        if name != "auto":
            by_language[index, 0, TOKENS.index(f"<|{name}|>")] = _FORCED
    by_norm = np.zeros((_EMBEDDINGS, 4, vocab), np.float32)
    by_norm[_WITH_ITN, 3, TOKENS.index("<|withitn|>")] = _FORCED
    by_norm[_WITHOUT_ITN, 3, TOKENS.index("<|woitn|>")] = _FORCED
    return allowed, by_language, by_norm


def _cmvn(spec: SenseVoiceSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plausible statistics of int16-scale log-mel features, repeated per LFR slot."""
    neg_mean = -rng.uniform(8.0, 15.0, spec.num_bins)
    inv_stddev = rng.uniform(0.2, 0.4, spec.num_bins)
    m = spec.lfr_window_size
    return np.tile(neg_mean, m).astype(np.float32), np.tile(inv_stddev, m).astype(np.float32)


def _metadata(neg_mean: np.ndarray, inv_stddev: np.ndarray, s: SenseVoiceSpec, vocab: int) -> dict[str, object]:
    """The custom metadata of sherpa-onnx's export."""
    return {
        "lfr_window_size": s.lfr_window_size,
        "lfr_window_shift": s.lfr_window_shift,
        "normalize_samples": 0,
        "neg_mean": ",".join(f"{v:.6g}" for v in neg_mean),
        "inv_stddev": ",".join(f"{v:.6g}" for v in inv_stddev),
        "model_type": "sense_voice_ctc",
        "version": "2",
        "model_author": "iic",
        "maintainer": "k2-fsa",
        "vocab_size": vocab,
        "comment": "synthetic test fixture (trio-asr), random weights",
        **{f"lang_{k}": v for k, v in _LANG_IDS.items()},
        "with_itn": _WITH_ITN,
        "without_itn": _WITHOUT_ITN,
    }


def _build(s: SenseVoiceSpec) -> onnx.ModelProto:
    rng = np.random.default_rng(s.seed)
    vocab, dim, hidden = len(TOKENS), s.num_bins * s.lfr_window_size, s.hidden

    def w(name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
        a = rng.standard_normal(shape) * scale / np.sqrt(shape[0] if len(shape) > 1 else 1)
        return const(name, a.astype(np.float32))

    text_bias = np.zeros(vocab, np.float32)
    text_bias[0] = s.blank_bias
    text_bias[1:3] = _CLOSED  # <s>, </s>
    text_bias[3 + len(_PIECES) :] = _CLOSED  # no tags among the text's tokens
    allowed, by_language, by_norm = _prefix_tables(vocab)
    inits = [
        w("W_in", dim, hidden, scale=s.input_scale),
        w("b_in", hidden, scale=0.1),
        # depthwise (group = hidden) convolution over time
        w("W_fsmn", hidden, 1, s.kernel, scale=0.6),
        w("W_ctx", hidden, hidden, scale=s.context_scale),
        w("W_lang", hidden, hidden, scale=1.0),
        w("W_norm", hidden, hidden, scale=3.0),
        w("embed", _EMBEDDINGS, hidden, scale=s.embed_scale),
        w("W_out", hidden, vocab, scale=s.scale),
        w("W_pctx", hidden, hidden, scale=s.tag_scale),
        w("W_pout", hidden, vocab, scale=4.0),
        const("text_bias", text_bias),
        const("frame_gain", np.array(s.frame_gain, np.float32)),
        const("prefix_allowed", allowed),
        const("force_language", by_language),
        const("force_norm", by_norm),
        const("event_emo_ids", np.array([[1, 2]], np.int64)),
        const("zero", np.array(0, np.int64)),
        const("one", np.array(1, np.int64)),
        const("axis0", np.array([0], np.int64)),
        const("axis1", np.array([1], np.int64)),
        const("axis2", np.array([2], np.int64)),
        const("two_hidden", np.array([2, hidden], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        # valid-frame mask (N, T, 1) from x_length
        n("Shape", ["x"], ["x_shape"]),
        n("Gather", ["x_shape", "one"], ["frames"], axis=0),
        n("Range", ["zero", "frames", "one"], ["positions"]),
        n("Cast", ["x_length"], ["length64"], to=TensorProto.INT64),
        n("Unsqueeze", ["length64", "axis1"], ["length_col"]),
        n("Less", ["positions", "length_col"], ["valid"]),
        n("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["valid_f", "axis2"], ["mask"]),
        n("Mul", ["x", "mask"], ["x_masked"]),
        # frames: projection, FSMN-like depthwise convolution, masked again
        n("MatMul", ["x_masked", "W_in"], ["h_lin"]),
        n("Add", ["h_lin", "b_in"], ["h0_unmasked"]),
        n("Mul", ["h0_unmasked", "mask"], ["h0"]),
        n("Transpose", ["h0"], ["h0_t"], perm=[0, 2, 1]),
        n("Conv", ["h0_t", "W_fsmn"], ["mem_t"], group=hidden,
          kernel_shape=[s.kernel], pads=[s.kernel // 2, s.kernel // 2]),
        n("Transpose", ["mem_t"], ["mem"], perm=[0, 2, 1]),
        n("Add", ["h0", "mem"], ["h1_lin"]),
        n("Tanh", ["h1_lin"], ["h1_unmasked"]),
        n("Mul", ["h1_unmasked", "mask"], ["h1"]),
        # utterance context: the mean over valid frames
        n("ReduceSum", ["h1", "axis1"], ["h1_sum"], keepdims=0),
        n("Cast", ["length_col"], ["length_f"], to=TensorProto.FLOAT),
        n("Div", ["h1_sum", "length_f"], ["context"]),
        # the four queries: language, event, emotion (ids 1, 2), text norm
        n("Gather", ["embed", "language"], ["lang_q"], axis=0),
        n("Gather", ["embed", "text_norm"], ["norm_q"], axis=0),
        n("Gather", ["embed", "event_emo_ids"], ["event_emo_1"], axis=0),
        n("Gather", ["x_shape", "axis0"], ["batch"], axis=0),
        n("Concat", ["batch", "two_hidden"], ["event_emo_shape"], axis=0),
        n("Expand", ["event_emo_1", "event_emo_shape"], ["event_emo_q"]),
        n("Unsqueeze", ["lang_q", "axis1"], ["lang_q3"]),
        n("Unsqueeze", ["norm_q", "axis1"], ["norm_q3"]),
        n("Concat", ["lang_q3", "event_emo_q", "norm_q3"], ["queries"], axis=1),
        n("MatMul", ["context", "W_pctx"], ["p_ctx"]),
        n("Unsqueeze", ["p_ctx", "axis1"], ["p_ctx3"]),
        n("Add", ["queries", "p_ctx3"], ["p_lin"]),
        n("Tanh", ["p_lin"], ["p"]),
        n("MatMul", ["p", "W_pout"], ["p_logits0"]),
        n("Add", ["p_logits0", "prefix_allowed"], ["p_logits1"]),
        n("Gather", ["force_language", "language"], ["lang_force"], axis=0),
        n("Gather", ["force_norm", "text_norm"], ["norm_force"], axis=0),
        n("Add", ["p_logits1", "lang_force"], ["p_logits2"]),
        n("Add", ["p_logits2", "norm_force"], ["prefix_logits"]),
        # text frames: frames about their mean + context, language, text norm
        n("MatMul", ["context", "W_ctx"], ["t_ctx"]),
        n("MatMul", ["lang_q", "W_lang"], ["t_lang"]),
        n("MatMul", ["norm_q", "W_norm"], ["t_norm"]),
        n("Add", ["t_ctx", "t_lang"], ["t_cond0"]),
        n("Add", ["t_cond0", "t_norm"], ["t_cond"]),
        n("Unsqueeze", ["t_cond", "axis1"], ["t_cond3"]),
        n("Unsqueeze", ["context", "axis1"], ["context3"]),
        n("Sub", ["h1", "context3"], ["h1_centred"]),
        n("Mul", ["h1_centred", "frame_gain"], ["h1_scaled"]),
        n("Add", ["h1_scaled", "t_cond3"], ["h2_lin"]),
        n("Tanh", ["h2_lin"], ["h2"]),
        n("MatMul", ["h2", "W_out"], ["t_logits0"]),
        n("Add", ["t_logits0", "text_bias"], ["text_logits"]),
        n("Concat", ["prefix_logits", "text_logits"], ["logits"], axis=1),
    ]
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("x", f32, ["N", "T", dim]),
        helper.make_tensor_value_info("x_length", i32, ["N"]),
        helper.make_tensor_value_info("language", i32, ["N"]),
        helper.make_tensor_value_info("text_norm", i32, ["N"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["N", "T_out", vocab])]
    neg_mean, inv_stddev = _cmvn(s, rng)
    meta = _metadata(neg_mean, inv_stddev, s, vocab)
    return finish_model(
        nodes, "sense_voice_fixture", inputs, outputs, inits, opset=13, ir_version=7, meta=meta
    )

