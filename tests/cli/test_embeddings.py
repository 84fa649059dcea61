"""Textual-inversion embeddings end to end: scripts/convert.py --embedding puts one into a bundle of the tiny
reference model, and a prompt that names it is the prompt with the word whose vector it holds."""

import hashlib
import json
import struct
import subprocess
import tempfile
import unittest
from pathlib import Path

from cli_support import ROOT, SHARED, TINY, CliTestCase, png_pixels, png_text, run, safetensors_tensor

REFERENCE_TINY = SHARED / "reference" / "tiny" / "model"
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"


def safetensors_row(path, name, row):
    """Row `row` of the float32 matrix `name` in a .safetensors file, as raw bytes."""
    info, data = safetensors_tensor(path, name)
    assert info["dtype"] == "F32" and len(info["shape"]) == 2, info
    width = info["shape"][1]
    return data[row * width * 4:(row + 1) * width * 4], width


def write_embedding(path, vector, width):
    """An A1111-style .safetensors embedding with one vector."""
    header = json.dumps({"emb_params": {"dtype": "F32", "shape": [1, width], "data_offsets": [0, len(vector)]}})
    header += " " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + vector)


class Embeddings(CliTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory(prefix="txt2img-embeddings-")
        tmp = Path(cls.tmp.name)
        tokens = json.loads(run(["tokenize", "cat", "--json", "--model", TINY], tmp).stdout)  # CLIP's ids
        cls.cat_id = tokens["ids"][0]
        vector, width = safetensors_row(REFERENCE_TINY / "text_encoder" / "model.safetensors", TOKEN_EMBEDDING,
                                        cls.cat_id)
        write_embedding(tmp / "MyCat.safetensors", vector, width)
        cls.bundle = tmp / "bundle"
        result = subprocess.run([str(ROOT / "scripts" / "convert.py"), str(REFERENCE_TINY), "--no-safety-checker",
                                 "--embedding", str(tmp / "MyCat.safetensors"), "--out", str(cls.bundle)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        super().tearDownClass()

    def image(self, prompt, name):
        result = self.txt2img(prompt, "--seed", "5", "--no-safety-checker", "-o", name, model=self.bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        return png_pixels(self.dir / name)[2]

    def test_the_embedding_stands_for_its_word(self):
        with_embedding = self.image("a photo of mycat on a sofa", "a.png")
        self.assertEqual(with_embedding, self.image("a photo of cat on a sofa", "b.png"))
        self.assertNotEqual(with_embedding, self.image("a photo of dog on a sofa", "c.png"))

    def test_tokenize_and_info_show_it(self):
        tokens = json.loads(run(["tokenize", "MyCat, cat", "--json", "--model", self.bundle], self.dir).stdout)
        self.assertEqual(tokens["ids"], [49408, tokens["ids"][1], self.cat_id])
        self.assertEqual(tokens["tokens"], 3)
        info = run(["info", self.bundle], self.dir)
        self.assertIn("  embedding      MyCat (1 vector)\n", info.stdout)

    def test_metadata_names_the_embeddings_used_as_a1111_does(self):
        """A1111's "TI hashes": each embedding the prompt or negative prompt uses, with the first 12 hex digits of its
        file's sha256 (what Civitai finds it by); nothing when none is used."""
        digest = hashlib.sha256((Path(self.tmp.name) / "MyCat.safetensors").read_bytes()).hexdigest()[:12]
        result = self.txt2img("a photo of MyCat", "-n", "mycat, blurry", "--seed", "5", "--no-safety-checker",
                              "-o", "a.png", model=self.bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f', TI hashes: "MyCat: {digest}", Version: ', png_text(self.dir / "a.png")["parameters"])
        self.image("a photo of a cat", "b.png")
        self.assertNotIn("TI hashes", png_text(self.dir / "b.png")["parameters"])
        self.image("a photo of a cat, emphasis (mycat:1.2)", "c.png")  # no emphasis: the brackets are text
        self.assertIn("TI hashes", png_text(self.dir / "c.png")["parameters"])


if __name__ == "__main__":
    unittest.main()
