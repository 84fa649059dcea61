"""Shared helpers for the end-to-end tests of the txt2img binary (Python standard library only).

Environment: TXT2IMG_BIN (the binary), TXT2IMG_FIXTURES (folder with the `tiny` bundle: random weights, a safety
checker that flags nothing). Bundles the tests need besides it are derived from it, or built with
scripts/with-torch-python when a Python with torch is around (skipped otherwise).
"""

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TXT2IMG_BIN", str(ROOT / "build" / "txt2img"))
FIXTURES = Path(os.environ.get("TXT2IMG_FIXTURES", ROOT / "build" / "fixtures"))
TINY = FIXTURES / "tiny"
SHARED = Path(os.environ.get("TXT2IMG_SHARED", ROOT.parent / "shared"))
VOCAB = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"

# Small and fast: the tiny bundle at 32x32 with two steps.
FAST = ["--width", "32", "--height", "32", "--steps", "2", "--device", "cpu"]

EXIT_USAGE, EXIT_BUNDLE, EXIT_IO, EXIT_RUNTIME, EXIT_NSFW, EXIT_INTERRUPTED = 2, 3, 4, 5, 6, 130


# Missing inputs fail rather than skip: a green run must mean the tests ran.
def require_binary_and_fixture():
    if not Path(BIN).is_file():
        raise AssertionError(f"no txt2img binary at {BIN} (set TXT2IMG_BIN)")
    fixture_bundle("tiny")


def fixture_bundle(name):
    """$TXT2IMG_FIXTURES/<name>, which ctest's fixture tests build."""
    path = FIXTURES / name
    if not (path / "model.json").is_file():
        raise AssertionError(f"no {name} bundle at {path} (set TXT2IMG_FIXTURES; ctest builds it)")
    return path


def run(args, cwd, *, input=None, env=None, timeout=300, preexec_fn=None):
    """Runs the binary; returns the CompletedProcess (text mode, stdout and stderr captured)."""
    full_env = dict(os.environ)
    full_env.pop("TXT2IMG_MODEL", None)
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    return subprocess.run([BIN, *[str(a) for a in args]], cwd=cwd, input=input, env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn)


def run_printed_command(line, cwd, model, output, shell="sh"):
    """A command line txt2img printed (info --command) run as a user pastes it into `shell`, with this build's
    binary, and `model` and `output` added: the CompletedProcess. bash runs in the C locale, where its $'...' escapes
    must still give the text back exactly."""
    env = {**os.environ, "LC_ALL": "C"} if shell == "bash" else None
    return subprocess.run([shell, "-c", line.strip().replace("txt2img", shlex.quote(str(BIN)), 1) +
                           f" --model {shlex.quote(str(model))} -o {shlex.quote(str(output))}"], cwd=cwd,
                          capture_output=True, text=True, env=env)


def files_under(folder):
    """Every file below `folder`, as relative POSIX paths (sorted), hidden temporary files included."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def failed_json_lines(stdout, exit_code):
    """A failed --json run's lines before its last, which must be the error line with `exit_code`."""
    *records, error = json_lines(stdout)
    if (error["event"], error["exit_code"]) != ("error", exit_code):
        raise AssertionError(f"the last line is not an error line with exit code {exit_code}: {error}")
    return records


