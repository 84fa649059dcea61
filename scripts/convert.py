#!/usr/bin/env python3
"""Convert a Stable Diffusion 1.x model into a txt2img model bundle.

  convert.py SOURCE --out DIR [--config DIR] [--original-config YAML] [--vocab PATH]
             [--safety-checker DIR | --no-safety-checker] [--vae VAE | --own-vae] [--taesd TAESD] [--ema]
             [--lora FILE[:WEIGHT]]... [--embedding FILE]... [--prediction-type TYPE] [--zero-terminal-snr]
             [--overwrite]
  convert.py --tiny|--random-full --out DIR --vocab PATH [--seed N] [--no-safety-checker] [--tiny-flag-all]
             [--prediction-type TYPE] [--zero-terminal-snr] [--overwrite]

SOURCE: a diffusers folder, a single-file CompVis/LDM checkpoint (.safetensors or .ckpt), or a Hugging Face
hub id such as runwayml/stable-diffusion-v1-5 (downloaded when huggingface_hub is installed). Each --lora
(kohya/A1111, PEFT or diffusers LoRA file, or LyCORIS LoHa/LoKr/full in kohya naming) is merged into the U-Net
and text-encoder weights before export. --vae replaces the model's VAE (a diffusers VAE or model folder, or a
single VAE file such as vae-ft-mse-840000-ema-pruned.safetensors); without it a single file's NAME.vae.ckpt/.pt/
.safetensors beside it is used, as A1111 does, unless --own-vae. --ema converts a single file's moving average of
the U-Net instead of its trained weights. Each --embedding (a textual inversion) is
added to the text encoder under its file's name. A v-prediction or zero-terminal-SNR model whose files do not say so
(a single file without its .yaml) needs --prediction-type v_prediction and --zero-terminal-snr.
"""

PROG = "convert.py"

if __name__ == "__main__":  # first, before the imports below and torch's
    from txt2img_convert.starting import take_interrupts

    take_interrupts(PROG)

import argparse
import os
import sys

# Files of which a diffusers model folder has at least one.
_MODEL_FOLDER = ("model_index.json", "unet/config.json", "text_encoder/config.json", "vae/config.json",
                 "scheduler/scheduler_config.json")


