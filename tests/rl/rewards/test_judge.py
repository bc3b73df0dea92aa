import base64
import io
import json
import math
import socket
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from engine.errors import UserError
from rl.rewards import CompositeReward, Sample
from rl.rewards.judge import (
    RUBRICS,
    HTTPJudge,
    JudgeCache,
    JudgeInput,
    JudgeOptions,
    JudgeTerm,
    LocalJudge,
    expected_score,
    parse_score,
    rating_from_reply,
)

FRAMES = 4  # frames shown to the judge in these tests


@pytest.fixture(scope="module")
def judge_samples(clip, motions):
    """Two 1 s samples with small random 'rendered' frames (the judge only forwards pixels)."""
    rng = np.random.default_rng(0)
    audio, features = clip[0][:16000], clip[1][:25]
    return [Sample(audio, features, motions[k][:25], frames=rng.integers(0, 255, (25, 32, 32, 3), np.uint8),
                   transcript="hello there") for k in ("real", "frozen")]


def test_expected_score_renormalises_over_the_score_tokens():
    top = {"4": math.log(0.6), "5": math.log(0.3), " 3": math.log(0.05), "The": math.log(0.05)}
    assert expected_score(top) == pytest.approx((4 * 0.6 + 5 * 0.3 + 3 * 0.05) / 0.95)
    assert expected_score({"The": 0.0}) is None
    assert parse_score("Score: 4/5") == 4 and parse_score("I rate it 2.") == 2
    assert parse_score("10 out of 10, 3.5") is None


# ------------------------------------------------------------------------------------------- HTTP backend


