from pathlib import Path

import numpy as np
import pytest

from engine.errors import UserError
from rl.configs import DEFAULT_REWARD
from rl.rewards import CompositeReward
from rl.rewards.guards import GuardTerm
from rl.rewards.sync import SyncTerm
from rl.rewards.temporal import TemporalTerm

TINY = Path(__file__).with_name("tiny.toml")


def test_weights_and_options_come_from_the_config_and_no_judge_is_said_once(samples):
    lines = []
    reward = CompositeReward.from_config(TINY, log=lines.append)
    assert reward.weights == {"sync": 2.0, "temporal": 0.5, "guards": 1.0} and not reward.needs_frames
    assert len(lines) == 1 and "no MLLM judge" in lines[0] and "sync x2" in lines[0]
    assert reward.terms[1][0].options.head_weight == 0.25

    names = ["real", "shifted", "frozen", "shaken", "stuck_open", "popping"]
    batch = [samples[n] for n in names]
    result = reward(batch)
    # the total is the weighted sum of the terms, each kept on its own
    separate = {"sync": SyncTerm()(batch).values, "temporal": reward.terms[1][0](batch).values,
                "guards": GuardTerm()(batch).values}
    for name, values in separate.items():
        assert np.allclose(result.terms[name], values)
    assert np.allclose(result.total, 2 * separate["sync"] + 0.5 * separate["temporal"] + separate["guards"])
    total = dict(zip(names, result.total))
    assert max(total, key=total.get) == "real"  # every hack or fault scores below the healthy motion
    # shifted (320 ms late) moves its mouth where speech just ended, within the stuck-open guard's margin: the
    # sync term, not a guard, marks it (its total is below the healthy motion's, above)
    assert result.tripped.tolist() == [False, False, True, True, True, False]

    log = result.summary()
    assert log["reward"] == pytest.approx(result.total.mean())
    assert {"reward/sync", "reward/temporal", "reward/guards", "sync/confidence", "temporal/mouth_roughness",
            "guards/shaking_tripped", "tripped"} <= set(log)
    assert all(isinstance(v, float) for v in log.values())


def test_the_default_config_loads_every_term_but_the_judge():
    lines = []
    reward = CompositeReward.from_config(DEFAULT_REWARD, log=lines.append)
    assert set(reward.weights) == {"sync", "alignment", "perceptual", "temporal", "guards"}
    assert reward.needs_frames and len(lines) == 1


def test_config_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "reward.toml"
    bad.write_text("[temporal]\nweight = 1\nhead_wieght = 0.3\n")
    with pytest.raises(UserError, match=r"reward.toml: \[temporal\] has unknown keys \['head_wieght'\]"):
        CompositeReward.from_config(bad)
    bad.write_text("[tempo]\nweight = 1\n")
    with pytest.raises(UserError, match=r"unknown reward terms \['tempo'\]"):
        CompositeReward.from_config(bad)
    bad.write_text("[judge]\nweight = 1\nbackend = 'grpc'\n")
    with pytest.raises(UserError, match=r"\[judge\]: backend must be"):
        CompositeReward.from_config(bad)
    bad.write_text("[guards]\nweight = 0\n")
    with pytest.raises(UserError, match="no terms"):
        CompositeReward.from_config(bad)
    with pytest.raises(UserError, match="nope.toml does not exist"):
        CompositeReward.from_config(tmp_path / "nope.toml")


def test_terms_can_be_composed_in_code(samples):
    reward = CompositeReward([(TemporalTerm(), 1.0), (GuardTerm(), 3.0)])  # no log: silent
    result = reward([samples["real"], samples["frozen"]])
    assert result.total[0] == 0 and result.total[1] == 3 * result.terms["guards"][1] < 0
