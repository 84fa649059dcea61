"""scripts/bench_cpu.sh on the tiny bundle: it runs every row and prints the machine and one table (a benchmark is
only recorded where it was run; this checks that it still runs, not how fast)."""

import json
import subprocess
import unittest
from pathlib import Path

from cli_support import BIN, ROOT, TINY, CliTestCase


class BenchCpu(CliTestCase):
    def test_runs_every_row_and_names_blas_and_malloc(self):
        bench = Path(BIN).parent / "txt2img-bench"
        self.assertTrue(bench.is_file(), f"no txt2img-bench beside {BIN}")
        result = subprocess.run(
            [str(ROOT / "scripts" / "bench_cpu.sh"), "--model", str(TINY), "--size", "32", "--steps", "2",
             "--threads", "1", "--rounds", "1", "--bench", str(bench), "--out", str(self.dir / "out")],
            capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^blas: \S+")
        version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout
        malloc = "tcmalloc" if "tcmalloc" in version else "glibc malloc"
        self.assertIn(f"ours: {bench}; {version.strip()}", result.stdout)
        rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
        names = [row.split(" | ")[0][2:] for row in rows]
        self.assertEqual(names[:2], ["txt2img-bench", "PyTorch eager"])
        self.assertIn(malloc, rows[0])
        self.assertIn("glibc malloc", rows[1])
        for row in rows:  # every figure is a number
            for cell in row.strip("| ").split(" | ")[2:]:
                float(cell)
        self.assertEqual(len(list((self.dir / "out").glob("*.json"))), len(rows))

    def test_decodes_with_taesd_on_every_row(self):
        bench = Path(BIN).parent / "txt2img-bench"
        result = subprocess.run(
            [str(ROOT / "scripts" / "bench_cpu.sh"), "--model", str(TINY), "--size", "32", "--steps", "1",
             "--threads", "1", "--rounds", "1", "--decoder", "taesd", "--bench", str(bench), "--out",
             str(self.dir / "out")], capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--decoder taesd", result.stdout)
        records = [json.loads(p.read_text()) for p in (self.dir / "out").glob("*.json")]
        self.assertGreaterEqual(len(records), 2)
        self.assertEqual({r["decoder"] for r in records}, {"taesd"})


class BenchEager(CliTestCase):
    def test_compile_needs_a_pytorch_that_has_it(self):
        """bench_eager.py --compile wraps the U-Net in torch.compile, which PyTorch gained in 2.0: an older one (as
        Debian 12's 1.13) is refused before anything loads, naming its version."""
        python = subprocess.run([str(ROOT / "scripts" / "with-torch-python"), "-c",
                                 "import torch; print(torch.__version__, hasattr(torch, 'compile'))"],
                                capture_output=True, text=True)
        if python.returncode != 0:
            self.skipTest(f"no Python with torch: {python.stderr.strip()}")
        version, has_compile = python.stdout.split()
        if has_compile == "True":
            self.skipTest(f"PyTorch {version} has torch.compile")
        result = subprocess.run([str(ROOT / "scripts" / "with-torch-python"), str(ROOT / "scripts" / "bench_eager.py"),
                                 "--model", str(TINY), "--compile", "default"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(f"--compile needs torch.compile, which PyTorch {version} lacks", result.stderr)


class ProfileUnet(CliTestCase):
    def profile(self, *args):
        result = subprocess.run([str(ROOT / "scripts" / "with-torch-python"), str(ROOT / "scripts" / "profile_unet.py"),
                                 "--model", str(TINY), "--calls", "2", "--warmup", "1", *args],
                                capture_output=True, text=True, timeout=300)
        if "no Python with torch" in result.stderr:
            self.skipTest(result.stderr.strip())
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)

    def test_accounts_for_the_call_by_operator_and_kernel(self):
        """Every operator's share of the device time is listed, they add up to it, and the largest kernels come in
        order; guidance's two rows per image are the U-Net's batch."""
        manifest = json.loads((TINY / "model.json").read_text())
        factor = manifest["vae_scale_factor"]
        record = self.profile("--batch", "2", "--width", "32", "--height", "48", "--top", "4")
        self.assertEqual(record["input_shape"], [4, manifest["latent_channels"], 48 // factor, 32 // factor])
        self.assertNotIn("graph_ms_per_call", record)  # CUDA only
        ops = record["by_op"]
        self.assertAlmostEqual(sum(row["ms_per_call"] for row in ops), record["device_ms_per_call"], places=6)
        self.assertAlmostEqual(sum(row["share"] for row in ops), 1.0, places=6)
        names = [row["op"] for row in ops]
        self.assertIn("aten::group_norm", names)
        self.assertTrue(any("conv" in name for name in names), names)
        kernels = [row["ms_per_call"] for row in record["by_kernel"]]
        self.assertEqual(len(kernels), 4)
        self.assertEqual(kernels, sorted(kernels, reverse=True))
        self.assertGreater(record["plain_ms_per_call"], 0)

    def test_channels_last_lays_out_the_sample_and_the_convolutions_nhwc(self):
        nhwc = self.profile("--channels-last", "--top", "1")
        self.assertTrue(nhwc["channels_last"])
        self.assertTrue(nhwc["input_channels_last"])
        self.assertGreater(nhwc["channels_last_conv_weights"], 0)
        self.assertGreater(nhwc["device_ms_per_call"], 0)
        nchw = self.profile("--top", "1")
        self.assertFalse(nchw["input_channels_last"])
        self.assertEqual(nchw["channels_last_conv_weights"], 0)


class UnetVariants(CliTestCase):
    def variants(self, *args):
        return subprocess.run([str(ROOT / "scripts" / "with-torch-python"), str(ROOT / "scripts" / "unet_variants.py"),
                               "--model", str(TINY), "--replays", "1", "--rounds", "1", *args],
                              capture_output=True, text=True, timeout=300)

    def test_rewrites_keep_the_values_and_say_where_they_ran(self):
        """Each rewrite runs in every place of its kind and changes the output by float32 rounding only; together
        they run in the same places; attention kernels are a CUDA choice, which the CPU reports as not run."""
        result = self.variants("--channels-last", "--width", "64", "--height", "64")
        if "no Python with torch" in result.stderr:
            self.skipTest(result.stderr.strip())
        self.assertEqual(result.returncode, 0, result.stderr)
        entries = {e["name"]: e for e in json.loads(result.stdout)["variants"]}
        self.assertEqual(entries["baseline"]["rewritten"], {})
        kinds = {"group_norm_nhwc": "nhwc_group_norms", "fused_qkv": "fused_attentions",
                 "batched_temb": "batched_temb_resnets"}
        together = {}
        for name, kind in kinds.items():
            entry = entries[name]
            self.assertEqual(list(entry["rewritten"]), [kind], name)
            self.assertGreater(entry["rewritten"][kind], 0, name)
            self.assertLess(entry["max_rel_diff"], 1e-5, name)
            together.update(entry["rewritten"])
        self.assertEqual(entries["all_rewrites"]["rewritten"], together)
        self.assertLess(entries["all_rewrites"]["max_rel_diff"], 1e-5)
        for kernel in ("flash", "memory_efficient", "cudnn", "math"):
            self.assertIn("CUDA only", entries["attention_" + kernel]["error"])

    def test_refuses_an_unknown_variant(self):
        result = self.variants("--only", "fused_qkv,fast")
        if "no Python with torch" in result.stderr:
            self.skipTest(result.stderr.strip())
        self.assertEqual(result.returncode, 2)
        self.assertIn("unknown variant fast", result.stderr)


if __name__ == "__main__":
    unittest.main()