class FakeJudgeServer:
    """A test double for a remote OpenAI-compatible judge (vLLM serving an omni model cannot run here): a local
    HTTP server that checks each request's shape and answers with logprobs, plain text, errors or delays."""

    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "logprobs"  # "logprobs", "text", "slow", "error503", "error400"
        self.failures_left = 0  # error503: this many 503s, then answers
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                if server.mode == "slow":
                    time.sleep(1.0)
                if server.mode == "error400":
                    return self._send(400, {"error": {"message": "model 'nope' does not exist"}})
                if server.mode == "error503" and server.failures_left > 0:
                    server.failures_left -= 1
                    return self._send(503, {"error": "loading"})
                return self._send(200, server.reply(body))

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reply(self, body: dict) -> dict:
        text = next(c["text"] for c in body["messages"][1]["content"] if c["type"] == "text")
        # a different distribution per rubric, so the test can tell the rubrics apart
        p4 = 0.2 + 0.3 * [r in text for r in RUBRICS.values()].index(True)
        if self.mode == "text":
            return {"choices": [{"message": {"role": "assistant", "content": "I'd give it 4/5."}, "logprobs": None}]}
        top = [{"token": "4", "logprob": math.log(p4)}, {"token": "2", "logprob": math.log(0.9 - p4)},
               {"token": "Hmm", "logprob": math.log(0.1)}]
        return {"choices": [{"message": {"role": "assistant", "content": "4"},
                             "logprobs": {"content": [{"token": "4", "logprob": math.log(p4), "top_logprobs": top}]}}]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeJudgeServer()
    yield s
    s.close()


def _expected(p4: float) -> float:
    return (4 * p4 + 2 * (0.9 - p4)) / 0.9


def test_http_judge_sends_frames_audio_and_rubric_and_scores_from_logprobs(server, judge_samples, tmp_path):
    term = JudgeTerm(HTTPJudge(server.url, "omni-test", timeout_s=5), frames=FRAMES, cache=JudgeCache(tmp_path))
    result = term(judge_samples)
    assert len(server.requests) == 2 * len(RUBRICS)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "omni-test" and body["logprobs"] is True and body["top_logprobs"] == 20
    content = body["messages"][1]["content"]
    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(images) == FRAMES and all(u.startswith("data:image/jpeg;base64,") for u in images)
    first = cv2.imdecode(np.frombuffer(base64.b64decode(images[0].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (32, 32, 3)
    (audio,) = [c["input_audio"] for c in content if c["type"] == "input_audio"]
    assert audio["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 16000)
    texts = [c["text"] for r in server.requests for c in r["body"]["messages"][1]["content"] if c["type"] == "text"]
    assert all(any(rubric in t for t in texts) for rubric in RUBRICS.values())
    assert all("hello there" in t for t in texts)  # the transcript is given
    # expected scores from the logprobs, one column per rubric, the same for both samples (same reply)
    for j, name in enumerate(RUBRICS):
        assert result.diagnostics[name] == pytest.approx([_expected(0.2 + 0.3 * j)] * 2)
    assert result.values == pytest.approx([np.mean([(_expected(0.2 + 0.3 * j) - 1) / 4 for j in range(3)])] * 2)
    assert result.diagnostics["failed"].tolist() == [0, 0] and result.diagnostics["parsed_text"].tolist() == [0, 0]

    # cached: in memory, then on disk for a new term
    again = term(judge_samples)
    assert len(server.requests) == 6 and term.cache.hits == 6 and np.array_equal(again.values, result.values)
    fresh = JudgeTerm(HTTPJudge(server.url, "omni-test"), frames=FRAMES, cache=JudgeCache(tmp_path))
    fresh(judge_samples)
    assert len(server.requests) == 6
    # another model or frame count is another key
    JudgeTerm(HTTPJudge(server.url, "other-model"), frames=FRAMES, cache=JudgeCache(tmp_path))(judge_samples[:1])
    assert len(server.requests) == 9


def test_text_reply_is_parsed_when_there_are_no_logprobs(server, judge_samples):
    server.mode = "text"
    result = JudgeTerm(HTTPJudge(server.url, "omni-test"), rubrics=["lip_sync"], frames=FRAMES)(judge_samples[:1])
    assert result.diagnostics["lip_sync"][0] == 4 and result.diagnostics["parsed_text"][0] == 1
    assert result.values[0] == pytest.approx(0.75)


def test_a_reply_without_a_score_counts_as_the_middle_and_is_asked_again():
    assert math.isnan(rating_from_reply({"choices": [{"message": {"content": "no idea"}}]}).score)

    class Mute:
        model_id = "mute"
        calls = 0

        def rate(self, inputs, rubric):
            from rl.rewards.judge import Rating

            Mute.calls += 1
            return Rating(float("nan"), "none")

    frames = np.zeros((25, 8, 8, 3), np.uint8)
    sample = Sample(np.zeros(16000, np.float32), _silence(25), np.zeros((25, _d()), np.float32), frames=frames)
    term = JudgeTerm(Mute(), rubrics=["lip_sync"])
    for _ in range(2):
        result = term([sample])
        assert result.values[0] == 0.5 and result.diagnostics["failed"][0] == 1
    assert Mute.calls == 2


def _silence(frames):
    from engine.motion.generator import silence

    return silence(frames)


def _d():
    from engine.motion import spec

    return spec.D


def test_timeouts_are_retried_then_the_error_names_the_endpoint(server, judge_samples):
    server.mode = "slow"
    judge = HTTPJudge(server.url, "omni-test", timeout_s=0.2, retries=2, backoff_s=0.01)
    with pytest.raises(UserError, match=r"127\.0\.0\.1:\d+/v1/chat/completions unreachable after 2 tries"):
        judge.rate(JudgeInput.of(judge_samples[0], FRAMES), RUBRICS["lip_sync"])
    assert len(server.requests) == 2


def test_server_errors_are_retried_with_backoff(server, judge_samples):
    server.mode, server.failures_left = "error503", 2
    judge = HTTPJudge(server.url, "omni-test", timeout_s=5, retries=3, backoff_s=0.05)
    started = time.monotonic()
    rating = judge.rate(JudgeInput.of(judge_samples[0], FRAMES), RUBRICS["lip_sync"])
    assert rating.source == "logprobs" and len(server.requests) == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # waited backoff_s, then twice that


def test_client_errors_fail_at_once_and_a_closed_port_is_unreachable(server, judge_samples):
    server.mode = "error400"
    inputs = JudgeInput.of(judge_samples[0], FRAMES)
    with pytest.raises(UserError, match=r"refused the request: HTTP 400 .*does not exist.*'nope'"):
        HTTPJudge(server.url, "nope", retries=3, backoff_s=0.01).rate(inputs, RUBRICS["lip_sync"])
    assert len(server.requests) == 1
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(UserError, match=f"{url}/chat/completions unreachable after 2 tries .*vllm serve omni-test"):
        HTTPJudge(url, "omni-test", timeout_s=1, retries=2, backoff_s=0.01).rate(inputs, RUBRICS["lip_sync"])


# ------------------------------------------------------------------------------------------ local backend


def _tiny_tokenizer(image_token: str | None = None):
    """A word-level tokenizer over the judge's prompts (digits "1".."5" single tokens), with a chat template."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rl.rewards.judge import SYSTEM_PROMPT, prompt_text

    words = re.findall(r"\w+|[^\w\s]", " ".join([SYSTEM_PROMPT, prompt_text(" ".join(RUBRICS.values()), 4, 1.0,
                                                                              "hello there"), "system user assistant"]))
    specials = ["[UNK]", "[PAD]", "<s>", "</s>"] + ([image_token] if image_token else [])
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list("12345") + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": image_token}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                   eos_token="</s>", **extra)


def _text_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=1,
                       bos_token_id=2, eos_token_id=3)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer Llama and a word-level tokenizer with a chat template, saved with
    save_pretrained: the layout a downloaded judge has (no MLLM weights exist offline)."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_judge")
    LlamaForCausalLM(_text_config(len(tokenizer))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_vision_model_dir(tmp_path_factory):
    """A randomly initialised tiny LLaVA (CLIP vision tower, 28 px images, 4 tokens each) with its processor and
    chat template, saved with save_pretrained: the image path a real multimodal judge takes."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    tokenizer = _tiny_tokenizer("<image>")
    template = ("{% for m in messages %}{{ m['role'] }} :{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                " <image>{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}assistant :{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(len(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_vision_judge")
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_local_judge_reads_the_score_tokens_logits(tiny_model_dir, judge_samples):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = LocalJudge(tiny_model_dir)
    assert judge.processor is None and judge.score_ids is not None  # text-only: a tokenizer, no image processor
    inputs = JudgeInput.of(judge_samples[0], FRAMES)
    rating = judge.rate(inputs, RUBRICS["lip_sync"])
    assert rating.source == "logprobs" and 1 < rating.score < 5

    # the same number by hand: softmax of the next-token logits over "1".."5" after the chat-formatted prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = judge.encode(inputs, RUBRICS["lip_sync"])
    text = tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("system :") and text.endswith("assistant :") and "lip sync" in text.lower()
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    p = torch.softmax(logits[[tokenizer.convert_tokens_to_ids(d) for d in "12345"]], 0)
    assert rating.score == pytest.approx(float((p * torch.arange(1, 6)).sum()), abs=1e-5)


def test_local_judge_from_the_reward_config(tiny_model_dir, judge_samples):
    lines = []
    reward = CompositeReward.from_dict({"judge": {"weight": 1.0, "backend": "local", "path": str(tiny_model_dir),
                                                  "frames": FRAMES, "rubrics": ["lip_sync", "motion_quality"]}},
                                       log=lines.append)
    assert lines == [] and reward.needs_frames
    result = reward(judge_samples)
    assert set(result.terms) == {"judge"} and {"judge/lip_sync", "judge/motion_quality"} <= set(result.diagnostics)
    assert np.all((result.total > 0) & (result.total < 1))


def test_a_missing_model_directory_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'judge'} is not a transformers model directory"):
        JudgeTerm.from_options(JudgeOptions(backend="local", path=str(tmp_path / "judge")))


def test_local_multimodal_judge_sees_the_frames(tiny_vision_model_dir, judge_samples):
    judge = LocalJudge(tiny_vision_model_dir)
    assert type(judge.model).__name__ == "LlavaForConditionalGeneration" and judge.processor is not None
    inputs = JudgeInput.of(judge_samples[0], FRAMES)
    batch = judge.encode(inputs, RUBRICS["expressiveness"])
    assert batch["pixel_values"].shape[0] == FRAMES
    image_id = judge.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == FRAMES * 4  # 4 patch tokens per 28 px frame
    rating = judge.rate(inputs, RUBRICS["expressiveness"])
    other = judge.rate(JudgeInput(255 - inputs.frames, inputs.audio, inputs.transcript), RUBRICS["expressiveness"])
    assert rating.source == "logprobs" and 1 < rating.score < 5 and rating.score != other.score  # pixels matter
