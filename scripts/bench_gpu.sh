#!/usr/bin/env bash
# One-command benchmark of txt2img against the same networks in PyTorch eager, built and run with the PyTorch that
# is installed (python3's torch, its LibTorch, its CUDA). Made for a fresh GPU machine with no network: run
# scripts/gpu-deps.sh on a Debian 12 machine first and carry .deps/carry there; the build then takes every other
# dependency from Debian's packages unpacked under .deps/root. Prints one table (and writes it, with every JSON
# record and log, to build-bench/results/, or with --out to that folder).
#
#   scripts/bench_gpu.sh                                   # CUDA: 512x512, 50 DDIM steps, CFG 7.5, fp16
#   scripts/bench_gpu.sh --device cpu --size 128 --steps 2 --threads 2 --model /tmp/full   # proves it on a CPU
#   --out DIR: results written into DIR/results as they come, packed at the end as DIR/results.tar.gz beside
#   DIR/table.md (the device tool returns only a few files per call); --budget S: rows
#   not started S seconds after the start are skipped; --row-timeout S: each row is stopped after S s (240);
#   --only NAME,NAME: run only these rows (names as in results/: ours_b1, eager_b1, cli, ...).
#
# Rows: txt2img-bench (our pipeline, stage by stage) at batch 1 with the command line's pipeline options (on CUDA: CUDA
# graph, channels_last, unprofiled TorchScript), with --low-vram, cuDNN's algorithm search and bf16 on top, and plain,
# and at --batch-large, and --low-vram with --parked-turns, and with each of scaled_dot_product_attention's CUDA kernels
# alone in the U-Net, and with the allocator's expandable segments; a profile of one U-Net call by operator and kernel
# (scripts/profile_unet.py) and rewrites of the U-Net timed against it (scripts/unet_variants.py); bench_eager.py (our
# converter's modules, same weights, PyTorch eager, SDPA where PyTorch has it) at the same settings; the txt2img command
# line end to end (load, 2 images, safety checker on), and with --low-vram; the command line on a prompt file of
# features that change the U-Net's calls (long prompts, AND, prompt editing, samplers, guidance rescale, hires) with and
# without the CUDA graph, in fp16 and fp32, image by image; both sides decoding with TAESD (--decoder taesd); then the
# pixels of each variant against plain TorchScript calls; last, on CUDA, the eager U-Net under torch.compile. Peak VRAM
# is given three ways: the CUDA caching allocator's peak allocated and reserved bytes (each process's own report, as
# torch.cuda.max_memory_allocated / max_memory_reserved), and the card's used memory (nvidia-smi, sampled every 100 ms)
# above what it was before the run, which includes the CUDA context. On the CPU the column is the peak resident set.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
device=cuda size=512 steps=50 dtype="" threads=0 batch_large=4 runs=2 model="" out="" budget=0 row_timeout=240 only=""
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case $1 in
    --device) device=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --batch-large) batch_large=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --row-timeout) row_timeout=$2; shift 2 ;;
    --only) only=,$2,; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "bench_gpu.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[[ -n $dtype ]] || { [[ $device == cpu ]] && dtype=fp32 || dtype=fp16; }
work=$root/build-bench
model=${model:-$work/model}
# With --out the results are written there as they come, so a run cut short still leaves every finished row.
results=${out:+$out/results}
results=${results:-$work/results}
rm -rf "$results"
mkdir -p "$results"
log() { echo "bench_gpu.sh: $*" >&2; }
trap 'log "stopped at line $LINENO: $BASH_COMMAND (exit $?)"' ERR
py() { "$root/scripts/with-torch-python" "$@"; }
started=$SECONDS
# Facts only: nothing here may stop the script (under pipefail, `ldd --version | head -1` dies of SIGPIPE).
(
  set +e +o pipefail
  echo "date: $(date -u +%FT%TZ)"; uname -a; cat /etc/os-release 2>/dev/null | head -3; nproc
  cmake --version | head -1; ninja --version 2>/dev/null || true; c++ --version | head -1; ldd --version | head -1
  nvidia-smi; command -v nvcc && nvcc --version | tail -2; command -v python3 python
  true
) >"$results/env.txt" 2>&1