def _lora_spec(text: str):
    from txt2img_convert.lora import parse_spec

    try:
        return parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv):
    from txt2img_convert.launch import ArgumentParser
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Progress goes to stderr. Exit status: 0 done, 1 conversion error, 2 usage error, 130 "
                       "interrupted (SIGINT, SIGTERM, SIGHUP; nothing is left at --out).")
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="diffusers folder, .safetensors/.ckpt single file, or hub id")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to create")
    p.add_argument("--config", metavar="DIR",
                   help="diffusers folder of the same model family: configs (attention heads, sample size, "
                        "VAE scaling factor, scheduler) and, if present, tokenizer and safety checker for a "
                        "single-file SOURCE")
    p.add_argument("--original-config", metavar="YAML",
                   help="the LDM config of a single-file SOURCE (its training schedule: parameterization, "
                        "timesteps, linear_start/end); default: SOURCE's name with .yaml, where it exists, as A1111 "
                        "reads it")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"),
                   help="what the U-Net predicts, where the source does not say (SD 1.x v-prediction fine-tunes "
                        "shipped as a single file); default: the source's scheduler config or LDM config, else "
                        "epsilon")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="the model was trained with zero terminal SNR (diffusers' rescale_betas_zero_snr, A1111's "
                        "Zero Terminal SNR noise schedule); also sets trailing timestep spacing unless the source's "
                        "scheduler config already rescales")
    p.add_argument("--ema", action="store_true",
                   help="convert the exponential moving average of the U-Net's weights (model_ema.*) that some "
                        "single-file SOURCEs hold beside the trained weights (diffusers' --extract_ema); default: "
                        "the trained weights, as diffusers and A1111 read the file")
    p.add_argument("--vocab", metavar="PATH",
                   help="CLIP BPE merges: tokenizer/merges.txt or CLIP's bpe_simple_vocab_16e6.txt.gz")
    safety = p.add_mutually_exclusive_group()
    safety.add_argument("--safety-checker", metavar="DIR",
                        help="safety checker folder (transformers layout, e.g. a download of "
                             "CompVis/stable-diffusion-safety-checker), or a diffusers model folder that has one")
    safety.add_argument("--no-safety-checker", action="store_true",
                        help="build the bundle without a safety checker")
    p.add_argument("--vae", metavar="VAE",
                   help="decode with this VAE instead of the model's: a diffusers VAE folder or hub id (e.g. "
                        "stabilityai/sd-vae-ft-mse), a diffusers model folder, or a .safetensors/.ckpt/.pt VAE file "
                        "such as vae-ft-mse-840000-ema-pruned.safetensors; images record it as A1111 does")
    p.add_argument("--own-vae", action="store_true",
                   help="keep a single-file SOURCE's own VAE even where a NAME.vae.ckpt/.pt/.safetensors lies beside "
                        "it (which is otherwise used, as A1111's Automatic VAE setting does)")
    p.add_argument("--taesd", metavar="TAESD",
                   help="add TAESD, the tiny decoder of txt2img --decoder taesd and --preview: madebyollin/taesd (a "
                        "hub id or its folder), its diffusion_pytorch_model.safetensors, or "
                        "taesd_decoder.pth/.safetensors")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="add this textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds), "
                        "written in prompts as the file's name without extension, e.g. EasyNegative; repeatable")
    p.add_argument("--lora", action="append", type=_lora_spec, default=[], metavar="FILE[:WEIGHT]",
                   help="merge this LoRA (kohya/A1111, PEFT or diffusers format, LyCORIS LoHa/LoKr/full) into the "
                        "U-Net and text encoder, scaled by WEIGHT (default 1.0); repeatable, applied in order")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    random = p.add_mutually_exclusive_group()
    random.add_argument("--tiny", action="store_true", help="random weights, tiny widths (for tests)")
    random.add_argument("--random-full", action="store_true", help="random weights at full SD v1.5 size")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the random weights (default 0)")
    p.add_argument("--tiny-flag-all", action="store_true",
                   help="random safety checker that flags every image (default: flags none)")
    args = p.parse_args(argv)

    if not args.out:
        p.error("--out is empty (an unset variable?)")
    preset = args.tiny or args.random_full
    if preset == (args.source is not None):
        p.error("give either SOURCE or one of --tiny / --random-full")
    if preset:
        for flag, value in (("--config", args.config), ("--original-config", args.original_config),
                            ("--safety-checker", args.safety_checker),
                            ("--vae", args.vae), ("--taesd", args.taesd), ("--lora", args.lora or None),
                            ("--embedding", args.embedding or None)):
            if value is not None:
                p.error(f"{flag} applies to a SOURCE, not to random weights")
        if args.vocab is None:
            p.error("random weights need --vocab (e.g. CLIP's bpe_simple_vocab_16e6.txt.gz)")
        if args.tiny_flag_all and args.no_safety_checker:
            p.error("--tiny-flag-all needs a safety checker (drop --no-safety-checker)")
    else:
        for flag, value in (("--seed", args.seed), ("--tiny-flag-all", args.tiny_flag_all or None)):
            if value is not None:
                p.error(f"{flag} applies to --tiny / --random-full only")
    if args.config is not None and not os.path.isdir(args.config):
        p.error(f"--config {args.config}: not a directory")
    if args.config is not None and not any(os.path.isfile(os.path.join(args.config, name)) for name in _MODEL_FOLDER):
        # A component's folder (unet/, scheduler/) would be silently ignored, and with it the model's configs.
        p.error(f"--config {args.config}: not a diffusers model folder (it has none of {', '.join(_MODEL_FOLDER)}); "
                "pass the folder that holds unet/, vae/ and scheduler/")
    if args.original_config is not None and args.source is not None and os.path.isdir(args.source):
        p.error("--original-config applies to a single-file SOURCE; a diffusers folder has scheduler_config.json")
    if args.ema and (preset or os.path.isdir(args.source)):
        p.error("--ema applies to a single-file SOURCE (a diffusers folder holds one set of U-Net weights)")
    if args.own_vae and args.vae is not None:
        p.error("--own-vae and --vae exclude each other")
    return args


def _check_vocab(vocab: str) -> None:
    """Reads the merges before any slow work: a wrong file (vocab.json for merges.txt) fails at once."""
    from txt2img_convert.checkpoints import ConversionError
    from txt2img_convert.tokenizer import read_merges

    try:
        read_merges(vocab)
    except (ValueError, OSError, EOFError) as e:
        raise ConversionError(f"{vocab}: not CLIP's BPE merges ({e}); pass a diffusers folder's "
                              "tokenizer/merges.txt (not vocab.json), or CLIP's bpe_simple_vocab_16e6.txt.gz") from None


def _first_file(*paths):
    return next((p for p in paths if p and os.path.isfile(p)), None)


