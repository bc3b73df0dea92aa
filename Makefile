# Set-up is idempotent: a stamp file remembers it, and it reruns when pyproject.toml changes.
PY ?= python3
export PIP_ROOT_USER_ACTION := ignore
APT_PKGS := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite alsa-utils pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins chromium chromium-driver \
	janus iproute2 nodejs node-express node-cors node-debug node-colors node-async node-body-parser node-es5-ext node-typedarray-to-buffer
# simple-whip-server (Meetecho's WHIP front for Janus) is a Debian package too; where apt refuses it (its node-websocket
# needs Debian's libnode108, which conflicts with a NodeSource nodejs) setup unpacks it under .cache/ instead.
WHIP_DIR := .cache/simple-whip-server
STAMP := .setup-done

.PHONY: setup demo serve test bench
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for c in espeak-ng festival flite aplay pactl chromium chromedriver janus node ip; do command -v $$c >/dev/null || missing=1; done; \
	for v in cmu_us_slt_arctic_hts ked_diphone; do [ -d /usr/share/festival/voices/*/$$v ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing speech tools (Debian): $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@if [ ! -f /usr/share/simple-whip-server/src/server.js ] && [ ! -f $(WHIP_DIR)/usr/share/simple-whip-server/src/server.js ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq simple-whip-server >/dev/null 2>&1 || { \
	    echo "apt refuses simple-whip-server beside this nodejs: unpacking it and node-websocket under $(WHIP_DIR)"; \
	    mkdir -p $(WHIP_DIR) && cd $(WHIP_DIR) && apt-get download -q simple-whip-server node-websocket && \
	    for d in *.deb; do dpkg-deb -x $$d .; done && rm -f *.deb; }; \
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
