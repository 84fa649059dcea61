#!/usr/bin/env python3
"""Add LoRAs to a txt2img model bundle, for prompts to apply with <lora:NAME:WEIGHT> (as in A1111).

  add_lora.py BUNDLE FILE... [--name NAME] [--overwrite]
  add_lora.py BUNDLE --remove NAME...

Each FILE (kohya/A1111, PEFT or diffusers LoRA file, or LyCORIS LoHa/LoKr/full in kohya naming) is checked against
the bundle's own U-Net and text encoder and stored as BUNDLE/loras/NAME.safetensors (NAME=HASH.safetensors where it
replaces that file), listed in model.json's "loras". NAME is the file's name without extension, as A1111 names
LoRAs (ink-style.safetensors: ink-style), or --name; it cannot be empty, start with '.' or contain / \\ : < > = or
control characters. Every file is checked before anything is written, no listed file is overwritten, and
model.json is replaced last: a failure, an interrupt or a crash leaves the bundle as it was. --remove takes LoRAs
out of the bundle again.
"""

PROG = "add_lora.py"

if __name__ == "__main__":  # first, before the imports below and torch's
    from txt2img_convert.starting import take_interrupts

    take_interrupts(PROG)

import argparse
import os
import sys
import unicodedata

_NOT_IN_NAMES = "/\\:<>="


def name_problem(name: str) -> str:
    """Why `name` cannot be written as NAME in a prompt's <lora:NAME:WEIGHT>, '' if it can."""
    if not name:
        return "it is empty"
    if name.startswith("."):
        return "it starts with '.'"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not UTF-8 text (a file name's bytes in another encoding?)"
    if len(encoded) > 200:  # loras/NAME=HASH.safetensors and its temporary name must fit a file name
        return "it is longer than 200 bytes"
    if name != name.strip():
        return "it starts or ends with a blank (prompts' tags read the name without them)"
    bad = sorted({c for c in name if c in _NOT_IN_NAMES or unicodedata.category(c) == "Cc"})
    if bad:
        return "it contains " + " ".join(repr(c) for c in bad)
    return ""


def parse_args(argv):
    from txt2img_convert.launch import ArgumentParser
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                usage="%(prog)s BUNDLE FILE... [--name NAME] [--overwrite]\n"
                      "       %(prog)s BUNDLE --remove NAME...",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="\n\n".join(__doc__.split("\n\n")[2:]) +
                "\nProgress goes to stderr. Exit status: 0 done, 1 error, 2 usage error.")
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle directory (written by convert.py)")
    p.add_argument("files", nargs="*", metavar="FILE", help="LoRA file to add")
    p.add_argument("--name", help="the name prompts use for the LoRA (default: FILE's name without extension); "
                                  "with one FILE only")
    p.add_argument("--overwrite", action="store_true", help="replace LoRAs of the same names in the bundle")
    p.add_argument("--remove", nargs="+", metavar="NAME", help="remove these LoRAs from the bundle")
    args = p.parse_args(argv)

    if args.remove is not None:
        if args.files or args.name is not None or args.overwrite:
            p.error("--remove takes only the NAMEs of LoRAs in the bundle (no FILE, --name or --overwrite)")
        for name in args.remove:
            if name_problem(name):
                p.error(f"--remove {name!r}: not a LoRA name ({name_problem(name)})")
        return args
    if not args.files:
        p.error("give the LoRA FILEs to add (or --remove NAME...)")
    if args.name is not None and len(args.files) != 1:
        p.error("--name names one FILE; add the others with their own add_lora.py calls")
    args.loras = []  # (name, file)
    for file in args.files:
        if args.name is not None:
            name, origin = args.name, f"--name {args.name!r}"
        else:
            name = os.path.splitext(os.path.basename(file))[0]
            origin = f"{file}: its name {name!r}"
        if name_problem(name):
            p.error(f"{origin} cannot be written in a prompt as <lora:NAME:WEIGHT> ({name_problem(name)}): "
                    "choose another with --name NAME")
        if any(name == known for known, _ in args.loras):
            p.error(f"two FILEs named {name!r}: add one of them with its own add_lora.py call and --name NAME")
        args.loras.append((name, file))
    return args


def _packed_file(name: str, replaced: str = None, sha256: str = "") -> str:
    """The file of the LoRA `name` (relative to the bundle), other than the file `replaced` that it replaces: a
    listed file is never overwritten, so that model.json, replaced last, lists either the old files or the new ones
    whenever the process ends. '=' is in no LoRA name, so a file named with it is no other LoRA's."""
    file = f"loras/{name}.safetensors"
    return file if file != replaced else f"loras/{name}={sha256[:12]}.safetensors"


def _read_manifest(bundle: str) -> dict:
    from txt2img_convert.checkpoints import ConversionError, read_json
    from txt2img_convert.export import BUNDLE_FORMAT, _is_bundle

    if not _is_bundle(bundle):
        raise ConversionError(f"{bundle} is not a model bundle (no model.json of format {BUNDLE_FORMAT}; "
                              "scripts/convert.py writes them)")
    return read_json(os.path.join(bundle, "model.json"))


def _temporary(folder: str, name: str) -> str:
    """A name for a file being written in `folder`, which the bundle never lists (no LoRA name starts with '.')."""
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def _bundle_components(bundle: str) -> dict:
    """The U-Net and text encoder weights of the bundle's own modules, under the diffusers / transformers names
    that the exported modules keep."""
    import torch

    from txt2img_convert.checkpoints import Component, ConversionError

    components = {}
    for part, label in (("unet", "U-Net"), ("text_encoder", "text encoder")):
        path = os.path.join(bundle, f"{part}.pt")
        try:
            module = torch.jit.load(path, map_location="cpu")
        except (OSError, RuntimeError, ValueError) as e:
            message = str(e).strip().splitlines()
            raise ConversionError(f"cannot read the {label} {path}: {message[0] if message else type(e).__name__}") \
                from None
        components[part] = Component(label, dict(module.state_dict()), {}, path)
    return components