def convert_source(args) -> dict:
    from txt2img_convert import checkpoints as ck
    from txt2img_convert import embeddings as ti
    from txt2img_convert import export, hub, lora, scheduler_config
    from txt2img_convert.taesd import load_taesd

    export.check_destination(args.out, args.overwrite)
    lora.check_files(args.lora)
    for file in args.embedding:
        if not os.path.isfile(file):
            raise ck.ConversionError(f"--embedding {file}: no such file")
    # Hub ids (stabilityai/sd-vae-ft-mse, madebyollin/taesd) are downloaded; names come from what was given.
    path = hub.resolve_source(args.source, safety_checker=not args.no_safety_checker and args.safety_checker is None)
    folder = os.path.isdir(path)
    if folder:  # before the vocabulary, which a folder of another kind would be said to lack
        ck.check_diffusers_folder(path)
    if args.ema and folder:  # a hub id, which parse_args could not tell from a file
        raise ck.ConversionError(f"--ema applies to a single-file SOURCE; {args.source} is a diffusers model, which "
                                 "holds one set of U-Net weights")
    vae_beside = False
    if args.vae is None and not folder and not args.own_vae:
        # A1111's Automatic VAE: a VAE saved beside the checkpoint as NAME.vae.ckpt/.pt/.safetensors (in the order
        # A1111 lists them) replaces the checkpoint's own or stands in for a missing one, so images match that setting.
        stem = os.path.splitext(path)[0]
        args.vae = _first_file(*(stem + ".vae" + ext for ext in (".ckpt", ".pt", ".safetensors")))
        vae_beside = args.vae is not None
        if vae_beside:
            export.progress(f"using the VAE beside the checkpoint, {args.vae}, as A1111 does (--own-vae keeps the "
                            "checkpoint's, --vae names another)")
    vae_path = hub.resolve_component(args.vae, "--vae") if args.vae is not None else None
    taesd_path = hub.resolve_component(args.taesd, "--taesd") if args.taesd is not None else None
    if args.vocab is not None and not os.path.isfile(args.vocab):
        raise ck.ConversionError(f"--vocab {args.vocab}: no such file")
    vocab = _first_file(args.vocab, os.path.join(path, "tokenizer", "merges.txt") if folder else None,
                        os.path.join(args.config, "tokenizer", "merges.txt") if args.config else None)
    if vocab is None:
        raise ck.ConversionError("no tokenizer vocabulary: pass --vocab PATH (tokenizer/merges.txt of a "
                                 "diffusers folder, or CLIP's bpe_simple_vocab_16e6.txt.gz)")
    _check_vocab(vocab)

    # The safety checker: --safety-checker, else the source's own, else the --config folder's; decided
    # before the slow loading so that a missing one fails at once.
    own_safety = os.path.join(path, "safety_checker") if folder else None
    config_safety = os.path.join(args.config, "safety_checker") if args.config else None
    # --safety-checker may name a diffusers model folder, whose checker is its safety_checker/ (as --vae takes vae/).
    given = args.safety_checker
    if given is not None and not os.path.isfile(os.path.join(given, "config.json")):
        given = os.path.join(given, "safety_checker")
    safety_dir = None
    if not args.no_safety_checker:
        safety_dir = next((d for d in (given, own_safety, config_safety)
                           if d and os.path.isfile(os.path.join(d, "config.json"))), None)
        if args.safety_checker is not None and safety_dir != given:
            raise ck.ConversionError(f"--safety-checker {args.safety_checker}: no config.json there (nor in its "
                                     "safety_checker/)")
        if safety_dir is None:
            raise ck.ConversionError(
                f"{path} has no safety checker: pass --safety-checker DIR (a download of "
                "CompVis/stable-diffusion-safety-checker) or --no-safety-checker (the bundle then only "
                "generates with txt2img --no-safety-checker)")

    # Small, so read before the slow loading: a wrong file fails at once.
    ldm_config = None if folder else ck.ldm_config_path(path, args.original_config)
    ldm_schedule = None
    if ldm_config is not None:
        export.progress(f"reading the training schedule in {ldm_config}")
        ldm_schedule = ck.ldm_schedule(ldm_config)
    taesd = None
    if args.taesd is not None:
        export.progress(f"loading the TAESD decoder {args.taesd}")
        taesd, taesd_sha256 = load_taesd(taesd_path, args.taesd)
    export.progress(f"loading {path}")
    model = ck.load_diffusers(path) if folder else ck.load_single_file(path, args.config, args.ema)
    schedule = scheduler_config.training_schedule(model.scheduler, ldm_schedule, args.prediction_type, args.zero_terminal_snr)
    if not model.vae.tensors and args.vae is None:
        raise ck.ConversionError(f"{path} has no VAE weights (first_stage_model.*): it was released to be used with a "
                                 "separate VAE; pass it with --vae (e.g. vae-ft-mse-840000-ema-pruned.safetensors)")
    vae_identity = {}
    own_vae_complete = bool(export.VAEEncoder.select_state_dict(model.vae.tensors))
    if args.vae is not None:
        export.progress(f"loading the VAE {args.vae}")
        model.vae, vae_sha256 = ck.load_vae(vae_path, model.vae)
        # As A1111 names and hashes the VAE it used, beside the checkpoint's own name and hash.
        vae_identity = {"vae_name": os.path.basename(os.path.normpath(args.vae)), "vae_hash": vae_sha256[:10]}
    safety, preprocessor = None, None
    if safety_dir is not None:
        safety = ck.load_safety_checker(safety_dir)
        # Its image preprocessing: beside a standalone checker (hub layout), else the source's or --config's
        # feature_extractor/, else CLIPImageProcessor's defaults.
        preprocessor_file = _first_file(
            os.path.join(safety_dir, "preprocessor_config.json"),
            os.path.join(path, "feature_extractor", "preprocessor_config.json") if folder else None,
            os.path.join(args.config, "feature_extractor", "preprocessor_config.json") if args.config else None)
        preprocessor = ck.read_json(preprocessor_file) if preprocessor_file else None

    fields = export.model_fields(model.unet.config, model.vae.config, model.text_encoder.config,
                                 scheduler_config.scheduler_fields(schedule),
                                 export.safety_manifest(preprocessor) if safety is not None else None)
    fields.update(vae_identity)
    if model.alphas_cumprod is not None and scheduler_config.differs_from_file(model.alphas_cumprod,
                                                                               fields["scheduler"]):
        bundles = fields["scheduler"]
        export.progress(f"warning: {path} holds a noise schedule (alphas_cumprod) other than the bundle's "
                        f"({bundles['beta_schedule']} betas from {bundles['beta_start']:g} to {bundles['beta_end']:g} "
                        f"over {bundles['num_train_timesteps']} steps, as diffusers reads the file): A1111 samples "
                        "with the file's, so its images of this model differ; if the model was trained on the file's, "
                        "give its LDM config with --original-config")
    if fields.get("inpainting") and not export.VAEEncoder.select_state_dict(model.vae.tensors):
        # Checked before the slow loading: a VAE file may hold only the decoder, all that other models need. The
        # advice names only what would help: the checkpoint's own VAE where it is complete.
        if vae_beside and own_vae_complete:
            advice = "pass --own-vae to keep the checkpoint's, or a complete VAE with --vae"
        elif args.vae is not None and not vae_beside:
            advice = "pass a VAE file with both halves" + (", or leave out --vae" if own_vae_complete else "")
        else:
            advice = "pass a complete VAE with --vae"
        where = " beside the checkpoint" if vae_beside else ""
        raise ck.ConversionError(f"{args.vae if args.vae is not None else path}: the VAE{where} has no encoder "
                                 f"(encoder.*), which an inpainting model needs for its masked image; {advice}")
    if taesd is not None:
        export.check_taesd(taesd.config, fields, args.taesd)
        fields.update(taesd_name=os.path.basename(os.path.normpath(args.taesd)), taesd_hash=taesd_sha256[:10])

    loras = []
    for spec in args.lora:
        record = lora.merge(spec, {"unet": model.unet, "text_encoder": model.text_encoder})
        export.progress(f"merged {record['format']} LoRA {spec.path} (weight {spec.weight:g}) into "
                        f"{record['unet_modules']} U-Net and {record['text_encoder_modules']} text encoder modules")
        loras.append(record)

    # A textual inversion trained into a diffusers model: tokens its tokenizer adds, over rows its text encoder has.
    own = ti.added_tokens(os.path.join(path, "tokenizer"), model.text_encoder) if folder else []
    for record in own:
        vectors = record["vectors"]
        export.progress(f"the tokenizer adds the token {record['name']}: recorded as an embedding of {vectors} "
                        f"vector{'s' if vectors > 1 else ''} from id {record['first_id']}")
    embeddings = ti.add(args.embedding, model.text_encoder, own)
    for record in embeddings:
        export.progress(f"added the embedding {record['name']} ({record['vectors']} vectors)")
    if own or embeddings:
        # txt2img splits an added token out of the text first, as transformers does; an embedding file's name it
        # finds by its CLIP tokens, as A1111 does.
        fields["embeddings"] = ([{**{k: r[k] for k in ("name", "first_id", "vectors")}, "added_token": True}
                                 for r in own] +
                                [{k: r[k] for k in ("name", "first_id", "vectors")} for r in embeddings])

    components = {"text_encoder": model.text_encoder, "unet": model.unet, "vae": model.vae}
    if safety is not None:
        components["safety_checker"] = safety
    if taesd is not None:
        components["taesd"] = taesd
    if fields.get("inpainting"):
        components["vae_encoder"] = model.vae
    modules = {}
    for part, component in components.items():
        label = {"vae": "VAE decoder", "vae_encoder": "VAE encoder"}.get(part, component.label)
        export.progress(f"loading the {label} weights into the model")
        modules[part] = export.load_weights(part, component)

    name = args.source if path != args.source else model.name  # a hub id names the model better than its cache
    source = {"kind": model.kind, "path": os.path.abspath(path), "sha256": model.sha256}
    if model.kind == "single_file" and model.text_encoder.origin != path:
        # A checkpoint saved without its text encoder took --config's (load_single_file).
        source["text_encoder"] = {"path": os.path.abspath(model.text_encoder.origin),
                                  "sha256": ck.sha256_weights(model.text_encoder.origin)}
    if args.vae is not None:
        source["vae"] = {"path": os.path.abspath(vae_path), "sha256": vae_sha256}
    if taesd is not None:
        source["taesd"] = {"path": os.path.abspath(taesd_path), "sha256": taesd_sha256}
    if embeddings:
        source["embeddings"] = [{k: r[k] for k in ("name", "path", "sha256")} for r in embeddings]
    model_hash = model.sha256[:10]
    if args.ema:
        # Weights A1111 never reads from this file: named apart, and hashed by the U-Net's weights, as merged LoRAs.
        source["ema"] = True
        name += "+ema"
        model_hash = None
    if loras:
        # Merged weights are no longer the source model: the name lists the LoRAs, and the hash (which images'
        # metadata quote) becomes that of the merged U-Net's weights (export.write_bundle) instead of the source's.
        source["loras"] = loras
        for spec in args.lora:
            stem = os.path.splitext(os.path.basename(spec.path))[0]
            name += f"+{stem}" + ("" if spec.weight == 1 else f":{spec.weight:g}")
        model_hash = None
    return export.write_bundle(args.out, modules, vocab, fields, name, model_hash, source, args.overwrite)


