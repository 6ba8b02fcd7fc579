# Each target creates .venv when missing and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: here it comes from the local CPU wheel; elsewhere pip fetches it.
TORCH := torch==2.13.0
RUN := $(BIN)/audioadv run

.PHONY: demo test venv dev results clean reproduce-zoo reproduce-uap reproduce-uap-budget reproduce-sparse \
        reproduce-smoothing reproduce-smoothing-scale reproduce-smoke reproduce-peers reproduce-msae bench-overhead \
        bench-av-recognizer bench-msae-recognizer

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# resemblyzer ships the GE2E speaker-encoder weights (pretrained.pt) that audioadv.models.speaker
# loads; its own audio code (librosa, webrtcvad) is not needed, hence --no-deps.
$(VENV)/.speaker: $(VENV)/.core
	$(BIN)/pip install -q --no-deps 'resemblyzer==0.1.4'
	touch $@

$(VENV)/.dev: $(VENV)/.core $(VENV)/.speaker
	$(BIN)/pip install -q -e '.[dev,asr,distributed]'
	touch $@

venv: $(VENV)/.core
dev: $(VENV)/.dev

# Synthesise speech, train a classifier, attack it with PGD; writes runs/demo (report.html, summary.json,
# results.sqlite; the checkpoint in runs/demo/models/classifier).
demo: $(VENV)/.core
	$(RUN) experiments/demo.toml --out runs/demo --report

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q tests

# Reproductions: each runs an experiment file into a run folder (rerun to resume) and prints its tables.
reproduce-smoke: $(VENV)/.core
	$(RUN) experiments/smoke.toml --out runs/smoke --report && $(BIN)/audioadv table runs/smoke

reproduce-zoo: $(VENV)/.core
	$(RUN) experiments/zoo.toml --out runs/zoo --quiet && $(BIN)/audioadv table runs/zoo

# The universal-perturbation experiments attack the zoo's models: they run in the zoo's folder and reuse them.
reproduce-uap: reproduce-zoo
	$(RUN) experiments/uap.toml --out runs/zoo --quiet && $(BIN)/audioadv table runs/zoo

reproduce-uap-budget: reproduce-zoo
	$(RUN) experiments/uap_budget.toml --out runs/zoo --quiet && $(BIN)/audioadv table runs/zoo

reproduce-smoothing: $(VENV)/.speaker
	$(RUN) experiments/smoothing.toml --out runs/smoothing --quiet && $(BIN)/audioadv table runs/smoothing

# The study's scale: hours on a CPU (the speaker model costs a few ms per noisy copy); add --ray ADDRESS to
# spread it over a cluster.
reproduce-smoothing-scale: $(VENV)/.speaker
	$(RUN) experiments/smoothing_scale.toml --out runs/smoothing-scale --quiet && $(BIN)/audioadv table runs/smoothing-scale

# The character CTC recogniser the speech experiments attack (CPU recipe, about an hour on one core): two
# stages, the second with the command grammar oversampled. Both stop by step counts.
runs/asr/model.safetensors: | $(VENV)/.dev
	$(BIN)/audioadv train-asr --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --steps 14144 --epochs 100 --out runs/asr-v2
	$(BIN)/audioadv train-asr --init runs/asr-v2 --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --steps 3552 --lr 7e-4 --epochs 100 --out runs/asr

# A larger recogniser for a GPU (3-layer BiGRU 256, 192 s batches, online room responses).
runs/asr-gpu/model.safetensors: | $(VENV)/.dev
	$(BIN)/audioadv train-asr --data 'synth-phrases?n=8000' --data 'synth-phrases?source=open&n=40000' --device cuda --batch-seconds 192 --eval-every 1000 --reverb 0.3 --epochs 1000 --steps 1732 --hidden 256 --layers 3 --out runs/asr-gpu-stage1
	$(BIN)/audioadv train-asr --data 'synth-phrases?n=8000' --data 'synth-phrases?n=8000' --data 'synth-phrases?n=8000' --data 'synth-phrases?source=open&n=40000' --device cuda --batch-seconds 192 --eval-every 500 --reverb 0.3 --epochs 1000 --steps 2236 --lr 7e-4 --init runs/asr-gpu-stage1 --out runs/asr-gpu

# audioadv against ART and foolbox on the demo's classifier (needs the bench extra).
reproduce-peers: demo
	$(BIN)/pip install -q -e '.[bench]'
	$(RUN) experiments/peers.toml --out runs/peers --quiet && $(BIN)/audioadv table runs/peers

# The model's own cost as the floor: every attack family and certification (a few minutes; writes runs/overhead),
# certification against ART (writes runs/certify-speed), and glibc's malloc against keep_freed_memory (runs/bench-malloc).
bench-overhead: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/overhead.py --quick --clock cpu --repeats 5
	$(BIN)/pip install -q -e '.[bench]'
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/certify_speed.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/malloc_faults.py

# MSAE and its naive alternatives on the audio-visual command classifier (about 40 minutes on one core).
reproduce-msae: $(VENV)/.core
	$(RUN) experiments/msae.toml --out runs/msae --quiet && $(BIN)/audioadv table runs/msae

# Audio-only, video-only and fused audio-visual recognisers, test CER by SNR (about an hour on one core; resumes).
bench-av-recognizer: $(VENV)/.core
	$(BIN)/python benchmarks/av_recognizer.py --out runs/av-asr

# MSAE on the fused recogniser that bench-av-recognizer trains: CW, IPC and Imperceptible with CW-l2 on the video.
bench-msae-recognizer: bench-av-recognizer
	$(BIN)/python benchmarks/msae_recognizer.py --out runs/msae-asr

reproduce-sparse: $(VENV)/.dev runs/asr/model.safetensors
	$(RUN) experiments/sparse.toml --out runs/sparse --quiet && $(BIN)/audioadv table runs/sparse

# docs/results.md from the run folders present (each table names the experiment file that produced it).
RESULT_RUNS ?= demo peers zoo smoothing-scale sparse msae av-asr msae-asr overhead certify-speed bench-malloc
results: $(VENV)/.core
	{ echo "# Results"; echo; echo "Generated by \`make results\` from the run folders under runs/; each table names the"; \
	  echo "experiment file (or benchmark) and the command that produced it."; \
	  for r in $(RESULT_RUNS); do if [ -f runs/$$r/results.sqlite ]; then t=$$($(BIN)/audioadv table runs/$$r) || exit 1; \
	  if [ -n "$$t" ]; then printf '\n## %s\n\n%s\n' "$$r" "$$t"; fi; fi; done; } > docs/results.md
	if [ -f runs/peers/results.sqlite ]; then $(BIN)/audioadv table runs/peers --into README.md --marker peers; fi
	if [ -f runs/certify-speed/results.sqlite ]; then $(BIN)/audioadv table runs/certify-speed --into README.md --marker certify; fi
	if [ -f runs/msae/results.sqlite ]; then $(BIN)/audioadv table runs/msae --into docs/msae.md --marker msae; fi
	if [ -f runs/av-asr/results.sqlite ]; then $(BIN)/audioadv table runs/av-asr --into docs/msae.md --marker av-asr; fi
	if [ -f runs/msae-asr/results.sqlite ]; then $(BIN)/audioadv table runs/msae-asr --into docs/msae.md --marker msae-asr; fi

clean:
	rm -rf $(VENV) runs .cache
