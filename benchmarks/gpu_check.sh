#!/usr/bin/env bash
# The one prepared check on a GPU machine (no internet): install the carried wheels and attnviz, run the
# GPU-relevant tests, run bench_gpu.py, (--samples) retrain the sample models, train every registry
# architecture for one epoch on cuda, and time the report's rebuild on the machine's cores (bench_build.py;
# last: it needs no GPU).
#
#   bash benchmarks/gpu_check.sh [--samples] [--only tests,train,bench,build,samples] [--budget SECONDS]
#
# Run from anywhere; it works in the repository root. Needs python3 with torch (CUDA), torchvision, timm,
# matplotlib, opencv-python-headless, click, rich, tensorboard, numpy, scipy, scikit-learn, tqdm, pytest and
# setuptools; the peers the benchmarks compare with come as wheels in .whl/ (git-ignored), made beforehand on
# a machine with pip (grad-cam has no wheel on PyPI, so one is built):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl captum==0.9.0 torchcam==0.5.0 ttach==0.0.3
#   python3 -m pip wheel --no-deps -w .whl grad-cam==1.5.7
# The script installs them into /tmp/site (on PYTHONPATH) and attnviz itself in editable mode.
# Results go to $OUT (default /tmp/gpu_check_out), at most a handful of files:
#   gpu_check.log  every part's output, each under a "==== part" header
#   status.txt     one line per part: ok, failed (exit code), timed out or skipped, with its seconds
#   gpu.json       bench_gpu.py's results (python benchmarks/bench_gpu.py --from-json gpu.json --write)
#   build.json     bench_build.py's results (python benchmarks/bench_build.py --from-json build.json --write)
#   samples/*.pth  with --samples: the three sample models retrained longer
# Trained checkpoints of the one-epoch runs stay in $WORK (they are large and only prove training runs).
# Each part runs under `timeout`, capped by what is left of --budget (default 460 s for the parts without
# --samples; --samples adds 300 s); a part that fails or times out does not stop the others.
# Exit code: 0 when every part that ran passed, else 1.

set -u
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check_work}
BUDGET=460
SAMPLES_BUDGET=300
PARTS="tests,train,bench,build"
while [ $# -gt 0 ]; do
    case "$1" in
    --samples) PARTS="$PARTS,samples" ;;
    --only) PARTS="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --samples, --only PARTS, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done
case ",$PARTS," in *,samples,*) BUDGET=$((BUDGET + SAMPLES_BUDGET)) ;; esac

mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_check.log"
STATUS="$OUT/status.txt"
: >"$LOG"
: >"$STATUS"
export PYTHONUNBUFFERED=1
START=$(date +%s)
FAILED=0

wanted() { case ",$PARTS," in *,"$1",*) return 0 ;; *) return 1 ;; esac; }

# run NAME CAP COMMAND...: run COMMAND (a program or an exported function) under timeout, which ends its
# whole process group (CAP seconds, or less when the budget runs out); output into the log, outcome into
# status.txt.
run() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        echo "$name: skipped (no time left)" | tee -a "$STATUS"
        FAILED=1
        return 0
    fi
    echo "==== $name (limit ${limit}s): $*" >>"$LOG"
    local t0 rc
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        echo "$name: ok (${took}s)" | tee -a "$STATUS"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "$name: timed out after ${took}s" | tee -a "$STATUS"
        FAILED=1
    else
        echo "$name: failed, exit $rc (${took}s)" | tee -a "$STATUS"
        FAILED=1
    fi
}

attnviz_cli() { python3 -m attnviz.cli.main "$@"; }

install_all() {
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
            return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
    python3 -c "import attnviz.cli.main, pytorch_grad_cam, captum, torchcam, timm; print('imports ok')"
}

gpu_tests() {
    local files=() f
    for f in tests/test_train_device_paths.py tests/test_attention_styles.py tests/test_explain_device.py tests/test_transfer.py \
        tests/test_capturing.py tests/test_cam.py tests/test_report_throughput.py tests/test_capture_edge_cases.py \
        tests/test_report_batches.py; do
        if [ -f "$f" ]; then files+=("$f"); else echo "(no $f here)"; fi
    done
    python3 -m pytest -q -rs "${files[@]}" -p no:cacheprovider
}

export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L 2>&1 | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

export -f attnviz_cli install_all gpu_tests
run install 60 install_all

if wanted tests; then
    run tests 90 gpu_tests
fi

if wanted bench; then
    run bench 220 python3 benchmarks/bench_gpu.py --json "$OUT/gpu.json"
fi

if wanted samples; then
    # samples/README.md's commands, longer (the bundled ones had 4 epochs on 10,000 images on a CPU).
    mkdir -p "$OUT/samples" "$WORK/samples"
    for arch in cnn se_cnn cbam_cnn; do
        run "samples $arch" 100 attnviz_cli train --arch "$arch" --data shapes --epochs 15 --train-size 20000 \
            --test-size 2000 --seed 0 --no-progress --out "$WORK/samples/$arch.pth" &&
            cp "$WORK/samples/$arch.pth" "$OUT/samples/" 2>/dev/null
    done
fi

if wanted train; then
    archs=$(python3 -c "from attnviz.models import list_architectures; print(*list_architectures())" 2>>"$LOG")
    [ -n "$archs" ] || { echo "train: failed (no architectures: attnviz does not import)" | tee -a "$STATUS"; FAILED=1; }
    for arch in $archs; do
        run "train $arch" 25 attnviz_cli train --arch "$arch" --data shapes --epochs 1 --train-size 512 \
            --test-size 256 --device cuda --no-progress --out "$WORK/t_$arch.pth"
    done
fi

if wanted build; then  # last: the report's rebuild by build workers, on this machine's cores (no GPU needed)
    run build 60 python3 benchmarks/bench_build.py --json "$OUT/build.json"
fi

echo "==== done in $(($(date +%s) - START))s of ${BUDGET}s; $([ $FAILED -eq 0 ] && echo 'every part passed' || echo 'see status.txt and gpu_check.log')"
exit $FAILED
