"""The MLLM judge: an audio-visual language model rates each rollout on three rubrics, 1 to 5.

The score of a rubric is the expected value of the first score token's distribution: its top logprobs
renormalised over "1".."5" (a continuous score: parsed integers tie, and a tied group has zero advantage); where
the backend gives no usable logprobs, the integer parsed from the reply's text. Two backends:

- HTTPJudge: an OpenAI-compatible chat endpoint (e.g. `vllm serve Qwen/Qwen2.5-Omni-7B`): the frames as JPEG
  `image_url` data URLs, the audio as `input_audio` (base64 16-bit WAV), `logprobs: true, top_logprobs: 20`;
  a timeout per request, retries with exponential backoff on timeouts, refused connections and 5xx, and a
  UserError naming the endpoint on a 4xx or when every try failed.
- LocalJudge: a transformers model directory (save_pretrained layout); the class named in its config's
  `architectures` (an omni model's thinker where it has one), else AutoModelForCausalLM; its processor when it
  has an image processor (frames, and the audio where it also has a feature extractor), else its tokenizer
  (text only). The score tokens' logits are read off the last position directly.

Ratings are cached (in memory, and on disk under `cache_dir`) by a hash of the inputs, the rubric and the model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from engine.errors import UserError
from engine.timebase import SAMPLE_RATE
from rl.rewards.base import Sample, TermResult

SCORE_TOKENS = ("1", "2", "3", "4", "5")
RUBRICS: dict[str, str] = {
    "lip_sync": "Lip sync: do the lips open, close and shape each sound exactly when it is heard (lips shut on "
                "p, b and m, still in pauses)? 1 = unrelated to the speech, 5 = indistinguishable from a real "
                "speaker.",
    "expressiveness": "Expressiveness: do the face and head move as a person speaking these words would (head "
                      "sway, nods on stress, brows and eyes alive), neither frozen nor exaggerated? 1 = a frozen "
                      "or puppet-like face, 5 = natural and engaged.",
    "motion_quality": "Motion quality: is the motion smooth and plausible, free of jitter, popping, shaking, "
                      "stretched or broken features, and does the face keep the portrait's identity? 1 = severe "
                      "artifacts, 5 = clean and natural.",
}
SYSTEM_PROMPT = "You are a strict expert judge of generated talking-head videos. You answer with a single digit."


@dataclass(frozen=True)
class Rating:
    score: float  # 1..5; NaN when the judge gave none
    source: str  # "logprobs", "text" or "none"


def expected_score(top_logprobs: Mapping[str, float]) -> float | None:
    """Expected score from token -> logprob, renormalised over the score tokens ("1".."5", spaces stripped);
    None when none of them is among the tokens."""
    probs: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        if token.strip() in SCORE_TOKENS:
            score = int(token.strip())
            probs[score] = probs.get(score, 0.0) + math.exp(logprob)
    total = sum(probs.values())
    if total <= 0:
        return None
    return sum(s * p for s, p in probs.items()) / total


def parse_score(text: str) -> int | None:
    """The first standalone digit 1..5 in a reply ("Score: 4/5" -> 4), or None."""
    match = re.search(r"(?<![\d.])([1-5])(?!\.?\d)", text)
    return int(match.group(1)) if match else None


def prompt_text(rubric: str, frames: int, seconds: float, transcript: str | None) -> str:
    said = f' The speaker says: "{transcript}".' if transcript else ""
    return (f"Above are {frames} frames, evenly spaced over {seconds:.1f} s, of a talking-head video animated "
            f"from one portrait, and the speech it was driven by.{said}\n{rubric}\n"
            "Answer with one digit from 1 to 5.")


@dataclass(frozen=True, eq=False)
class JudgeInput:
    """What the judge sees of one sample: a few frames, the audio and the transcript."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB, evenly spaced over the clip
    audio: np.ndarray  # (N,) float32 at 16 kHz
    transcript: str | None = None

    @staticmethod
    def of(sample: Sample, frames: int) -> JudgeInput:
        if sample.frames is None:
            raise ValueError("the judge needs each sample's rendered frames; render the rollouts (rl.rollout) or "
                             "set [judge] backend = \"none\"")
        pick = np.linspace(0, len(sample.frames) - 1, min(frames, len(sample.frames))).round().astype(int)
        return JudgeInput(sample.frames[pick], np.asarray(sample.audio, np.float32), sample.transcript)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def prompt(self, rubric: str) -> str:
        return prompt_text(rubric, len(self.frames), self.seconds, self.transcript)

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.frames).tobytes())
        h.update(str(self.frames.shape).encode())
        h.update(np.ascontiguousarray(self.audio).tobytes())
        h.update((self.transcript or "").encode())
        return h.hexdigest()


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono 16-bit WAV file bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def jpeg_data_url(frame: np.ndarray) -> str:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} frame as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