# 1. The PyTorch to build against and compare with.
py - >"$results/torch.json" <<'EOF'
import json, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cmake_prefix_path": torch.utils.cmake_prefix_path,
                  "cxx11_abi": torch.compiled_with_cxx11_abi()}))
EOF
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$results/torch.json" "$1"; }
log "PyTorch $(field torch), CUDA $(field cuda), GPU $(field gpu)"
# Wheels before PyTorch 2.7 use the pre-C++11 std::string ABI. Our code is compiled with LibTorch's flags, and
# talks to Debian's C++ libraries only where no std::string crosses (ICU's UnicodeString API; SentencePiece behind
# the C interface of its own module, which is built without LibTorch's flags), so either ABI links.
log "C++11 string ABI: $(field cxx11_abi)"
if [[ $device == cuda* && $(field gpu) == None ]]; then log "this PyTorch sees no CUDA device"; exit 1; fi

# 2. Dependencies: Debian's packages carried from scripts/gpu-deps.sh, else the system's.
deps=$root/.deps
prefix_path=""
torch_cmake=$(field cmake_prefix_path)
[[ -f $torch_cmake/Torch/TorchConfig.cmake ]] && prefix_path=$torch_cmake  # else CMake finds the system's LibTorch
cmake_args=()
if [[ ! -d $deps/root && -f $deps/carry/debian-root.tar.xz ]]; then
  mkdir -p "$deps/root"
  tar -C "$deps/root" -xJf "$deps/carry/debian-root.tar.xz"
fi
deps_lib=""
if [[ -d $deps/root ]]; then
  log "dependencies from $deps/root"
  prefix_path+="${prefix_path:+;}$deps/root/usr"
  deps_lib=$deps/root/usr/lib/x86_64-linux-gnu
  if ! command -v pkg-config >/dev/null; then
    # Debian's pkgconf finds its own library through this wrapper.
    mkdir -p "$work/bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$deps_lib" "$deps/root/usr/bin/pkgconf" >"$work/bin/pkg-config"
    chmod +x "$work/bin/pkg-config"
    cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$work/bin/pkg-config")
  fi
fi
# Our binaries find the carried libraries' own dependencies (ICU's data library) this way; set for them alone.
ours_env=(env "LD_LIBRARY_PATH=${deps_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")

# 3. The model bundle (exported by this PyTorch, in the background) and the build.
export_pid=""
if [[ ! -f $model/model.json ]]; then
  vocab=""
  for candidate in "$deps/carry/bpe_simple_vocab_16e6.txt.gz" "$root/../shared/clip/bpe_simple_vocab_16e6.txt.gz"; do
    [[ -f $candidate ]] && { vocab=$candidate; break; }
  done
  [[ -n $vocab ]] || { log "no CLIP vocabulary to build a bundle with (run scripts/gpu-deps.sh)"; exit 1; }
  log "exporting a random-weight SD v1.5 bundle into $model"
  "$root/scripts/convert.py" --random-full --vocab "$vocab" --out "$model" >"$results/export.log" 2>&1 &
  export_pid=$!
fi
# A CUDA LibTorch's CMake package locates the toolkit through nvcc; machines often have it only off PATH.
if [[ $device == cuda* ]] && ! command -v nvcc >/dev/null; then
  for cuda_bin in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [[ -x $cuda_bin/nvcc ]] && { PATH=$cuda_bin:$PATH; log "nvcc from $cuda_bin"; break; }
  done
fi
# A build folder configured before tcmalloc's default changed for CUDA keeps it on (it aborts with CUDA wheels).
[[ $device == cuda* ]] && cmake_args+=(-DTXT2IMG_TCMALLOC=OFF)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# A build tree configured for another PyTorch, prefix or generator cannot be reused.
config="$prefix_path ${cmake_args[*]} ${generator[*]}"
[[ -f $work/cmake/bench-config && $(cat "$work/cmake/bench-config") == "$config" ]] || rm -rf "$work/cmake"
log "building (log: $results/build.log)"
if ! { cmake -S "$root" -B "$work/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
         ${prefix_path:+"-DCMAKE_PREFIX_PATH=$prefix_path"} "${cmake_args[@]}" &&
       cmake --build "$work/cmake" -j"$(nproc)" --target txt2img_bench; } >"$results/build.log" 2>&1; then
  tail -30 "$results/build.log" >&2
  log "build failed"
  [[ -z $export_pid ]] || kill "$export_pid" 2>/dev/null || true
  exit 1
