"""vq02, the linguistic token stream (16.67 Hz, 1024 codes): the streaming Paraformer encoder.

    vq02 = Vq02Tokenizer(paraformer_dir, centroids_path, device)
    result = vq02.encode(audio_16k, transcribe=True)   # codes, encoder frames, LFR features, transcript

FunASR's ``WavFrontendOnline`` (Kaldi fbank, LFR 7/6, CMVN) and streaming ``SANMEncoderChunkOpt``
run with upstream's chunk loop (chunk_size [0, 4, 5], encoder look-back 4, decoder look-back 1,
its two end-of-audio rules); only the encoder is needed for the codes: each output frame maps to
its nearest centroid of ``linguistic_tokenizer.npy``. The layers can run over all chunks at once
(same math, one pass over the weights per layer). The frontend's dither is forced to 0: the real
config has no dither key, so upstream uses FunASR's default 1.0 and its codes are random per call;
ours are deterministic and cacheable. Auto-transcription reuses the same Paraformer: its CIF
predictor and decoder run on the encoder output computed for the codes anyway.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from errors import ModelFilesError
from model_layout import PARAFORMER_FILES
from patches import funasr_fbank

log = logging.getLogger(__name__)

CHUNK_SIZE = [0, 4, 5]  # [left, chunk, right] in 60 ms LFR frames
ENCODER_LOOK_BACK = 4
DECODER_LOOK_BACK = 1
CHUNK_STRIDE_SAMPLES = CHUNK_SIZE[1] * 960  # 3840 samples = 240 ms at 16 kHz
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # Kaldi fbank 25 ms / 10 ms at 16 kHz
MIN_FINAL_SAMPLES = 480  # upstream skips a failing final chunk shorter than this
SPECIAL_TOKENS = {"<blank>", "<s>", "</s>", "<unk>", "<OOV>"}


@dataclass
class Vq02Result:
    """vq02 codes of one clip, with the stream's intermediate arrays for inspection and tests."""

    codes: list[int]
    enc_out: np.ndarray  # (T02, D) float32 encoder frames
    lfr_feats: np.ndarray  # (T02, 560) float32 frontend output fed to the encoder
    transcript: str | None


def import_funasr() -> None:
    """Import the FunASR modules we use, undoing what ``import funasr`` does to the process.

    ``import funasr`` imports every submodule; one of them (funasr.bin.realtime_ws) calls
    ``logging.basicConfig(level=INFO)`` on the root logger, which would override the app's logging
    setup, and the package prints an ffmpeg notice on stdout. Both are undone here (the printed text
    goes to the debug log). ``funasr.utils.load_utils`` also imports pydub, which warns at import that
    ffmpeg is missing; we never decode through pydub (audio_read reads files), so that warning is
    silenced for this import only.
    """
    if "funasr.models.paraformer_streaming.model" in sys.modules:
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning
            )
            import funasr.models.paraformer_streaming.model  # noqa: F401 - registers the classes
            import funasr.utils.load_utils  # noqa: F401
            import funasr.utils.postprocess_utils  # noqa: F401
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    if printed.getvalue().strip():
        log.debug("funasr import said: %s", printed.getvalue().strip())


def join_asr_tokens(tokens: list[str]) -> str:
    """Readable text from Paraformer tokens: specials dropped, '@@' BPE pieces glued, CJK unspaced."""
    from funasr.utils.postprocess_utils import sentence_postprocess

    kept = [t for t in tokens if t not in SPECIAL_TOKENS]
    if not kept:
        return ""
    return " ".join(str(sentence_postprocess(kept)[0]).split())