def convert_random(args) -> dict:
    from txt2img_convert import export, scheduler_config
    from txt2img_convert.checkpoints import ConversionError
    from txt2img_convert.presets import preset

    export.check_destination(args.out, args.overwrite)
    if not os.path.isfile(args.vocab):
        raise ConversionError(f"--vocab {args.vocab}: no such file")
    _check_vocab(args.vocab)
    kind = "tiny" if args.tiny else "full"
    seed = 0 if args.seed is None else args.seed
    configs = preset(kind)
    export.progress(f"building the {kind} model with random weights (seed {seed})")
    modules = export.random_modules(configs, seed, not args.no_safety_checker, args.tiny_flag_all)
    schedule = scheduler_config.training_schedule(None, None, args.prediction_type, args.zero_terminal_snr)
    safety = None if args.no_safety_checker else export.safety_manifest(configs["preprocessor"])
    fields = export.model_fields(configs["unet"], configs["vae"], configs["text_encoder"],
                                 scheduler_config.scheduler_fields(schedule), safety)
    source = {"kind": "random", "path": None, "sha256": None, "preset": kind, "seed": seed,
              "flag_all": bool(args.tiny_flag_all)}
    return export.write_bundle(args.out, modules, args.vocab, fields, f"random-{kind}-seed{seed}", None, source,
                               args.overwrite)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from txt2img_convert.export import progress
    from txt2img_convert.launch import report_errors

    def convert_and_report():
        out = os.path.normpath(args.out)  # "link/" is the folder it points to, not the link
        if os.path.islink(out) and os.path.isdir(out):
            # models/sd15 -> /big-disk/sd15: the bundle is replaced where the link points, and the link kept.
            args.out = os.path.realpath(out)
            progress(f"{out} is a link to {args.out}; writing the bundle there")
        manifest = convert_source(args) if args.source is not None else convert_random(args)
        total = sum(f["bytes"] for f in manifest["files"].values())
        progress(f"wrote {args.out} ({total / 1e6:.1f} MB, model {manifest['model_name']} "
                 f"[{manifest['model_hash']}])")

    return report_errors(PROG, convert_and_report)


if __name__ == "__main__":
    from txt2img_convert.launch import reexec_if_needed, run_main

    reexec_if_needed(PROG, __file__)
    sys.exit(run_main(PROG, main))
