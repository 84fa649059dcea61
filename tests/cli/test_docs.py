"""The documentation against the binary: docs/cli.md and README.md name exactly the flags, exit codes, samplers and
--json keys that the binary has, so a flag, code, sampler or key renamed, added or removed on one side fails here."""

import functools
import json
import re
import unittest

from cli_support import ROOT, TINY, CliTestCase, json_lines, png_text, run

CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"

LONG_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
SAMPLER_NAME = re.compile(r"[a-z][a-z0-9_]*")
# One option line of CLI11's help: two blanks, then the option's names ("-m,--model", "--json"), then its type.
HELP_OPTION = re.compile(r"^  (-[A-Za-z0-9-]+(?:,-[A-Za-z0-9-]+)*)(?=\s|$)")


# --- the binary's help --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def help_text(subcommand=None):
    args = ([subcommand] if subcommand else []) + ["--help"]
    result = run(args, ROOT)
    if result.returncode != 0:
        raise AssertionError(f"txt2img {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def help_section(text, title):
    """The indented lines under a help section heading such as "Options:" (up to the first unindented line)."""
    lines, inside = [], False
    for line in text.splitlines():
        if line == title:
            inside = True
        elif inside and line and not line.startswith(" "):
            break
        elif inside and line:
            lines.append(line)
    if not inside:
        raise AssertionError(f"no {title!r} section in the help:\n{text}")
    return lines


def help_options(subcommand=None):
    """{long flag: short flag or None} of the Options: section."""
    options = {}
    for line in help_section(help_text(subcommand), "Options:"):
        match = HELP_OPTION.match(line)
        if match:
            names = match.group(1).split(",")
            longs = [n for n in names if n.startswith("--")]
            shorts = [n for n in names if not n.startswith("--")]
            for name in longs:
                options[name] = shorts[0] if shorts else None
    return options


def help_subcommands():
    return [line.split()[0] for line in help_section(help_text(), "Subcommands:")]


def help_exit_codes(subcommand=None):
    """{code: its line's text} of the Exit codes: section."""
    codes = {}
    for line in help_section(help_text(subcommand), "Exit codes:"):
        match = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if match:
            codes[int(match.group(1))] = match.group(2)
    return codes


def help_samplers_line():
    lines = [l for l in help_text().splitlines() if l.startswith("Samplers: ")]
    if len(lines) != 1:
        raise AssertionError("the help has no single 'Samplers: ...' line")
    return lines[0][len("Samplers: "):]


def help_sampler_groups():
    """The help's samplers: those it names one by one, then A1111's schedule types and the samplers that run on them
    ("...; and on AUTOMATIC1111's schedule types a, b and c: x, y and z with the schedule after the name ...")."""
    named, on_schedules = help_samplers_line().split("; and on AUTOMATIC1111's schedule types ")
    schedules, bases = on_schedules.split(" with the schedule after the name")[0].split(": ")
    return named.split(", "), re.split(", | and ", schedules), re.split(", | and ", bases)


def help_samplers():
    """Every sampler name the help stands for, in the order of txt2img's own list."""
    named, schedules, bases = help_sampler_groups()
    return named + [f"{base}_{schedule}" for schedule in schedules for base in bases]


# --- Markdown -------------------------------------------------------------------------------------------------------

def markdown_section(text, heading):
    """The body of the section whose heading line is `heading` (e.g. "## Generating"), up to the next heading of the
    same or a higher level; fenced code blocks are part of the body, '#' lines inside them are not headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, inside, fenced = [], False, False
    for line in text.splitlines():
        is_heading = not fenced and re.match(r"^#{1,6} ", line)
        if line.strip().startswith("```"):
            fenced = not fenced
        if inside and is_heading and len(line) - len(line.lstrip("#")) <= level:
            break
        if inside:
            lines.append(line)
        elif line == heading:
            inside = True
    if not inside:
        raise AssertionError(f"no section {heading!r}")
    return "\n".join(lines)


def table_rows(section):
    """The body rows of the first Markdown table in `section`, as lists of cells (header and rule left out;
    '\\|' inside a cell is a literal bar)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    if len(rows) < 3:
        raise AssertionError(f"no table in:\n{section[:300]}")
    return rows[2:]


def code_spans(text):
    return re.findall(r"`([^`]+)`", text)


def json_blocks(section):
    return [json.loads(line) for block in re.findall(r"```json\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip()]


def read(path):
    return path.read_text(encoding="utf-8")


# --- JSON shapes ----------------------------------------------------------------------------------------------------

def shape(value):
    """The keys of a JSON value, recursively, with the JSON type of every leaf (integers and floats are both
    "number": an example's 2.91 may be a run's 3)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------------------------------

class Flags(CliTestCase):
    def documented_generate_flags(self):
        """{long flag: short flag or None} from the first column of the flag table under "## Generating"."""
        flags = {}
        for cells in table_rows(markdown_section(read(CLI_MD), "## Generating")):
            # A cell such as "`-W, --width N`, `-H, --height N`" or "`--version`, `-h, --help`".
            for span in code_spans(cells[0]):
                match = re.match(r"^(-[A-Za-z], )?(--[a-z][a-z0-9-]*)", span)
                if match:
                    flags[match.group(2)] = match.group(1)[:-2] if match.group(1) else None
        return flags

    def test_flag_table_lists_exactly_the_flags_of_the_help(self):
        documented, actual = self.documented_generate_flags(), help_options()
        self.assertGreater(len(actual), 25, "too few options parsed from --help: is the parser broken?")
        self.assertEqual(sorted(set(actual) - set(documented)), [],
                         "flags in `txt2img --help` missing from the flag table of docs/cli.md")
        self.assertEqual(sorted(set(documented) - set(actual)), [],
                         "flags in the flag table of docs/cli.md that `txt2img --help` does not have")

    def test_flag_table_short_flags_match_the_help(self):
        documented, actual = self.documented_generate_flags(), help_options()
        self.assertEqual({f: documented.get(f) for f in actual}, actual,
                         "short flags (-p, -n, ...) in docs/cli.md's flag table differ from `txt2img --help`")

    def test_flag_table_defaults_match_the_help(self):
        # Where the help prints a default ("--steps INT=50"), the table's default column must show it.
        defaults = {}
        for line in help_section(help_text(), "Options:"):
            match = re.match(r"^  (?:-[A-Za-z],)?(--[a-z][a-z0-9-]*) (.*)$", line)
            default = match and re.search(r"=(\S+)", match.group(2).split("  ")[0])  # not in the description
            if default:
                defaults[match.group(1)] = default.group(1)
        self.assertGreaterEqual(len(defaults), 8, defaults)
        rows = {}
        for cells in table_rows(markdown_section(read(CLI_MD), "## Generating")):
            for flag in LONG_FLAG.findall(cells[0]):
                rows[flag] = cells[1].replace("`", "")
        for flag, default in defaults.items():
            self.assertIn(default, re.findall(r"[\w./$]+", rows[flag]),
                          f"{flag}: the help's default {default!r}, docs/cli.md says {rows[flag]!r}")

    def test_subcommands_are_documented_with_their_flags(self):
        text = read(CLI_MD)
        subcommands = help_subcommands()
        self.assertEqual(sorted(subcommands), ["info", "tokenize"])
        for sub in subcommands:
            section = markdown_section(text, f"## `txt2img {sub}`")
            documented = set(LONG_FLAG.findall(section))
            actual = set(help_options(sub)) - {"--help"}  # --help is in the flag table, for every subcommand
            self.assertTrue(actual, f"no options parsed from `txt2img {sub} --help`")
            self.assertEqual(sorted(actual - documented), [],
                             f"flags of `txt2img {sub} --help` missing from docs/cli.md's `txt2img {sub}` section")
            self.assertEqual(sorted(documented - actual - {"--help"}), [],
                             f"docs/cli.md's `txt2img {sub}` section names flags that `txt2img {sub}` lacks")

    def test_every_flag_mentioned_in_cli_md_exists(self):
        # Prose and examples too: a flag mentioned anywhere in docs/cli.md is a flag of txt2img or a subcommand.
        known = set(help_options()).union(*(help_options(sub) for sub in help_subcommands()))
        mentioned = set(LONG_FLAG.findall(read(CLI_MD)))
        self.assertEqual(sorted(mentioned - known), [], "docs/cli.md mentions flags that txt2img does not have")


class ExitCodes(CliTestCase):
    def test_help_of_every_command_lists_the_same_codes(self):
        codes = help_exit_codes()
        self.assertIn(0, codes)
        self.assertGreaterEqual(len(codes), 5, codes)
        for sub in help_subcommands():
            self.assertEqual(help_exit_codes(sub), codes, f"`txt2img {sub} --help`")

    def test_cli_md_table_lists_exactly_the_help_codes(self):
        codes = help_exit_codes()
        rows = table_rows(markdown_section(read(CLI_MD), "## Exit codes and errors"))
        documented = {int(cells[0]): cells[1] for cells in rows}
        self.assertEqual(sorted(documented), sorted(codes),
                         "the exit-code table of docs/cli.md differs from `txt2img --help`")
        # Each code means the same thing: the meaning's first word ("usage", "runtime", "NSFW") is in the help's line.
        for code, meaning in documented.items():
            self.assertIn(meaning.split()[0].lower(), codes[code].lower(), f"exit code {code}")

    def test_readme_summary_names_exactly_the_help_codes(self):
        codes = help_exit_codes()
        match = re.search(r"exit\s+codes\s+\(([^)]*)\)", read(README))
        self.assertIsNotNone(match, "README.md has no 'exit codes (0 success, ...)' summary")
        items = [item.strip() for item in match.group(1).split(",")]
        summary = {int(item.split()[0]): item.split()[1] for item in items}
        self.assertEqual(sorted(summary), sorted(codes), "README.md's exit-code summary differs from `txt2img --help`")
        for code, word in summary.items():
            self.assertIn(word.lower(), codes[code].lower(), f"README.md, exit code {code}")


class Samplers(CliTestCase):
    """The samplers of `--help`, run once each (a JSON Lines prompt file, one line per sampler), are those of the
    --sampler row of docs/cli.md and of README.md's "Samplers, ..." paragraph; A1111's names in the metadata are
    those docs/cli.md lists."""

    def test_help_and_unknown_sampler_error_agree(self):
        result = self.txt2img("a fox", "--sampler", "no-such-sampler")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn('unknown sampler "no-such-sampler" (known: ' + help_samplers_line() +
                      ", and model, the model's own;", result.stderr)

    def test_every_sampler_runs_and_is_documented(self):
        samplers = help_samplers()
        self.assertIn("ddim", samplers)
        # A1111's UniPC needs as many steps as its order, 3.
        lines = "".join(json.dumps({"prompt": "a fox", "sampler": s, "seed": 1, "output": f"{s}.png",
                                    **({"steps": 3} if s == "unipc_a1111" else {})}) + "\n" for s in samplers)
        self.write("samplers.jsonl", lines)
        result = self.txt2img("--from-file", "samplers.jsonl", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        images = [r for r in json_lines(result.stdout) if r["event"] == "image"]
        self.assertEqual([r["sampler"] for r in images], samplers)

        cli_md = read(CLI_MD)
        row = [cells for cells in table_rows(markdown_section(cli_md, "## Generating"))
               if "--sampler" in cells[0]]
        self.assertEqual(len(row), 1, "no --sampler row in docs/cli.md's flag table")
        paragraphs = [p for p in read(README).split("\n\n") if p.startswith("Samplers")]
        self.assertEqual(len(paragraphs), 1, "README.md has no paragraph starting 'Samplers'")
        named, schedules, bases = help_sampler_groups()
        for where, text in [("the --sampler row of docs/cli.md", row[0][2]), ("README.md's samplers", paragraphs[0])]:
            spans = code_spans(text)
            names = {s for s in spans if SAMPLER_NAME.fullmatch(s)}  # not "`--help` lists ...", "`--eta`", files
            # Each sampler the help names, each schedule suffix and the samplers on them; examples of those.
            self.assertEqual(sorted(set(named) | set(bases)), sorted(names & (set(named) | set(bases))), where)
            self.assertLessEqual(names, set(samplers), f"{where} names samplers `txt2img --help` lacks")
            for schedule in schedules:
                self.assertIn(f"_{schedule}", spans, where)

        metadata = markdown_section(cli_md, "## Metadata")
        a1111 = re.search(r"Samplers use A1111's names \(([^)]*)\)", metadata)
        self.assertIsNotNone(a1111, "docs/cli.md no longer lists A1111's sampler names")
        written = {re.search(r"Sampler: ([^,]+),", png_text(self.dir / f"{s}.png")["parameters"]).group(1)
                   for s in samplers}
        self.assertEqual(sorted(code_spans(a1111.group(1))), sorted(written),
                         "A1111 sampler names in docs/cli.md differ from those written into the PNGs")


class JsonOutput(CliTestCase):
    """The --json lines documented in docs/cli.md have the keys (recursively) and JSON types of a real run's."""

    # Keys a real run prints only sometimes; the documented examples are of a successful run.
    OPTIONAL = {
        "summary": {"error"},  # only when an error stopped the run (docs/cli.md: 'whose message is in "error"')
    }

    def test_image_and_summary_lines(self):
        documented = {record["event"]: record for record in
                      json_blocks(markdown_section(read(CLI_MD), "### `--json`"))}
        self.assertEqual(sorted(documented), ["error", "image", "preview", "step", "summary"])
        # The error example is the line of a run refused for its output, word for word.
        self.write("a.png", "there\n")
        refused = self.txt2img("a fox", "--json", "-o", "a.png")
        self.assertEqual(json_lines(refused.stdout), [documented.pop("error")])
        result = self.txt2img("a fox", "--seed", "42", "--json", "--json-progress", "--preview", "now.png", "-q")
        self.assertEqual(result.returncode, 0, result.stderr)
        actual = {record["event"]: record for record in json_lines(result.stdout)}
        self.assertEqual(sorted(actual), ["image", "preview", "step", "summary"])
        for event in actual:
            want, got = shape(documented[event]), shape(actual[event])
            for key in self.OPTIONAL.get(event, ()):
                self.assertNotIn(key, got, f"a successful run printed {key!r}")
                want.pop(key, None)
            self.assertEqual(want, got, f'the "{event}" line of docs/cli.md differs from a real run\'s')
        # The example image uses the default output name with seed 42, as this run does.
        self.assertEqual(documented["image"]["path"], actual["image"]["path"])

    def test_tokenize_json_keys(self):
        # docs/cli.md: `--json` prints {"prompt", "ids", ...}; "dropped" only when the prompt is truncated,
        # and "line" only with --from-file.
        section = markdown_section(read(CLI_MD), "## `txt2img tokenize`")
        listed = re.search(r"`--json` prints `\{([^}]*)\}`", section)
        self.assertIsNotNone(listed, "docs/cli.md no longer lists the keys of `txt2img tokenize --json`")
        documented = set(re.findall(r'"(\w+)"', listed.group(1)))
        short = json.loads(run(["tokenize", "a fox", "--model", TINY, "--json"], self.dir).stdout)
        long = json.loads(run(["tokenize", " ".join(["fox"] * 80), "--model", TINY, "--json"], self.dir).stdout)
        self.assertTrue(long["truncated"])
        self.assertEqual(sorted(documented), sorted(long))
        self.assertEqual(sorted(documented - {"dropped"}), sorted(short))
        self.assertIn("`line`", section)
        self.write("p.txt", "a fox\n")
        from_file = json.loads(run(["tokenize", "--from-file", "p.txt", "--model", TINY, "--json"],
                                   self.dir).stdout)
        self.assertEqual(sorted(documented - {"dropped"} | {"line"}), sorted(from_file))

    def test_info_json_and_metadata_keys(self):
        result = self.txt2img("a fox", "--seed", "1", "-o", "a.png", "-q")
        self.assertEqual(result.returncode, 0, result.stderr)
        info = json.loads(run(["info", "a.png", "--json"], self.dir).stdout)
        section = markdown_section(read(CLI_MD), "## Metadata")
        documented = re.search(r"`--json` prints `\{([^}]*)\}`", section)
        self.assertIsNotNone(documented, "docs/cli.md no longer lists the keys of `txt2img info FILE.png --json`")
        self.assertEqual(sorted(re.findall(r'"(\w+)"', documented.group(1))), sorted(info))
        # The txt2img chunk's keys, listed in the '* `txt2img`, JSON with ...' item.
        item = re.search(r"\* `txt2img`, JSON with [^:]*: (.*?)\n\n", section, re.S)
        self.assertIsNotNone(item, "docs/cli.md no longer lists the keys of the txt2img metadata chunk")
        item = item.group(1)
        top_level = re.sub(r"\([^)]*\)", "", item)  # "(`name`, `hash`)" are the keys of "model"
        self.assertEqual(sorted(code_spans(top_level)), sorted(info["txt2img"]))
        for key in ["model", "safety"]:
            nested = re.search(rf"`{key}` \(([^)]*)\)", item)
            self.assertIsNotNone(nested, f"docs/cli.md no longer lists the keys of the metadata's {key!r}")
            # "`mode`: `replace`/`report`/`off`, `nsfw`: ..." (keys before colons) or "`name`, `hash`"
            keys = re.findall(r"`(\w+)`:", nested.group(1)) or code_spans(nested.group(1))
            self.assertEqual(sorted(keys), sorted(info["txt2img"][key]), key)


if __name__ == "__main__":
    unittest.main()
