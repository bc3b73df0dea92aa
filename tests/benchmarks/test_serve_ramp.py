"""benchmarks/serve_ramp.py: a real `avatar serve` process and a real visitor write the ramp's tables.

Structure only: timings mean nothing on shared CI cores, so nothing asserts that a count held."""

import json

import pytest

from benchmarks import serve_ramp


@pytest.mark.slow  # a server process (~15 s to start) and a 5 s stream
def test_one_visitor_ramp_writes_its_tables(tmp_path):
    out = tmp_path / "ramp"
    result = serve_ramp.main(["--max-sessions", "1", "--seconds", "5", "--size", "128", "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(result))
    (ramp,) = result["ramps"]
    (row,) = ramp["rows"]
    assert ramp["batching"] == "on" and row["visitors"] == 1 and not row["failed"], row
    assert 20 < row["slowest_fps"] < 30 and row["worst_engine_p95_ms"] > 100, row  # it streamed, over WebRTC
    assert row["server_core_pct"] > 5 and row["frames_dropped"] >= 0
    assert ramp["held"] == (1 if row["held"] else 0)
    text = out.with_suffix(".md").read_text()
    assert "| on | 1 |" in text and "visitor(s) held" in text
    assert "avatar serve: open http" in (tmp_path / "ramp_on.log").read_text()  # the server's own log, kept beside it


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        serve_ramp.parse_args(["--seconds", "1"])