class JudgeBackend(Protocol):
    model_id: str  # names the model in cache keys and messages

    def rate(self, inputs: JudgeInput, rubric: str) -> Rating: ...


class JudgeCache:
    """Ratings by sha256(model, rubric, inputs): in memory, and as one small JSON file each under `directory`."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory else None
        self._memory: dict[str, Rating] = {}
        self.hits = 0

    @staticmethod
    def key(model_id: str, rubric: str, inputs: JudgeInput) -> str:
        return hashlib.sha256(f"{model_id}\0{rubric}\0{inputs.digest()}".encode()).hexdigest()

    def get(self, key: str) -> Rating | None:
        rating = self._memory.get(key)
        if rating is None and self.directory is not None and (path := self.directory / f"{key}.json").is_file():
            rating = Rating(**json.loads(path.read_text()))
            self._memory[key] = rating
        self.hits += rating is not None
        return rating

    def put(self, key: str, rating: Rating) -> None:
        self._memory[key] = rating
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f"{key}.json.tmp"
            tmp.write_text(json.dumps({"score": rating.score, "source": rating.source}))
            tmp.replace(self.directory / f"{key}.json")


# ------------------------------------------------------------------------------------------ HTTP backend


class HTTPJudge:
    """An OpenAI-compatible chat completions endpoint (base URL ending in /v1, e.g. vLLM's)."""

    def __init__(self, endpoint: str, model: str, timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 1.0, api_key: str | None = None, max_tokens: int = 4):
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + "/chat/completions"
        self.model_id = model
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.api_key, self.max_tokens = api_key, max_tokens
        if retries < 1 or timeout_s <= 0:
            raise ValueError(f"retries must be >= 1 and timeout_s > 0; got {retries}, {timeout_s}")

    def request_body(self, inputs: JudgeInput, rubric: str) -> dict:
        content = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in inputs.frames]
        content.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(inputs.audio))
                                                               .decode(), "format": "wav"}})
        content.append({"type": "text", "text": inputs.prompt(rubric)})
        return {"model": self.model_id, "temperature": 0.0, "max_tokens": self.max_tokens, "logprobs": True,
                "top_logprobs": 20, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                 {"role": "user", "content": content}]}

    def rate(self, inputs: JudgeInput, rubric: str) -> Rating:
        return rating_from_reply(self.post(self.request_body(inputs, rubric)))

    def post(self, body: dict) -> dict:
        """POST with retries: timeouts, refused connections and 5xx are retried after backoff_s, 2 backoff_s, ...;
        a 4xx (a bad request or model name) fails at once."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:300]
                if err.code < 500:
                    raise UserError(f"judge endpoint {self.url} refused the request: HTTP {err.code} {detail}; check "
                                    f"the endpoint (the server's /v1 base URL) and the model name "
                                    f"{self.model_id!r}") from err
                last = f"HTTP {err.code} {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = str(getattr(err, "reason", err))
            except json.JSONDecodeError as err:
                raise UserError(f"judge endpoint {self.url} did not answer JSON ({err}); is it an OpenAI-compatible "
                                "server?") from err
        raise UserError(f"judge endpoint {self.url} unreachable after {self.retries} tries ({last}); start the "
                        f"server (e.g. `vllm serve {self.model_id}`), fix [judge] endpoint, or set "
                        "[judge] backend = \"none\" to train on the other rewards")


def rating_from_reply(reply: dict) -> Rating:
    """The expected score at the first score token of a chat completion's logprobs, else the parsed text."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        return Rating(float("nan"), "none")
    for position in (choice.get("logprobs") or {}).get("content") or []:
        if position.get("token", "").strip() in SCORE_TOKENS:
            top = {t["token"]: t["logprob"] for t in position.get("top_logprobs") or []}
            top.setdefault(position["token"], position.get("logprob", 0.0))
            score = expected_score(top)
            if score is not None:
                return Rating(score, "logprobs")
            break
    parsed = parse_score((choice.get("message") or {}).get("content") or "")
    return Rating(float(parsed), "text") if parsed is not None else Rating(float("nan"), "none")