class CliTestCase(unittest.TestCase):
    """Each test runs in its own temporary directory with the tiny bundle as the default model."""

    @classmethod
    def setUpClass(cls):
        require_binary_and_fixture()

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="txt2img-cli-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def txt2img(self, *args, model=TINY, fast=True, **kwargs):
        full = list(args)
        if model is not None:
            full += ["--model", model]
        if fast:  # the fast settings, except where the test sets its own
            full += [x for flag, value in zip(FAST[::2], FAST[1::2]) if flag not in args for x in (flag, value)]
        return run(full, self.dir, **kwargs)

    def assertExit(self, result, code, *message_parts):
        self.assertEqual(result.returncode, code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        for part in message_parts:
            self.assertIn(part, result.stderr)

    def assertNothingWritten(self, *ignore):
        left = [f for f in files_under(self.dir) if f not in ignore]
        self.assertEqual(left, [], "a failed run must write nothing")
        self.assertFalse(any(p.is_dir() for p in self.dir.iterdir() if p.name not in ignore),
                         "a failed run must create no directory")

    def write(self, name, text):
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def assertRemadeWithEnsd(self, args, parameters):
        """a.png made with `args` (its --sampler first) and --ensd 31337: its record names the sampler, its A1111 text
        holds `parameters` and the ENSD, and `info --command` gives the sampler back and makes the image again."""
        made = self.txt2img("a fox", "--ensd", "31337", "--json", "-o", "a.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json_lines(made.stdout)[0]["sampler"], args[1])
        text = png_text(self.dir / "a.png")["parameters"]
        self.assertIn(parameters, text)
        self.assertIn(", ENSD: 31337,", text)
        self.assertCommandRemakes("a.png", f" --sampler {args[1]} ")

    def assertCommandRemakes(self, name, flags, model=TINY):
        """`info NAME --command` holds `flags` (text of the command line) and makes the image NAME again with
        `model`; returns the command line."""
        command = run(["info", name, "--command"], self.dir)
        self.assertIn(flags, command.stdout)
        again = run(shlex.split(command.stdout)[1:] + ["--model", model, "-o", "remade-" + name], self.dir)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / name), png_pixels(self.dir / ("remade-" + name)))
        return command.stdout

    def assertPromptFileRemakes(self, name, line, *args, model=TINY):
        """A prompt file of the one JSON `line` (written to the image "from-file-NAME"), run with `args`, makes the
        image NAME."""
        self.write("remake.jsonl", json.dumps({**line, "output": "from-file-" + name}))
        from_file = self.txt2img("--from-file", "remake.jsonl", *args, model=model)
        self.assertEqual(from_file.returncode, 0, from_file.stderr)
        self.assertEqual(png_pixels(self.dir / name), png_pixels(self.dir / ("from-file-" + name)))


# --- safetensors reading (the fixtures' tensors) ----------------------------------------------------------------

def safetensors_header(path):
    """The JSON header of a .safetensors file (tensor entries and "__metadata__")."""
    with open(path, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


def safetensors_tensor(path, name):
    """(header entry, raw little-endian data) of tensor `name` in a .safetensors file."""
    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
        info = json.loads(f.read(header_size))[name]
        begin, end = info["data_offsets"]
        f.seek(8 + header_size + begin)
        return info, f.read(end - begin)


# --- PNG reading (zlib + the five scanline filters), enough for what the binary writes ---------------------------

def png_chunks(path):
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad CRC in {kind!r}")
        chunks.append((kind.decode("ascii"), body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_text(path):
    """tEXt and iTXt chunks as a dict."""
    out = {}
    for kind, body in png_chunks(path):
        if kind == "tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == "iTXt":
            key, _, rest = body.partition(b"\0")
            rest = rest[2:]  # compression flag and method (the binary never compresses text)
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("utf-8")
    return out


def png_pixels(path):
    """(width, height, bytes of RGB rows) for an 8-bit RGB, non-interlaced PNG."""
    chunks = png_chunks(path)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if (depth, color, interlace) != (8, 2, 0):
        raise ValueError(f"{path}: not 8-bit RGB")
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == "IDAT"))
    stride, bpp = width * 3, 3
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, bytes(out)


# --- bundles derived from the tiny one ------------------------------------------------------------------------

def derived_bundle(dest, *, edit_manifest=None, replace=None, drop=()):
    """A copy of the tiny bundle at `dest`: model files symlinked (or replaced by `replace` {name: bytes}, or left
    out when in `drop`), model.json passed through `edit_manifest(dict) -> dict`."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    manifest = json.loads((TINY / "model.json").read_text())
    for name in manifest["files"]:
        if name in drop:
            continue
        if replace and name in replace:
            (dest / name).write_bytes(replace[name])
        else:
            (dest / name).symlink_to(TINY / name)
    if edit_manifest:
        manifest = edit_manifest(manifest)
    (dest / "model.json").write_text(json.dumps(manifest, indent=2))
    return dest


def without_checker(manifest):
    manifest["files"].pop("safety_checker.pt", None)
    manifest["safety"] = None
    return manifest


def without_taesd(dest):
    """A copy of the tiny bundle at `dest` as converted without --taesd."""
    def drop(manifest):
        manifest["files"].pop("taesd_decoder.pt")
        return manifest

    return derived_bundle(dest, edit_manifest=drop, drop=("taesd_decoder.pt",))


if __name__ == "__main__":
    sys.exit("cli_support is a helper module; run python3 -m unittest discover -s tests/cli -p 'test_*.py'")
