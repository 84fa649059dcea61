"""Files that cannot be written and bundles that cannot be used: exit code, one message, nothing left behind."""

import json
import os
import resource
import shutil
import subprocess
import unittest

from cli_support import (BIN, EXIT_BUNDLE, EXIT_IO, EXIT_USAGE, FAST, TINY, CliTestCase, derived_bundle,
                         failed_json_lines, files_under, run)


class OutputErrors(CliTestCase):
    def test_output_parent_is_a_file(self):
        self.write("blocker", "x")
        result = self.txt2img("a fox", "-o", "blocker/sub/a.png")
        self.assertExit(result, EXIT_IO, "blocker", "not a directory")
        self.assertEqual(files_under(self.dir), ["blocker"])

    def test_output_folder_is_a_dangling_link(self):
        """Caught before the model loads (no "loading" line), naming the link."""
        (self.dir / "dangling").symlink_to(self.dir / "gone")
        result = self.txt2img("a fox", "-o", "dangling/sub/{index}.png", "--images-per-prompt", "2")
        self.assertExit(result, EXIT_IO, '"dangling" is a symbolic link to', "which does not exist")
        self.assertNotIn("loading", result.stderr)
        self.assertFalse((self.dir / "gone").exists())
        self.write("file.txt", "x")
        (self.dir / "to_file").symlink_to(self.dir / "file.txt")
        result = self.txt2img("a fox", "-o", "to_file/{index}.png")
        self.assertExit(result, EXIT_IO, '"to_file" is a symbolic link to', "file.txt\", which is not a directory")

    def test_output_is_a_directory_name_without_slash_gets_default_name(self):
        (self.dir / "d").mkdir()
        result = self.txt2img("a fox", "-o", "d", "--seed", "5")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["d/00000-5.png"])

    def test_output_directory_not_writable(self):
        locked = self.dir / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        self.addCleanup(locked.chmod, 0o755)
        preexec = None
        if os.geteuid() == 0:
            # root writes anywhere; run as nobody, who can read the binary, the bundle and this directory.
            self.dir.chmod(0o755)
            preexec = lambda: (os.setgid(65534), os.setuid(65534))  # noqa: E731
            for parent in [TINY, *TINY.parents]:
                if not os.stat(parent).st_mode & 0o005:
                    self.skipTest(f"{parent} is not readable by nobody")
        result = self.txt2img("a fox", "-o", "locked/sub/a.png", preexec_fn=preexec)
        self.assertExit(result, EXIT_IO, "locked", "not writable")
        self.assertEqual(files_under(self.dir), [])

    def test_a_folder_the_file_system_refuses_is_found_before_any_work(self):
        """sysfs takes no new files, even from root, whose permission checks pass: the folder is tried with a file
        made and removed, not by its permission bits, so the run stops before loading the model."""
        if not os.path.isdir("/sys/kernel"):
            self.skipTest("no sysfs at /sys")
        result = self.txt2img("a fox", "-o", "/sys/kernel/txt2img-test.png")
        self.assertExit(result, EXIT_IO, 'output directory "/sys/kernel" is not writable')
        self.assertNotIn("loading", result.stderr)
        result = self.txt2img("a fox", "-o", "out/a.png")  # the folder tried is left as it was
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["out/a.png"])

    def test_disk_full_mid_write_leaves_no_file(self):
        # A file size limit makes write() fail with EFBIG part way through the PNG, like a full disk.
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        result = self.txt2img("a fox", "-o", "out/{n}.png", "--images-per-prompt", "2", "--json", preexec_fn=limit)
        self.assertExit(result, EXIT_IO, "out/0.png")
        self.assertEqual(files_under(self.dir), [])
        summary = failed_json_lines(result.stdout, EXIT_IO)[-1]
        self.assertEqual((summary["event"], summary["written"], summary["failed"]), ("summary", 0, 1))
        self.assertIn("error", summary)


class StandardOutput(CliTestCase):
    def test_output_lost_on_a_full_disk_is_an_io_error(self):
        """--json, tokenize and info print to standard output; when it cannot take what they print (a full disk here),
        the run is not a success: exit 4, and a line on stderr says what was lost."""
        runs = [["a fox", "--json", "--seed", "1", "-o", "a.png", "--model", TINY, *FAST],
                ["tokenize", "a fox", "--model", TINY], ["info", TINY], ["--help"]]
        for args in runs:
            with open("/dev/full", "w") as full:
                result = subprocess.run([BIN, *map(str, args)], cwd=self.dir, stdout=full, stderr=subprocess.PIPE,
                                        text=True)
            self.assertEqual(result.returncode, EXIT_IO, (args, result.stderr))
            self.assertIn("error: cannot write to standard output", result.stderr)
        self.assertTrue((self.dir / "a.png").is_file())  # the image itself is kept


