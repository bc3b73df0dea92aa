# Set-up is idempotent: a stamp file remembers it, and it reruns when pyproject.toml changes.
PY ?= python3
export PIP_ROOT_USER_ACTION := ignore
APT_PKGS := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite alsa-utils pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins chromium chromium-driver
STAMP := .setup-done

.PHONY: setup demo serve test bench
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for c in espeak-ng festival flite aplay pactl chromium chromedriver; do command -v $$c >/dev/null || missing=1; done; \
	for v in cmu_us_slt_arctic_hts ked_diphone; do [ -d /usr/share/festival/voices/*/$$v ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing speech tools (Debian): $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	# torch first and pinned: this version is a CPU wheel on disk; anything else pulls GBs of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	# mediapipe 0.10.21 (the last wheel with FaceMesh) pins protobuf<5, which breaks onnx; its real needs are in pyproject.
	$(PY) -m pip install -q --no-deps mediapipe==0.10.21
	$(PY) -m pip install -q -e ".[test,voices,tensorrt,rl]"
	@touch $@

demo: setup
	$(PY) -m engine.cli render --out out/talk.mp4

serve: setup
	$(PY) -m engine.cli serve

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m engine.cli bench --out benchmarks/results/bench
	$(PY) benchmarks/render_bench.py
	$(PY) benchmarks/generator_bench.py
	$(PY) benchmarks/stream_bench.py
