"""A perturbed tiny generator checkpoint and an RL config over it and the shared tiny corpus (built once a session)."""


import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny networks: intra-op threads cost more than they give (8x slower steps on a loaded 2-core runner)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_REWARD = {"temporal": {"weight": 1.0}, "guards": {"weight": 1.0}}  # cheap terms: no expert, no pixels


@pytest.fixture(scope="session")
def tiny_model():
    """A MotionConfig.tiny() generator with every weight perturbed, so that audio, emotion and the cache all
    change its output (at initialisation the zero-initialised AdaLN gates hide them)."""
    from engine.motion.model import MotionConfig, MotionTransformer

    torch.manual_seed(0)
    model = MotionTransformer(MotionConfig.tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    from engine.io.checkpoint import save_checkpoint
    from engine.motion.baseline import EMOTIONS

    path = tmp_path_factory.getbasetemp() / "tiny_motion.safetensors"
    return save_checkpoint(path, tiny_model, tiny_model.config, emotions=list(EMOTIONS), note="rl tests")


@pytest.fixture
def make_config(corpus_dir, tiny_checkpoint, tmp_path):
    """config(name, train=..., rollout=..., reward=...) -> the path of an rl.toml writing to tmp_path/name."""
    def make(name="run", **tables):
        return write_config(tmp_path / f"{name}.toml", corpus_dir, tiny_checkpoint, tmp_path / name, **tables)
    return make


def write_config(path, data, checkpoint, out, train=None, rollout=None, reward=TINY_REWARD):
    """An rl.toml for a seconds-long run: 2 prompts of ~1 s, groups of 3, 4 steps, LoRA rank 2."""
    train = {"steps": 2, "prompts": 2, "pool": 2, "min_seconds": 0.8, "max_seconds": 1.2, "minibatches": 2,
             "lora_rank": 2, "eval_every": 2, "eval_prompts": 1, "eval_samples": 2, "save_every": 1,
             "lr": 1e-3, "dpo_batch": 4} | (train or {})
    rollout = {"group": 3, "steps": 4, "train_steps": [1, 2]} | (rollout or {})

    def table(name, values):
        return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())

    text = f'data = "{data}"\nout = "{out}"\ncheckpoint = "{checkpoint}"\n' + table("train", train) + \
        table("rollout", rollout) + "".join(table(f"reward.{k}", v) for k, v in reward.items())
    path.write_text(text)
    return path


def toml_value(v):
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)
