#!/usr/bin/env bash
# CPU benchmark: our pipeline (txt2img-bench) beside the same networks in PyTorch eager (scripts/bench_eager.py) on one
# bundle, one process per row. PyTorch eager runs twice, on glibc's malloc and with tcmalloc preloaded, so that the
# table separates what the allocator buys from what TorchScript does; --also adds another txt2img-bench binary (a
# build configured with -DTXT2IMG_TCMALLOC=OFF, say). The rows are alternated over --rounds rounds, because the load
# of a shared VM drifts over minutes, and the table gives each figure's median. It starts with the machine: CPU,
# cores, BLAS, LibTorch and each row's malloc.
#
#   scripts/bench_cpu.sh --model /tmp/full [--size 512] [--steps 3] [--threads 2] [--dtype fp32|bf16] [--rounds 2]
#                        [--decoder full|taesd] [--bench BIN] [--also BIN] [--out DIR]
#   (--bench: ours, default build/txt2img-bench; --decoder taesd: every row decodes with the bundle's TAESD)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model="" size=512 steps=3 threads=2 dtype=fp32 rounds=2 decoder=full also="" out=""
bench=$root/build/txt2img-bench
while (($#)); do
  case $1 in
    --model) model=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --decoder) decoder=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --also) also=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "bench_cpu.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
[[ -f $model/model.json ]] || {
  echo "bench_cpu.sh: --model DIR must be a bundle (scripts/convert.py --random-full)" >&2; exit 2; }
[[ -x $bench ]] || { echo "bench_cpu.sh: no $bench; build first (cmake --build build)" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/bench_cpu.XXXXXX)}
mkdir -p "$out"
# awk reads to the end: stopping early would kill ldconfig with SIGPIPE, which pipefail turns into a failure.
tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{lib = $NF} END {print lib}')

common=(--model "$model" --device cpu --dtype "$dtype" --width "$size" --height "$size" --steps "$steps"
        --threads "$threads" --decoder "$decoder" --warmup 0 --runs 1)
rows=(ours)
[[ -n $also ]] && rows+=(also)
rows+=(eager)
[[ -n $tcmalloc ]] && rows+=(eager_tcmalloc)

run_row() {
  case $1 in
    ours) "$bench" "${common[@]}" --no-safety-checker --plain-executor ;;  # the command line's CPU options
    also) "$also" "${common[@]}" --no-safety-checker --plain-executor ;;
    eager) "$root/scripts/with-torch-python" "$root/scripts/bench_eager.py" "${common[@]}" ;;
    eager_tcmalloc)
      LD_PRELOAD=$tcmalloc "$root/scripts/with-torch-python" "$root/scripts/bench_eager.py" "${common[@]}" ;;
  esac
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores visible"
  echo "blas: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo unknown)"
  echo "ours: $bench; $("$(dirname "$bench")/txt2img" --version 2>/dev/null || echo 'no txt2img beside it')"
  echo "command: $0 --model $model --size $size --steps $steps --threads $threads --dtype $dtype" \
       "--rounds $rounds --decoder $decoder${also:+ --also $also}"
} | tee "$out/machine.txt"

for ((round = 1; round <= rounds; round++)); do
  for row in "${rows[@]}"; do
    echo "bench_cpu.sh: round $round, $row" >&2
    run_row "$row" >"$out/$row-$round.json" 2>"$out/$row-$round.log" || {
      echo "bench_cpu.sh: $row failed, see $out/$row-$round.log" >&2; exit 1; }
  done
done

"$root/scripts/with-torch-python" - "$out" "$steps" "${rows[@]}" <<'EOF'
import glob, json, statistics, sys
out, steps, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = {"ours": "txt2img-bench", "also": "txt2img-bench (--also)", "eager": "PyTorch eager",
         "eager_tcmalloc": "PyTorch eager, tcmalloc preloaded"}
print("\n| run | malloc | load s | U-Net s/step | decode s | total s | peak RSS MiB |")
print("|---|---|---:|---:|---:|---:|---:|")
for row in rows:
    records = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{row}-*.json"))]
    runs = [r["runs"][0] for r in records]
    med = lambda values: statistics.median(values)
    print(f"| {names[row]} | {records[0]['allocator']} | {med(r['load_s'] for r in records):.1f} | "
          f"{med(r['unet_s'] / steps for r in runs):.2f} | {med(r['decode_s'] for r in runs):.2f} | "
          f"{med(r['total_s'] for r in runs):.1f} | {med(r['peak_rss_mb'] for r in records):.0f} |")
EOF
echo "bench_cpu.sh: every JSON record and log in $out" >&2