# ----------------------------------------------------------------------------------------- local backend


class LocalJudge:
    """A transformers model loaded from a directory written by save_pretrained."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch
        import transformers

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"judge model {path} is not a transformers model directory (no config.json); pass the "
                            "directory of a model saved with save_pretrained (e.g. a downloaded Qwen2.5-Omni-7B)")
        self.model_id, self.device = str(path), torch.device(device)
        config = transformers.AutoConfig.from_pretrained(path)
        names = [a for a in (config.architectures or []) if hasattr(transformers, a)]
        model_class = getattr(transformers, names[0]) if names else transformers.AutoModelForCausalLM
        model = model_class.from_pretrained(path, dtype="auto")
        self.model = getattr(model, "thinker", model).eval().to(self.device)  # an omni model talks through its thinker
        try:
            processor = transformers.AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            processor = None
        self.processor = processor if getattr(processor, "image_processor", None) is not None else None
        self.tokenizer = (getattr(self.processor, "tokenizer", None)
                          or transformers.AutoTokenizer.from_pretrained(path))
        self.hears = getattr(self.processor, "feature_extractor", None) is not None
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in SCORE_TOKENS]
        # The score is read from logits where each digit is one token; otherwise the reply is generated and parsed.
        self.score_ids = [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    def _messages(self, inputs: JudgeInput, rubric: str) -> list[dict]:
        content: list[dict] = []
        if self.processor is not None:
            content += [{"type": "image"} for _ in inputs.frames]
            if self.hears:
                content.append({"type": "audio"})
        content.append({"type": "text", "text": inputs.prompt(rubric)})
        return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                {"role": "user", "content": content}]

    def encode(self, inputs: JudgeInput, rubric: str) -> dict:
        """The model's inputs for one rating, ending where the score token comes next."""
        messages = self._messages(inputs, rubric)
        if self.processor is not None:
            from PIL import Image

            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            extra = {"audio": [inputs.audio], "sampling_rate": SAMPLE_RATE} if self.hears else {}
            batch = self.processor(text=[text], images=[Image.fromarray(f) for f in inputs.frames],
                                   return_tensors="pt", **extra)
        else:
            if self.tokenizer.chat_template:
                flat = [{"role": m["role"], "content": " ".join(c["text"] for c in m["content"])} for m in messages]
                text = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
            else:
                text = f"{SYSTEM_PROMPT}\n{inputs.prompt(rubric)}\nScore:"
            batch = self.tokenizer([text], return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def rate(self, inputs: JudgeInput, rubric: str) -> Rating:
        import torch

        batch = self.encode(inputs, rubric)
        with torch.inference_mode():
            if self.score_ids is not None:
                logits = self.model(**batch).logits[0, -1].float()  # (vocab,) for the next token
                p = torch.softmax(logits[self.score_ids], dim=0)
                return Rating(float((p * torch.arange(1, 6, dtype=p.dtype)).sum()), "logprobs")
            out = self.model.generate(**batch, max_new_tokens=4, do_sample=False)
        reply = self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        parsed = parse_score(reply)
        return Rating(float(parsed), "text") if parsed is not None else Rating(float("nan"), "none")


# ------------------------------------------------------------------------------------------------ term


@dataclass(frozen=True)
class JudgeOptions:
    backend: str = "none"  # "none", "http" (an OpenAI-compatible endpoint) or "local" (a model directory)
    endpoint: str = "http://localhost:8000/v1"  # http: the server's OpenAI base URL
    model: str = "Qwen/Qwen2.5-Omni-7B"  # http: the served model's name
    api_key_env: str = ""  # http: the environment variable holding the API key, if the server wants one
    path: str = ""  # local: the model directory
    device: str = "cpu"  # local: where the model runs
    frames: int = 8  # frames shown per sample, evenly spaced
    timeout_s: float = 60.0  # http: per request
    retries: int = 3  # http: tries per request
    backoff_s: float = 1.0  # http: the first retry's wait, doubled each retry
    cache_dir: str = ""  # ratings kept here across runs ("" = in memory only)
    rubrics: tuple[str, ...] = tuple(RUBRICS)  # which of RUBRICS to ask

    def __post_init__(self):
        if self.backend not in ("none", "http", "local"):
            raise ValueError(f"backend must be 'none', 'http' or 'local'; got {self.backend!r}")
        if self.backend == "local" and not self.path:
            raise ValueError("backend 'local' needs path = the model directory")
        unknown = set(self.rubrics) - set(RUBRICS)
        if unknown or not self.rubrics:
            raise ValueError(f"rubrics must be some of {sorted(RUBRICS)}; got {list(self.rubrics)}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1; got {self.frames}")


def make_backend(options: JudgeOptions) -> JudgeBackend | None:
    if options.backend == "http":
        api_key = os.environ.get(options.api_key_env) if options.api_key_env else None
        return HTTPJudge(options.endpoint, options.model, options.timeout_s, options.retries, options.backoff_s,
                         api_key)
    if options.backend == "local":
        return LocalJudge(options.path, options.device)
    return None


class JudgeTerm:
    """Mean over the rubrics of (score - 1) / 4, in [0, 1]. A rating the judge could not give counts as the
    middle (0.5) and in the `failed` diagnostic, so one bad reply does not end a run."""

    name = "judge"
    needs_frames = True

    def __init__(self, backend: JudgeBackend, rubrics: Sequence[str] = tuple(RUBRICS), frames: int = 8,
                 cache: JudgeCache | None = None):
        self.backend, self.rubrics, self.frames = backend, tuple(rubrics), frames
        self.cache = cache if cache is not None else JudgeCache()

    @staticmethod
    def from_options(options: JudgeOptions) -> JudgeTerm | None:
        backend = make_backend(options)
        if backend is None:
            return None
        return JudgeTerm(backend, options.rubrics, options.frames, JudgeCache(options.cache_dir or None))

    def rate(self, inputs: JudgeInput, rubric: str) -> Rating:
        key = JudgeCache.key(self.backend.model_id, RUBRICS[rubric], inputs)
        rating = self.cache.get(key)
        if rating is None:
            rating = self.backend.rate(inputs, RUBRICS[rubric])
            if rating.source != "none":  # a failed rating is asked again next time
                self.cache.put(key, rating)
        return rating

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        scores = np.full((len(samples), len(self.rubrics)), np.nan)
        from_text = np.zeros(len(samples))
        for i, sample in enumerate(samples):
            inputs = JudgeInput.of(sample, self.frames)
            for j, rubric in enumerate(self.rubrics):
                rating = self.rate(inputs, rubric)
                scores[i, j] = rating.score
                from_text[i] += rating.source == "text"
        failed = np.isnan(scores)
        values = np.where(failed, 0.5, (scores - 1) / 4).mean(1)
        diagnostics = {rubric: scores[:, j] for j, rubric in enumerate(self.rubrics)}
        diagnostics |= {"failed": failed.sum(1).astype(np.float64), "parsed_text": from_text}
        return TermResult(values, diagnostics)