class Vq02Tokenizer:
    """The streaming Paraformer (frontend, encoder, CIF predictor, decoder) + the vq02 centroids.

    ``model_dir`` is ``<model root>/Step-Audio-Tokenizer/dengcunqin/speech_paraformer-...``.
    Thread-safe: the streaming state lives in each call.
    """

    def __init__(self, model_dir: Path, centroids_path: Path, device: torch.device):
        self.model_dir = Path(model_dir)
        self.device = device
        self._load_paraformer()
        self._load_centroids(Path(centroids_path))

    def _read_config(self) -> tuple[dict, dict]:
        import yaml

        path = self.model_dir / PARAFORMER_FILES[0]
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            metas = json.loads((self.model_dir / PARAFORMER_FILES[4]).read_text(encoding="utf-8"))
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFilesError(
                f"cannot parse {path.name} / configuration.json in {self.model_dir}: "
                f"{exc}; the file is damaged, re-download it"
            ) from exc
        needed = ("model", "encoder", "encoder_conf", "frontend", "frontend_conf", "predictor", "decoder")
        missing = [k for k in needed if not isinstance(config, dict) or k not in config]
        if missing:
            raise ModelFilesError(f"{path} lacks {missing}; it is truncated or not a Paraformer config")
        return config, metas.get("file_path_metas", {})

    def _load_paraformer(self) -> None:
        """Build frontend, tokenizer and ParaformerStreaming from config.yaml and load model.pt."""
        t0 = time.perf_counter()
        import_funasr()
        funasr_fbank.apply()  # torchaudio's fbank numbers instead of kaldi-native-fbank's (see patches/)
        from funasr.register import tables

        config, metas = self._read_config()
        names = {
            "init_param": metas.get("init_param", "model.pt"),
            "cmvn": metas.get("frontend_conf", {}).get("cmvn_file", "am.mvn"),
            "tokens": metas.get("tokenizer_conf", {}).get("token_list", "tokens.json"),
        }
        frontend_conf = dict(config["frontend_conf"])
        configured = frontend_conf.get("dither", "absent (FunASR default 1.0)")
        frontend_conf["dither"] = 0.0  # deterministic fbank: same clip -> same codes -> cacheable
        log.debug(
            "tokenizer: vq02 fbank dither forced to 0 (config: %s) so codes are deterministic", configured
        )
        cmvn_path = self.model_dir / names["cmvn"]
        try:
            frontend_class = tables.frontend_classes.get(config["frontend"])
            frontend = frontend_class(cmvn_file=str(cmvn_path), **frontend_conf)
        except (ValueError, IndexError) as exc:
            raise ModelFilesError(f"cannot read CMVN file {cmvn_path}: {exc}; re-download it") from exc
        dims = frontend.output_size()
        if frontend.cmvn is None or tuple(frontend.cmvn.shape) != (2, dims):
            shape = None if frontend.cmvn is None else tuple(frontend.cmvn.shape)
            raise ModelFilesError(
                f"{cmvn_path} holds CMVN of shape {shape}, expected (2, {dims}); "
                "the file is truncated or belongs to another model"
            )
        tokens_path = self.model_dir / names["tokens"]
        try:
            self.token_list = json.loads(tokens_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFilesError(f"cannot parse {tokens_path}: {exc}; re-download it") from exc
        model_conf = {**config.get("model_conf", {}), **config}
        model = tables.model_classes.get(config["model"])(
            **model_conf, input_size=dims, vocab_size=len(self.token_list)
        )
        weights = self.model_dir / names["init_param"]
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise ModelFilesError(
                f"cannot load {weights}: {exc}; the file is truncated or damaged, re-download it"
            ) from exc
        if not isinstance(state, dict):
            raise ModelFilesError(f"{weights} is not a state dict")
        state = state.get("state_dict", state)  # some exports nest the weights one level down
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ModelFilesError(
                f"{weights} does not match {self.model_dir / 'config.yaml'}: {str(exc)[:500]}"
            ) from exc
        parts = ("encoder", "predictor", "decoder")
        needed_missing = [k for k in result.missing_keys if k.split(".")[0] in parts]
        if needed_missing:
            raise ModelFilesError(
                f"{weights} lacks {len(needed_missing)} encoder/predictor/decoder "
                f"weights (e.g. {needed_missing[:3]}); wrong or damaged file"
            )
        if result.unexpected_keys:
            log.debug(
                "tokenizer: %d unused weights in %s (e.g. %s)",
                len(result.unexpected_keys),
                weights.name,
                result.unexpected_keys[:2],
            )
        self.model = model.to(self.device).eval()
        self.frontend = frontend
        self.config = config
        self.lfr_m = int(frontend_conf.get("lfr_m", 1))
        self.enc_dim = int(config["encoder_conf"]["output_size"])
        log.debug(
            "tokenizer: Paraformer %s (%d encoder blocks, dim %d, vocab %d) loaded in %.2f s",
            config["encoder"],
            int(config["encoder_conf"].get("num_blocks", 0)),
            self.enc_dim,
            len(self.token_list),
            time.perf_counter() - t0,
        )

    def _load_centroids(self, path: Path) -> None:
        try:
            centroids = np.load(path)
        except (ValueError, OSError, EOFError) as exc:
            raise ModelFilesError(f"cannot load {path}: {exc}; re-download it") from exc
        if centroids.ndim != 2 or centroids.shape[1] != self.enc_dim:
            raise ModelFilesError(
                f"{path} has shape {centroids.shape}, expected (codes, {self.enc_dim}) to match the encoder"
            )
        self.centroids = torch.from_numpy(centroids.astype(np.float32)).to(self.device)

    def encode(self, audio_16k: np.ndarray, transcribe: bool = False, batched: bool = True) -> Vq02Result:
        """vq02 codes of a prepared 16 kHz clip with upstream's streaming schedule (and the transcript).

        ``batched`` runs the streaming encoder layer by layer over all chunks at once (same math, one
        pass over the weights per layer instead of per 240 ms chunk); False runs FunASR's per-chunk
        ``encode_chunk`` loop as upstream does. Both give the same frames to float rounding.
        """
        x = torch.tensor(np.asarray(audio_16k, dtype=np.float32))  # a copy: inputs may be read-only
        with torch.inference_mode():
            cache: dict = {}
            self.model.init_cache(
                cache,
                chunk_size=CHUNK_SIZE,
                encoder_chunk_look_back=ENCODER_LOOK_BACK,
                decoder_chunk_look_back=DECODER_LOOK_BACK,
                encoder_conf=self.config["encoder_conf"],
                frontend_conf=self.config["frontend_conf"],
            )
            chunks = self._frontend_chunks(x, cache["frontend"])
            feats = [speech[0].clone() for speech, _, _ in chunks]  # the encoder scales its input in place
            if batched and self._can_batch(chunks):
                encs = self._encode_batched([speech for speech, _, _ in chunks], cache["encoder"])
            else:
                encs = [
                    self.model.encode_chunk(speech.to(self.device), lens, cache=cache, is_final=final)[0]
                    for speech, lens, final in chunks
                ]
            outs = [enc[:, -int(lens[0]) :] for enc, (_, lens, _) in zip(encs, chunks, strict=True)]
            token_ids: list[int] = []
            if transcribe:  # the CIF predictor and decoder keep their own stream state: run them after
                for enc, (_, _, final) in zip(encs, chunks, strict=True):
                    token_ids += self._decode_chunk(enc, cache, final)
                if not (chunks and chunks[-1][2]):
                    token_ids += self._decode_tail(cache)
            if outs:
                enc_out = torch.cat(outs, dim=1)[0]
                codes = torch.cdist(enc_out, self.centroids).argmin(dim=1).cpu().tolist()
                enc_np = enc_out.float().cpu().numpy()
                feats_np = torch.cat(feats, dim=0).numpy()
            else:
                codes, enc_np = [], np.zeros((0, self.enc_dim), np.float32)
                feats_np = np.zeros((0, self.frontend.output_size()), np.float32)
        transcript = None
        if transcribe:
            pieces = [self.token_list[t] for t in token_ids if 0 <= t < len(self.token_list)]
            transcript = join_asr_tokens(pieces)
        return Vq02Result(codes=codes, enc_out=enc_np, lfr_feats=feats_np, transcript=transcript)

    def _frontend_chunks(self, x: torch.Tensor, frontend_cache: dict) -> list[tuple]:
        """Upstream's chunk loop over the fbank frontend: [(speech (1, n, 560), lens, is_final)]."""
        from funasr.utils.load_utils import extract_fbank

        chunks = []
        n = len(x) // CHUNK_STRIDE_SAMPLES + 1
        for i in range(n):
            is_final = i == n - 1
            xi = x[i * CHUNK_STRIDE_SAMPLES : (i + 1) * CHUNK_STRIDE_SAMPLES]
            # upstream's two end-of-audio rules: no flush on an exact multiple of the stride, and a
            # final chunk whose fbank frames cannot fill one LFR window emits nothing
            if is_final and (len(xi) == 0 or self._final_chunk_too_short(len(xi), frontend_cache)):
                break
            try:
                speech, lens = extract_fbank(
                    [xi], data_type="sound", frontend=self.frontend, cache=frontend_cache, is_final=is_final
                )
            except Exception:
                if is_final and len(xi) < MIN_FINAL_SAMPLES:
                    break
                raise
            if len(speech) == 0 and is_final:
                break
            chunks.append((speech, lens, is_final))
        return chunks

    @staticmethod
    def _can_batch(chunks: list[tuple]) -> bool:
        """Batching needs equal non-final chunks (always so: 3840 samples give 4 LFR frames)."""
        if len(chunks) < 2 or ENCODER_LOOK_BACK <= 0:
            return False
        sizes = {speech.shape[1] for speech, _, _ in chunks[:-1]}
        return len(sizes) == 1

    def _encode_batched(self, speech_chunks: list[torch.Tensor], stream: dict) -> list[torch.Tensor]:
        """SANMEncoderChunkOpt over all chunks at once, layer by layer; per-chunk outputs (1, T, D).

        Chunk j at layer l attends to its own frames and to the look-back cache: the first
        ``T - chunk_size[2]`` keys/values of the previous chunks at the same layer (last
        ``look_back * chunk_size[1]`` frames). That cache only depends on layer l's input, so every
        chunk of a layer can run in one batch with a mask for the chunks that have less history. A
        final chunk of another length runs after the batch with the cache the batch leaves. ``stream``
        (the encoder stream cache) ends as FunASR's own loop leaves it, for the ASR tail step.
        """
        enc = self.model.encoder
        scale = enc.output_size() ** 0.5
        xs = []
        for speech in speech_chunks:  # positions and overlap frames: cheap, sequential, FunASR's code
            x = speech.to(self.device) * scale
            x = enc.embed(x, stream) if enc.embed is not None else x
            xs.append(enc._add_overlap_chunk(x, stream))
        n_body = len(xs) if xs[-1].shape[1] == xs[0].shape[1] else len(xs) - 1
        body = torch.cat(xs[:n_body], dim=0)
        last = xs[-1] if n_body < len(xs) else None
        look = stream["encoder_chunk_look_back"] * stream["chunk_size"][1]
        right = stream["chunk_size"][2]
        layer_caches = []
        for layer in list(enc.encoders0) + list(enc.encoders):
            body, layer_cache = _batched_sanm_layer(layer, body, look, right)
            if last is not None:
                last, layer_cache = layer.forward_chunk(
                    last, layer_cache, stream["chunk_size"], stream["encoder_chunk_look_back"]
                )
            layer_caches.append(layer_cache)
        stream["opt"] = layer_caches
        if enc.normalize_before:
            body = enc.after_norm(body)
            last = enc.after_norm(last) if last is not None else None
        outs = list(body.split(1, dim=0))
        return outs + ([last] if last is not None else [])

    def _final_chunk_too_short(self, n_samples: int, frontend_cache: dict) -> bool:
        """Upstream's frontend emits nothing for a final chunk with 0 < frames and frames + splice < lfr_m."""
        pending = frontend_cache.get("input_cache")
        total = n_samples + (pending.shape[-1] if pending is not None else 0)
        frames = (total - FRAME_SAMPLES) // HOP_SAMPLES + 1 if total >= FRAME_SAMPLES else 0
        splice = frontend_cache.get("lfr_splice_cache")
        splice_len = len(splice[0]) if splice else (self.lfr_m - 1) // 2
        return 0 < frames and frames + splice_len < self.lfr_m

    def _decode_chunk(self, enc: torch.Tensor, cache: dict, is_final: bool) -> list[int]:
        """Greedy Paraformer ASR on one encoder chunk (CIF predictor + SANM decoder, streaming caches)."""
        enc_lens = torch.tensor([enc.shape[1]])
        pred = self.model.calc_predictor_chunk(enc, enc_lens, cache=cache, is_final=is_final)
        acoustic, n_tokens = pred[0], pred[1].round().long()
        if int(n_tokens.max()) < 1:
            return []
        dec, _ = self.model.cal_decoder_with_predictor_chunk(enc, enc_lens, acoustic, n_tokens, cache=cache)
        ids = dec[0, : int(n_tokens[0])].argmax(dim=-1).tolist()
        model = self.model
        return [t for t in ids if t not in (model.blank_id, model.sos, model.eos)]

    def _decode_tail(self, cache: dict) -> list[int]:
        """Flush the ASR when upstream's schedule dropped the final chunk: FunASR's tail-chunk step."""
        cache["encoder"]["tail_chunk"] = True
        speech = cache["encoder"]["feats"]
        enc, _ = self.model.encode_chunk(
            speech.to(self.device), torch.tensor([speech.shape[1]]), cache=cache, is_final=True
        )
        return self._decode_chunk(enc, cache, True)


def _batched_sanm_layer(
    layer: torch.nn.Module, x: torch.Tensor, look: int, right: int
) -> tuple[torch.Tensor, dict]:
    """One EncoderLayerSANM of the streaming encoder for N equal chunks at once.

    ``x`` is (N, T, in) for chunks 0..N-1 in order. Returns the (N, T, D) output and the layer's
    look-back cache after chunk N-1 ({"k", "v"}: (1, heads, frames, d_k)), as FunASR's
    ``MultiHeadedAttentionSANM.forward_chunk`` would hold it.
    """
    attn = layer.self_attn
    residual = x
    h = layer.norm1(x) if layer.normalize_before else x
    q_h, k_h, v_h, v = attn.forward_qkv(h)  # (N, heads, T, d_k) and v (N, T, D)
    n, heads, t, d_k = k_h.shape
    stride = t - right  # frames each chunk adds to the cache
    reach = math.ceil(look / stride)  # previous chunks inside the look-back window

    def history(s: torch.Tensor) -> torch.Tensor:
        """(N, heads, look, d_k): for chunk j, the last `look` cached frames of chunks j-reach..j-1."""
        padded = torch.cat([s.new_zeros((reach,) + tuple(s.shape[1:])), s], dim=0)
        windows = torch.stack([padded[i : i + n] for i in range(reach)], dim=2)  # (N, heads, reach, S, d_k)
        return windows.reshape(n, heads, reach * stride, d_k)[:, :, -look:]

    k_stride, v_stride = k_h[:, :, :stride], v_h[:, :, :stride]
    keys = torch.cat([history(k_stride), k_h], dim=2)
    values = torch.cat([history(v_stride), v_h], dim=2)
    have = torch.clamp(torch.arange(n, device=x.device) * stride, max=look)  # cached frames per chunk
    cached_ok = torch.arange(look, device=x.device)[None, :] >= (look - have)[:, None]
    mask = torch.cat([cached_ok, torch.ones(n, t, dtype=torch.bool, device=x.device)], dim=1)[:, None, :]
    scores = torch.matmul(q_h * attn.d_k ** (-0.5), keys.transpose(-2, -1))
    out = attn.forward_attention(values, scores, mask) + attn.forward_fsmn(v, None)
    x = residual + out if layer.in_size == layer.size else out
    if not layer.normalize_before:
        x = layer.norm1(x)
    residual = x
    x = residual + layer.feed_forward(layer.norm2(x) if layer.normalize_before else x)
    if not layer.normalize_before:
        x = layer.norm2(x)
    tail = slice(max(0, n - reach), n)
    cache = {
        "k": k_stride[tail].permute(1, 0, 2, 3).reshape(1, heads, -1, d_k)[:, :, -look:],
        "v": v_stride[tail].permute(1, 0, 2, 3).reshape(1, heads, -1, d_k)[:, :, -look:],
    }
    return x, cache