def add(args) -> None:
    from txt2img_convert import lora
    from txt2img_convert.checkpoints import ConversionError, sha256_file
    from txt2img_convert.export import write_manifest
    from txt2img_convert.launch import bundle_in_place, interrupts_held, progress
    from txt2img_convert.safetensors_io import save_file

    bundle = args.bundle
    manifest = _read_manifest(bundle)
    entries = {entry["name"]: entry for entry in manifest.get("loras", [])}
    for name, file in args.loras:
        if not os.path.isfile(file):
            raise ConversionError(f"{file}: no such file")
        if name in entries and not args.overwrite:
            raise ConversionError(f"{bundle} already has a LoRA named {name} (pass --overwrite to replace it, or "
                                  "--name NAME to add this one under another name)")
    components = _bundle_components(bundle)
    packed = [(name, *lora.pack(file, components)) for name, file in args.loras]

    folder = os.path.join(bundle, "loras")
    made_folder = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    temps = []  # (temporary path, final path)
    replaced = []  # the files of the LoRAs replaced, listed no more once model.json is
    try:
        for name, tensors, record in packed:
            temp = _temporary(folder, name)
            temps.append((temp, None))
            save_file(tensors, temp, lora.PACKED_METADATA)
            sha256 = sha256_file(temp)
            old_file = entries[name]["file"] if name in entries else None
            file = _packed_file(name, old_file, sha256)
            temps[-1] = (temp, os.path.join(bundle, file))
            if old_file is not None:
                manifest["files"].pop(old_file, None)
                replaced.append(old_file)
            manifest["files"][file] = {"sha256": sha256, "bytes": os.path.getsize(temp)}
            entries[name] = {"name": name, "file": file, "source": record["path"],
                             **{k: v for k, v in record.items() if k != "path"}}
        manifest["files"] = dict(sorted(manifest["files"].items()))
        manifest["loras"] = [entries[name] for name in sorted(entries)]
        temps.append((_temporary(bundle, "model.json"), os.path.join(bundle, "model.json")))
        write_manifest(temps[-1][0], manifest)
        # model.json last, and no interrupt among the renames, which would leave the new files unlisted beside the
        # old ones (as a crash there does, harmlessly). An interrupt once they are done is ignored, as it would
        # report exit 130 over a change that is made.
        with interrupts_held():
            for temp, final in temps:
                os.replace(temp, final)
            bundle_in_place()
    except BaseException:
        for temp, _ in temps:
            if os.path.lexists(temp):
                os.remove(temp)
        if made_folder and not os.listdir(folder):
            os.rmdir(folder)
        raise
    for file in replaced:
        _remove_unlisted(bundle, file)
    for name, _, r in packed:
        progress(f"added {r['format']} LoRA {name} ({r['modules']} modules: {r['unet_modules']} U-Net, "
                  f"{r['text_encoder_modules']} text encoder); use it with <lora:{name}:1> in a prompt")


def _remove_unlisted(bundle: str, file: str) -> None:
    """Removes the LoRA file `file` (as model.json named it) that model.json lists no more, where it lies in the
    bundle's loras/ (a hand-edited model.json could name any file); where that fails, the change is made all the
    same."""
    from txt2img_convert.launch import progress

    folder, _, base = file.partition("/")
    if folder != "loras" or base in ("", ".", "..") or "/" in base or "\\" in base:
        return
    path = os.path.join(bundle, file)
    try:
        if os.path.lexists(path):
            os.remove(path)
    except OSError as e:
        progress(f"warning: could not remove {path}, which the bundle lists no more: {e.strerror}")


def remove(args) -> None:
    from txt2img_convert.checkpoints import ConversionError
    from txt2img_convert.export import write_manifest
    from txt2img_convert.launch import progress

    bundle = args.bundle
    manifest = _read_manifest(bundle)
    entries = {entry["name"]: entry for entry in manifest.get("loras", [])}
    unknown = sorted({name for name in args.remove if name not in entries})
    if unknown:
        has = f"its LoRAs are {', '.join(sorted(entries))}" if entries else "it has none"
        raise ConversionError(f"{bundle} has no LoRA named {', '.join(unknown)} ({has})")
    names = sorted(set(args.remove))
    kept = [entries[name] for name in sorted(entries) if name not in names]
    if kept:
        manifest["loras"] = kept
    else:
        del manifest["loras"]  # the bundle's model.json as it was before any LoRA was added
    for name in names:
        manifest["files"].pop(entries[name]["file"], None)
    temp = _temporary(bundle, "model.json")
    try:
        write_manifest(temp, manifest)
        os.replace(temp, os.path.join(bundle, "model.json"))
    except BaseException:
        if os.path.lexists(temp):
            os.remove(temp)
        raise
    for name in names:
        _remove_unlisted(bundle, entries[name]["file"])
        progress(f"removed the LoRA {name}")
    folder = os.path.join(bundle, "loras")
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from txt2img_convert.launch import report_errors

    return report_errors(PROG, lambda: (remove if args.remove is not None else add)(args))


if __name__ == "__main__":
    from txt2img_convert.launch import reexec_if_needed, run_main

    reexec_if_needed(PROG, __file__)
    sys.exit(run_main(PROG, main))