class BundleErrors(CliTestCase):
    def check(self, bundle, *message):
        result = self.txt2img("a fox", "-o", "a.png", model=bundle)
        self.assertExit(result, EXIT_BUNDLE, *message)
        self.assertFalse((self.dir / "a.png").exists())

    def test_missing_pt(self):
        self.check(derived_bundle(self.dir / "b", drop={"unet.pt"}), "unet.pt", "missing")

    def test_deleted_optional_files_are_named_only_by_runs_that_need_them(self):
        """A user may delete the safety checker or TAESD to save space: the bundle still works without them."""
        bundle = derived_bundle(self.dir / "b", drop={"safety_checker.pt", "taesd_decoder.pt"})
        self.assertExit(self.txt2img("a fox", "-o", "a.png", model=bundle), EXIT_USAGE,
                        "safety_checker.pt (its safety checker) is missing, though model.json lists it",
                        "--no-safety-checker")
        self.assertExit(self.txt2img("a fox", "-o", "a.png", "--no-safety-checker", "--decoder", "taesd",
                                     model=bundle), EXIT_USAGE, "taesd_decoder.pt (its TAESD decoder) is missing")
        self.assertFalse((self.dir / "a.png").exists())
        result = self.txt2img("a fox", "-o", "a.png", "--no-safety-checker", model=bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        listing = run(["info", bundle, "--verify"], self.dir)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("safety checker deleted (generate with --no-safety-checker)", listing.stdout)
        self.assertIn("TAESD decoder  deleted", listing.stdout)
        self.assertRegex(listing.stdout, r"safety_checker\.pt .* MISSING")
        self.assertRegex(listing.stdout, r"unet\.pt .*  ok")
        listed = json.loads(run(["info", bundle, "--json", "--verify"], self.dir).stdout)["files"]
        files = {f["name"]: f for f in listed}
        self.assertEqual((files["taesd_decoder.pt"].get("missing"), files["taesd_decoder.pt"].get("verified")),
                         (True, None))
        self.assertEqual((files["unet.pt"].get("missing"), files["unet.pt"].get("verified")), (None, True))

    def test_truncated_pt(self):
        self.check(derived_bundle(self.dir / "b", replace={"unet.pt": b"PK\3\4 truncated"}), "unet.pt")

    def test_corrupt_pt_of_the_right_size(self):
        size = json.loads((TINY / "model.json").read_text())["files"]["unet.pt"]["bytes"]
        self.check(derived_bundle(self.dir / "b", replace={"unet.pt": b"\x13" * size}), "unet.pt")

    def test_a_module_copied_over_another_s_file(self):
        """Another network in a module's place (sizes fixed in model.json to match) is refused when it loads, naming
        the file and what it holds, not with TorchScript's message at its first call."""
        def swapped(name, holds):
            def edit(manifest):
                manifest["files"][name]["bytes"] = (TINY / holds).stat().st_size
                return manifest
            return derived_bundle(self.dir / name, replace={name: (TINY / holds).read_bytes()}, edit_manifest=edit)
        self.check(swapped("unet.pt", "vae_decoder.pt"), "unet.pt is not the module it should be: it holds a "
                   "VAEDecoder, not a U-Net (UNet2DConditionModel)")
        self.check(swapped("vae_decoder.pt", "text_encoder.pt"), "vae_decoder.pt is not the module it should be: "
                   "it holds a CLIPTextModel, not a VAE decoder")

    def test_manifest_values_out_of_range(self):
        """A hand-edited or damaged model.json is a bundle error, not a division by zero or a LibTorch shape error."""
        for field, value, message in (("vae_scale_factor", 0, 'field "vae_scale_factor" is 0, not from 1 to 64'),
                                      ("vae_scale_factor", 6, '"vae_scale_factor" must be a power of two'),
                                      ("latent_channels", 3, '"latent_channels" is 3, not 4 (SD 1.x latents'),
                                      ("pad_id", 60000, '"pad_id" is 60000'),
                                      ("default_size", 7, '"default_size" is 7, not from 8 to 4096'),
                                      ("default_size", 100, '"default_size" must be a multiple of 8'),
                                      ("scale_factor", 0, '"scale_factor" is 0, not a positive number')):
            def edit(m):
                m[field] = value
                return m
            shutil.rmtree(self.dir / "b", ignore_errors=True)
            self.check(derived_bundle(self.dir / "b", edit_manifest=edit), message)

    def test_unknown_format_version(self):
        def bump(m):
            m["format_version"] = 99
            return m
        self.check(derived_bundle(self.dir / "b", edit_manifest=bump), "format version 99")

    def test_corrupt_manifest(self):
        bundle = derived_bundle(self.dir / "b")
        (bundle / "model.json").write_text("{ not json")
        self.check(bundle, "model.json", "corrupt")
        (bundle / "model.json").write_text("[]")
        self.check(bundle, "model.json is corrupt", "cannot use value() with array")
        (bundle / "model.json").unlink()
        (bundle / "model.json").mkdir()
        self.check(bundle, "model.json is not a file")

    def test_manifest_fields_of_the_wrong_type(self):
        """A value of the wrong type (null, a number for a name) is a corrupt manifest (exit 3), not a runtime
        failure; so is a training schedule of no timesteps."""
        def edit(m):
            m["model_name"] = None
            return m

        def no_timesteps(m):
            m["scheduler"]["num_train_timesteps"] = 0
            return m
        self.check(derived_bundle(self.dir / "b", edit_manifest=edit), "model.json is corrupt", "must be string")
        self.check(derived_bundle(self.dir / "c", edit_manifest=no_timesteps),
                   '"num_train_timesteps" is 0, not from 2 to 1000000')

    def test_not_a_bundle(self):
        (self.dir / "empty").mkdir()
        self.check(self.dir / "empty", "model.json")


if __name__ == "__main__":
    unittest.main()
