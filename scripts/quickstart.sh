#!/usr/bin/env bash
# Fresh Debian 12 machine -> dependencies, build, the default model bundle (models/sd15), one image.
# Usage: scripts/quickstart.sh ["prompt"] [-o FILE]
# The model comes from, in order: an existing models/sd15 bundle; a local SD v1.x checkpoint named by
# TXT2IMG_CHECKPOINT (a .safetensors/.ckpt file or a diffusers folder; single files also need CLIP's vocabulary,
# TXT2IMG_VOCAB, and a safety checker folder, TXT2IMG_SAFETY_CHECKER); the Hugging Face hub
# (runwayml/stable-diffusion-v1-5) where huggingface_hub is installed and the network reaches it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prompt=${1:-"a photo of an astronaut riding a horse on mars"}
shift || true
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
bundle=$root/models/sd15
if [[ ! -f $bundle/model.json ]]; then
  convert=("$root/scripts/convert.py" --out "$bundle")
  if [[ -n ${TXT2IMG_CHECKPOINT:-} ]]; then
    convert+=("$TXT2IMG_CHECKPOINT")
    [[ -z ${TXT2IMG_VOCAB:-} ]] || convert+=(--vocab "$TXT2IMG_VOCAB")
    [[ -z ${TXT2IMG_SAFETY_CHECKER:-} ]] || convert+=(--safety-checker "$TXT2IMG_SAFETY_CHECKER")
  elif "$root/scripts/with-torch-python" -c 'import huggingface_hub' 2>/dev/null; then
    convert+=(runwayml/stable-diffusion-v1-5)
  else
    cat >&2 <<MSG
quickstart: no model weights. Do one of:
  - point TXT2IMG_CHECKPOINT at a Stable Diffusion v1.x checkpoint you have (a diffusers folder, or a
    .safetensors/.ckpt file plus TXT2IMG_VOCAB=<CLIP merges.txt or bpe_simple_vocab_16e6.txt.gz> and
    TXT2IMG_SAFETY_CHECKER=<CompVis/stable-diffusion-safety-checker folder>), then rerun this command;
  - or install huggingface_hub (pip install huggingface_hub) on a machine that reaches huggingface.co and rerun.
MSG
    exit 3
  fi
  "${convert[@]}" >&2
fi
exec "$root/build/txt2img" --model "$bundle" "$prompt" "$@"