fi
echo "$config" >"$work/cmake/bench-config"
# The command line is measured too where it builds; the stage timings need only the library.
have_cli=1
cmake --build "$work/cmake" -j"$(nproc)" --target txt2img_cli >>"$results/build.log" 2>&1 || {
  have_cli=0
  log "the txt2img command line did not build (see $results/build.log); its rows are left out"
}
"${ours_env[@]}" ldd "$work/cmake/txt2img-bench" >"$results/ldd.txt" 2>&1 || true
if [[ -n $export_pid ]] && ! wait "$export_pid"; then
  tail -20 "$results/export.log" >&2
  log "bundle export failed"
  exit 1
fi
log "built and exported after $((SECONDS - started)) s"

# 4. The runs, most important first. Each writes results/NAME.json (its JSON output), NAME.log, and NAME.mem (peak
# memory above idle); each is stopped after --row-timeout seconds, and rows not started within --budget seconds of
# the start are skipped, so that the table is printed within a device session's time.
[[ $device == cuda ]] && device_index=0 || device_index=${device#cuda:}
measure() {
  local name=$1; shift
  local watcher="" idle=0
  if [[ -n $only && $only != *",$name,"* ]]; then
    return
  fi
  if ((budget > 0 && SECONDS - started > budget)); then
    log "skip $name (past --budget $budget s)"
    echo "skipped: past the --budget of $budget s" >"$results/$name.failed"
    return
  fi
  if [[ $device == cuda* ]]; then
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$device_index" | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$device_index" -lms 100 \
      >"$results/$name.samples" &
    watcher=$!
  fi
  log "run $name"
  if timeout "$row_timeout" "$@" >"$results/$name.json" 2>"$results/$name.log"; then
    log "  done after $((SECONDS - started)) s"
  else
    log "  $name failed (exit $?): $(tail -1 "$results/$name.log")"
    echo "$name failed: $(tail -1 "$results/$name.log")" >"$results/$name.failed"
  fi
  if [[ -n $watcher ]]; then
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    sort -n "$results/$name.samples" | tail -1 | awk -v idle="$idle" '{print $1 - idle}' >"$results/$name.mem"
  fi
}
common=(--model "$model" --device "$device" --dtype "$dtype" --width "$size" --height "$size" --steps "$steps")
((threads > 0)) && common+=(--threads "$threads")
bench=("${ours_env[@]}" "$work/cmake/txt2img-bench" "${common[@]}" --no-safety-checker)
eager=("$root/scripts/with-torch-python" "$root/scripts/bench_eager.py" "${common[@]}")
# The command line's own pipeline options (src/cli/generate.cpp): on CUDA the U-Net replayed as a CUDA graph with
# NHWC convolutions, TorchScript unprofiled; on the CPU unprofiled TorchScript calls.
default=(--plain-executor)
[[ $device == cuda* ]] && default+=(--cuda-graph --channels-last)
# Two warm-up batches: TorchScript's profiling executor profiles a module's first call and optimises on its second,
# and the text encoder and VAE run only once or twice a batch. Rows in the order of what is least known.
measure ours_b1_default "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" "${default[@]}"
measure eager_b1 "${eager[@]}" --batch 1 --warmup 2 --runs "$runs"
# The U-Net's scaled_dot_product_attention kernel, each allowed alone (PyTorch's own choice depends on its version,
# the card and cuDNN's version; a kernel that cannot serve one of the U-Net's calls fails its row).
if [[ $device == cuda* ]]; then
  for kernel in flash memory-efficient cudnn; do
    measure "ours_b1_default_attention_${kernel//-/_}" "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" \
      "${default[@]}" --attention-kernel "$kernel"
  done
fi
# Where the U-Net call's time goes, by operator and kernel (scripts/profile_unet.py: the bundle's unet.pt called as the
# command line calls it, with the CUDA graph's replay time beside the kernels' sum); on CUDA also without
# channels_last, whose layout copies around each GroupNorm it shows.
profile=("$root/scripts/with-torch-python" "$root/scripts/profile_unet.py" --model "$model" --device "$device"
         --dtype "$dtype" --width "$size" --height "$size")
((threads > 0)) && profile+=(--threads "$threads")
# Rewrites of the U-Net that keep its values, each timed as a replayed CUDA graph against the unchanged module
# (scripts/unet_variants.py: NHWC GroupNorm, fused attention projections, one time-embedding projection, each
# attention kernel).
rewrites=("$root/scripts/with-torch-python" "$root/scripts/unet_variants.py" --model "$model" --device "$device"
          --dtype "$dtype" --width "$size" --height "$size")
if [[ $device == cuda* ]]; then
  measure profile_unet "${profile[@]}" --channels-last
  measure unet_variants "${rewrites[@]}" --channels-last
else
  measure profile_unet "${profile[@]}"
  measure unet_variants "${rewrites[@]}" --replays 2 --rounds 1
fi
if ((have_cli)); then
  prompt="a photograph of an astronaut riding a horse"
  cli=("${ours_env[@]}" "$work/cmake/txt2img" --model "$model" --device "$device" --dtype "$dtype" -W "$size"
       -H "$size" --steps "$steps" --images-per-prompt 2 --seed 1 --json --overwrite)
  ((threads > 0)) && cli+=(--threads "$threads")
  measure cli "${cli[@]}" -o "$results/cli/{index}.png" "$prompt"
  measure cli_low_vram "${cli[@]}" --low-vram -o "$results/cli_low_vram/{index}.png" "$prompt"
else
  echo "the command line did not build" >"$results/cli.failed"
fi
measure ours_b1_default_low_vram "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" "${default[@]}" --low-vram
[[ $device == cuda* ]] && measure ours_b1_default_low_vram_parked "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" \
  "${default[@]}" --low-vram --parked-turns
# PyTorch's caching allocator with expandable segments (PYTORCH_CUDA_ALLOC_CONF, read when CUDA starts): blocks that
# grow in place instead of new segments, which may bring the reserved peak, over issue 6's 3.5 GB and 2 GB where the
# allocated peak is under them, down towards the allocated one.
if [[ $device == cuda* ]]; then
  expandable=(env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)
  if ((have_cli)); then
    measure cli_expandable_segments "${expandable[@]}" "${cli[@]}" -o "$results/cli_expandable_segments/{index}.png" \
      "$prompt"
    measure cli_low_vram_expandable_segments "${expandable[@]}" "${cli[@]}" --low-vram \
      -o "$results/cli_low_vram_expandable_segments/{index}.png" "$prompt"
  fi
  measure ours_b1_default_expandable_segments "${expandable[@]}" "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" \
    "${default[@]}"
fi

# Features that change the U-Net's calls (--long-prompts with a prompt and a negative prompt read apart, composable AND
# rows, prompt editing, samplers that step on the device outside the graph, guidance rescale, a hires pass at another
# latent size), from one command-line run with the CUDA graph and one without, two images a line denoised together (so
# that two graphs of one size share a memory pool): their images must be identical. No emphasis weights: on random
# weights the text encoder's last layer norm makes every token's mean 0, so emphasis's mean restore divides rounding
# noise by rounding noise (docs/PERFORMANCE.md, GPU 2026-11-27).
if ((have_cli)); then
  long=$(printf 'a very detailed photograph of an old stone lighthouse on a rocky coast at dusk, %.0s' 1 2 3 4 5)
  cat >"$results/features.jsonl" <<FEATURES
{"prompt": "$long", "negative_prompt": "blurry", "long_prompts": true}
{"prompt": "cheap", "negative_prompt": "$long", "long_prompts": true}
{"prompt": "a red cube AND a blue sphere:0.5", "emphasis": true}
{"prompt": "[a cat:a dog:0.5], masterpiece", "emphasis": true, "sampler": "dpmpp_2m_karras"}
{"prompt": "a castle", "sampler": "unipc"}
{"prompt": "a castle", "sampler": "heun", "steps": 10}
{"prompt": "a castle", "guidance_rescale": 0.7, "sampler": "euler_a"}
{"prompt": "a castle", "hires_scale": 1.5, "hires_steps": 10}
FEATURES
  features=("${ours_env[@]}" "$work/cmake/txt2img" --model "$model" --device "$device" --dtype "$dtype" -W "$size"
            -H "$size" --steps "$steps" --seed 5 --images-per-prompt 2 --batch-size 2 --json --overwrite
            --from-file "$results/features.jsonl")
  ((threads > 0)) && features+=(--threads "$threads")
  # --no-cuda-graph also turns channels_last off, whose fp16 rounding moves pixels by a level; in fp32 it moves
  # none, so there an image that differs points at the graph itself.
  suffixes=("")
  [[ $dtype == fp32 ]] || suffixes+=(_fp32)
  for suffix in "${suffixes[@]}"; do
    features_dtype=${suffix#_}
    measure "features_cuda_graph$suffix" "${features[@]}" --dtype "${features_dtype:-$dtype}" \
      -o "$results/features/cuda_graph$suffix/{index}.png"
    measure "features_no_cuda_graph$suffix" "${features[@]}" --dtype "${features_dtype:-$dtype}" --no-cuda-graph \
      -o "$results/features/no_cuda_graph$suffix/{index}.png"
  done
fi
if [[ $device == cuda* ]]; then
  measure ours_b1_default_cudnn_benchmark "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" "${default[@]}" \
    --cudnn-benchmark
  measure ours_b1_default_bf16 "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" "${default[@]}" --dtype bf16
  measure ours_b1_cuda_graph_channels_last "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" --cuda-graph --channels-last
  measure profile_unet_nchw "${profile[@]}"
fi
measure ours_b1_default_taesd "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" "${default[@]}" --decoder taesd
measure eager_b1_taesd "${eager[@]}" --batch 1 --warmup 2 --runs "$runs" --decoder taesd
# Pixels: the same two images (seeds 2 and 3) from each variant, compared with the plain run's below the table.
# --low-vram on the default must match the default exactly (only where the modules wait differs).
variants=("plain:" "default:${default[*]}" "default_low_vram:${default[*]} --low-vram" "optimize:--graph optimize")
[[ $device == cuda* ]] && variants+=("default_bf16:${default[*]} --dtype bf16"
                                     "default_low_vram_parked:${default[*]} --low-vram --parked-turns")
for variant in "${variants[@]}"; do
  # shellcheck disable=SC2206  # the flags are meant to split
  flags=(${variant#*:})
  measure "pixels_${variant%%:*}" "${bench[@]}" --batch 2 --warmup 1 --runs 1 "${flags[@]}" \
    --save-images "$results/pixels/${variant%%:*}"
done
measure ours_b1 "${bench[@]}" --batch 1 --warmup 2 --runs "$runs"
measure ours_b${batch_large}_default "${bench[@]}" --batch "$batch_large" --warmup 2 --runs 1 "${default[@]}"
measure eager_b${batch_large} "${eager[@]}" --batch "$batch_large" --warmup 2 --runs 1
measure ours_b${batch_large} "${bench[@]}" --batch "$batch_large" --warmup 2 --runs 1
measure ours_b1_optimize "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" --graph optimize
measure ours_b1_channels_last "${bench[@]}" --batch 1 --warmup 2 --runs "$runs" --channels-last
# torch.compile on the eager side (PyTorch >= 2.0; the warm-up batches compile): its default mode, and
# reduce-overhead, which replays CUDA graphs as txt2img does.
if [[ $device == cuda* ]]; then
  measure eager_b1_compile "${eager[@]}" --batch 1 --warmup 2 --runs "$runs" --compile default
  measure eager_b1_compile_reduce_overhead "${eager[@]}" --batch 1 --warmup 2 --runs "$runs" --compile reduce-overhead
fi

# 5. The table.
python3 - "$results" "$device" "$dtype" "$size" "$steps" "$batch_large" <<'EOF' | tee "$results/table.md"
import datetime, json, os, sys
results, device, dtype, size, steps, big = sys.argv[1:]
torch_info = json.load(open(os.path.join(results, "torch.json")))

def load(name):
    path = os.path.join(results, name + ".json")
    failed = os.path.join(results, name + ".failed")
    if os.path.exists(failed):
        return {"failed": open(failed).read().strip()}
    if not os.path.exists(path):
        return None
    lines = [l for l in open(path) if l.strip().startswith("{")]
    records = [json.loads(l) for l in lines]
    if name.startswith("cli"):  # txt2img --json: one record per image, then the summary
        images = [r for r in records if r.get("event") == "image"]
        summary = next(r for r in records if r.get("event") == "summary")
        per_image = [r["timings"]["generate_s"] for r in images]
        peaks = summary.get("peak_memory_mib", {})
        record = {"load_s": summary["load_s"], "seconds_per_image": per_image[-1],
                  "first_image_s": per_image[0], "total_s": summary["total_s"], "batch": 1,
                  "peak_rss_mb": peaks.get("host_rss"), "peak_vram_allocated_mb": peaks.get("vram_allocated"),
                  "peak_vram_reserved_mb": peaks.get("vram_reserved")}
    else:
        record = records[-1]
        decodes = sorted(run["decode_s"] for run in record.get("runs", []))
        if decodes:
            record["decode_s"] = decodes[len(decodes) // 2]
        if record.get("warmup_s"):  # the first batch after loading: what a one-image run waits for
            record["first_image_s"] = record["warmup_s"][0] / record["batch"]
    mem = os.path.join(results, name + ".mem")
    if os.path.exists(mem):
        record["mem_mb"] = float(open(mem).read())
    elif "peak_rss_mb" in record:
        record["mem_mb"] = record["peak_rss_mb"]
    return record

def fmt(value, spec):
    return "" if value is None else format(value, spec)

rows = [
    ("ours_b1_default", "txt2img-bench, batch 1, the command line's pipeline options"),
    ("ours_b1_default_attention_flash", "txt2img-bench, batch 1, the same with --attention-kernel flash"),
    ("ours_b1_default_attention_memory_efficient",
     "txt2img-bench, batch 1, the same with --attention-kernel memory-efficient"),
    ("ours_b1_default_attention_cudnn", "txt2img-bench, batch 1, the same with --attention-kernel cudnn"),
    ("ours_b1_default_low_vram", "txt2img-bench, batch 1, the same with --low-vram"),
    ("ours_b1_default_low_vram_parked", "txt2img-bench, batch 1, the same with --low-vram --parked-turns"),
    ("ours_b1_default_cudnn_benchmark", "txt2img-bench, batch 1, the same with --cudnn-benchmark"),
    ("ours_b1_default_bf16", "txt2img-bench, batch 1, the same in bf16"),
    ("ours_b1_default_taesd", "txt2img-bench, batch 1, the command line's options, --decoder taesd"),
    ("eager_b1_taesd", "PyTorch eager, batch 1, TAESD decoder"),
    ("ours_b1_cuda_graph_channels_last", "txt2img-bench, batch 1, --cuda-graph --channels-last (profiling executor)"),
    ("ours_b1", "txt2img-bench, batch 1, plain TorchScript calls"),
    ("ours_b1_optimize", "txt2img-bench, batch 1, plain, --graph optimize"),
    ("ours_b1_channels_last", "txt2img-bench, batch 1, plain, --channels-last"),
    ("eager_b1", "PyTorch eager, batch 1"),
    ("eager_b1_compile", "PyTorch, batch 1, U-Net under torch.compile"),
    ("eager_b1_compile_reduce_overhead", "PyTorch, batch 1, U-Net under torch.compile(mode=\"reduce-overhead\")"),
    (f"ours_b{big}_default", f"txt2img-bench, batch {big}, the command line's pipeline options"),
    (f"ours_b{big}", f"txt2img-bench, batch {big}, plain TorchScript calls"),
    (f"eager_b{big}", f"PyTorch eager, batch {big}"),
    ("cli", "txt2img CLI, 2 images, safety checker (1st image in brackets)"),
    ("cli_low_vram", "txt2img CLI --low-vram, same"),
    ("ours_b1_default_expandable_segments",
     "txt2img-bench, batch 1, the command line's options, allocator with expandable segments"),
    ("cli_expandable_segments", "txt2img CLI, same, allocator with expandable segments"),
    ("cli_low_vram_expandable_segments", "txt2img CLI --low-vram, same, allocator with expandable segments"),
]
cuda = device.startswith("cuda")
mem_name = "peak VRAM MiB: allocated / reserved / nvidia-smi" if cuda else "peak RSS MiB"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "CPU")
print(f"txt2img benchmark {datetime.date.today()} on {torch_info['gpu'] or cpu} "
      f"({device}), PyTorch {torch_info['torch']}, CUDA {torch_info['cuda']}")
print(f"{size}x{size}, {steps} DDIM steps, CFG 7.5, {dtype} unless a row says otherwise; seconds are medians of the timed")
print("runs after two warm-up batches, in brackets the first batch after loading (per image); U-Net it/s: steps over")
print("the denoising loop's time, the loop timed as a whole")
print()
print(f"| run | load s | U-Net it/s | decode s | s/image | images/s | {mem_name} |")
print("|---|---:|---:|---:|---:|---:|---:|")
records = {}
for name, label in rows:
    r = load(name)
    records[name] = r
    if r is None:
        continue
    if "failed" in r:
        what = r["failed"] if r["failed"].startswith("skipped") else "failed: " + r["failed"]
        print(f"| {label} | {what} | | | | | |")
        continue
    s = fmt(r.get("seconds_per_image"), ".3f")
    if "first_image_s" in r:
        s += f" ({r['first_image_s']:.3f})"
    if cuda:  # the caching allocator's peaks (the process's own figures), then the card's used memory above idle
        mem = " / ".join(fmt(r.get(k), ".0f") or "?" for k in ("peak_vram_allocated_mb", "peak_vram_reserved_mb", "mem_mb"))
    else:
        mem = fmt(r.get("mem_mb"), ".0f")
    print(f"| {label} | {fmt(r.get('load_s'), '.2f')} | {fmt(r.get('unet_it_per_s'), '.2f')} | "
          f"{fmt(r.get('decode_s'), '.3f')} | {s} | "
          f"{fmt(r.get('images_per_s'), '.3f')} | {mem} |")
for b, variant, what in ((b, v, w) for b in ("1", big) for v, w in (("_default", "default"), ("", "plain"))):
    ours, eager = records.get(f"ours_b{b}{variant}"), records.get(f"eager_b{b}")
    if ours and eager and "failed" not in ours and "failed" not in eager:
        print(f"| speed txt2img ({what}) / eager, batch {b} (> 1: txt2img faster) | | "
              f"{ours['unet_it_per_s'] / eager['unet_it_per_s']:.3f} | | "
              f"{eager['seconds_per_image'] / ours['seconds_per_image']:.3f} | "
              f"{ours['images_per_s'] / eager['images_per_s']:.3f} | |")
EOF
python3 - "$results" "$root/tests/cli" <<'EOF' | tee -a "$results/table.md"
import json, os, sys
results, helpers = sys.argv[1:]
sys.path.insert(0, helpers)
from cli_support import png_pixels  # noqa: E402  (the end-to-end tests' standard-library PNG reader)

def images(folder):
    names = sorted(os.listdir(folder), key=lambda n: (len(n), n)) if os.path.isdir(folder) else []
    return [png_pixels(os.path.join(folder, n))[2] for n in names]

def compare(folder, reference_name, title):
    reference = images(os.path.join(folder, reference_name))
    if not reference:
        return
    print()
    print(f"| {title} | images | max abs difference | mean abs difference |")
    print("|---|---:|---:|---:|")
    for variant in sorted(os.listdir(folder)):
        other = images(os.path.join(folder, variant))
        if variant == reference_name:
            continue
        if len(other) != len(reference):
            print(f"| {variant} | {len(other)} of {len(reference)} | | |")
            continue
        diffs = [abs(a - b) for x, y in zip(reference, other) for a, b in zip(x, y)]
        print(f"| {variant} | {len(other)} | {max(diffs)} | {sum(diffs) / len(diffs):.3f} |")

compare(os.path.join(results, "pixels"), "plain", "pixels against the plain run (2 images, 8-bit levels)")


def cell(text, width=100):
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def last_record(name):
    """The row's last JSON record, or None after printing why the row has none (failed or skipped)."""
    path, failed = (os.path.join(results, name + suffix) for suffix in (".json", ".failed"))
    if os.path.exists(failed):
        print()
        print(f"{name}: {open(failed).read().strip()}")
        return None
    records = [json.loads(l) for l in open(path) if l.startswith("{")] if os.path.exists(path) else []
    return records[-1] if records else None


v = last_record("unet_variants")
if v:
    layout = "channels_last" if v["channels_last"] else "NCHW"
    print()
    print(f"unet_variants: one U-Net call on {v['input_shape']} ({v['dtype']}, {layout}), "
          f"{'replayed as a CUDA graph' if v['device'].startswith('cuda') else 'plain calls'}, "
          f"median of {v['rounds']} rounds of {v['replays']}; the baseline again at the end: "
          f"{v['baseline_again_ms_per_call']:.3f} ms")
    print()
    print("| variant | ms per call | speed against baseline | max abs difference | max relative difference "
          "| rewritten |")
    print("|---|---:|---:|---:|---:|---|")
    for e in v["variants"]:
        if "error" in e:
            print(f"| {e['name']} | {cell(e['error'])} | | | | |")
            continue
        places = ", ".join(f"{count} {what}" for what, count in e["rewritten"].items())
        print(f"| {e['name']} | {e['ms_per_call']:.3f} | {e['speed_vs_baseline']:.3f} | {e['max_abs_diff']:.3g} | "
              f"{e['max_rel_diff']:.3g} | {places} |")

for name in ("profile_unet", "profile_unet_nchw"):
    p = last_record(name)
    if not p:
        continue
    layout = "channels_last" if p["channels_last"] else "NCHW"
    graph = f", as a replayed CUDA graph {p['graph_ms_per_call']:.2f} ms" if "graph_ms_per_call" in p else ""
    graph += f" (graph failed: {p['graph_error']})" if "graph_error" in p else ""
    kernels = f", all kernels {p['all_kernels_ms_per_call']:.2f} ms" if "all_kernels_ms_per_call" in p else ""
    print()
    print(f"{name}: one U-Net call on {p['input_shape']} ({p['dtype']}, {layout}), {p['calls']} calls: plain "
          f"{p['plain_ms_per_call']:.2f} ms{graph}, device time {p['device_ms_per_call']:.2f} ms{kernels}")
    if "warning" in p:
        print(f"warning: {p['warning']}")
    print()
    print("| operator the module calls | ms per call | share | calls |")
    print("|---|---:|---:|---:|")
    for row in p["by_op"][:15]:
        print(f"| {row['op']} | {row['ms_per_call']:.3f} | {row['share']:.1%} | {row['count_per_call']:g} |")
    print()
    print("| kernel (CUDA) or innermost operator (CPU) | ms per call | share | launches |")
    print("|---|---:|---:|---:|")
    for row in p["by_kernel"][:15]:
        print(f"| {cell(row['kernel'])} | {row['ms_per_call']:.3f} | {row['share']:.1%} | {row['count_per_call']:g} |")
features = os.path.join(results, "features")
lines = [json.loads(l) for l in open(os.path.join(results, "features.jsonl"))] if os.path.isdir(features) else []
labels = [", ".join(f"{key} {str(value)[:24]}" for key, value in line.items()) for line in lines]
for suffix in ("", "_fp32"):
    graph, plain = (images(os.path.join(features, f"{kind}{suffix}")) for kind in ("cuda_graph", "no_cuda_graph"))
    if not graph or len(graph) != len(plain):
        continue
    print()
    print(f"| feature image{suffix.replace('_', ', ')}: with the CUDA graph against without (8-bit levels) | "
          "max abs difference | mean abs difference |")
    print("|---|---:|---:|")
    per_line = len(graph) // len(lines)  # the command line's --images-per-prompt
    for index, (x, y) in enumerate(zip(graph, plain)):
        diffs = [abs(a - b) for a, b in zip(x, y)]
        line, n = divmod(index, per_line)
        print(f"| {line}.{n}: {labels[line]} | {max(diffs)} | {sum(diffs) / len(diffs):.3f} |")
for name in ("features_cuda_graph", "features_no_cuda_graph", "features_cuda_graph_fp32", "features_no_cuda_graph_fp32"):
    path = os.path.join(results, name + ".json")
    records = [json.loads(l) for l in open(path) if l.startswith("{")] if os.path.exists(path) else []
    summary = next((r for r in records if r.get("event") == "summary"), None)
    if summary:
        peaks = summary.get("peak_memory_mib", {})
        print(f"{name}: load {summary['load_s']:.2f} s, total {summary['total_s']:.2f} s, "
              f"peak VRAM allocated {peaks.get('vram_allocated')} MiB")
EOF
# The device tool brings back only a few files per call: with --out, everything ends up in one archive.
if [[ -n $out ]]; then
  cp "$results/table.md" "$out/"
  tar -C "$out" -czf "$out/results.tar.gz" --exclude='*.samples' --exclude='*.png' results && rm -rf "$results"
fi
log "finished in $((SECONDS - started)) s"
