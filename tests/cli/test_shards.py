"""--shard I/N: the union of the shards is the unsharded run, byte for byte."""

import unittest

from cli_support import CliTestCase, files_under, json_lines


class Shards(CliTestCase):
    def test_union_of_shards_equals_unsharded_run(self):
        self.write("p.jsonl", "\n".join([
            '{"prompt": "a fox"}',
            '{"prompt": "a cat", "images": 3}',
            '{"prompt": "a cow", "seed": 5}',
            '{"prompt": "a hen", "steps": 3}',
            '{"prompt": "a pig"}',
        ]))
        common = ["--from-file", "p.jsonl", "--seed", "100", "--images-per-prompt", "2", "-o", "{index:03}-{seed}.png"]
        whole = self.txt2img(*common, "-o", "whole/{index:03}-{seed}.png")
        self.assertEqual(whole.returncode, 0, whole.stderr)
        prompts_per_shard = []
        for shard in range(3):
            result = self.txt2img(*common, "-o", "shards/{index:03}-{seed}.png", "--shard", f"{shard}/3", "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            prompts_per_shard.append(sorted({r["prompt_index"] for r in json_lines(result.stdout)[:-1]}))
        self.assertEqual(prompts_per_shard, [[0, 3], [1, 4], [2]])
        names = files_under(self.dir / "whole")
        self.assertEqual(len(names), 2 + 3 + 2 + 2 + 2)
        self.assertEqual(files_under(self.dir / "shards"), names)
        for name in names:
            self.assertEqual((self.dir / "whole" / name).read_bytes(), (self.dir / "shards" / name).read_bytes(), name)

    def test_shard_without_prompts_writes_nothing(self):
        result = self.txt2img("a fox", "--seed", "1", "--shard", "1/2", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[-1]["written"], 0)
        self.assertEqual(files_under(self.dir), [])


if __name__ == "__main__":
    unittest.main()
