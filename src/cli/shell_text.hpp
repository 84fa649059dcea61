// Text from an image's metadata made safe to print on a terminal or to paste into a shell.
#pragma once

#include <string>
#include <vector>

namespace txt2img::cli {

// `text` with each control character (C0 but newline and tab, DEL, C1) and bidirectional format character (U+061C,
// U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069) escaped as \xNN or \uNNNN: text from a downloaded image's
// metadata must not reach a terminal as escape sequences (a title, a cleared screen), nor reorder a line.
std::string printable(const std::string& text);
// printable(text) with newlines escaped too (\x0A): an error, a warning or a note is one line, whatever it quotes (a
// file name or a value with a newline in it).
std::string one_line(const std::string& text);

// The words as one POSIX shell command line, each quoted where it needs it. `in_one_line`: for a message that
// one_line prints, where a newline inside plain quotes would show as \x0A: such a word is written as $'...\x0A...'.
std::string shell_line(const std::vector<std::string>& words, bool in_one_line = false);

}  // namespace txt2img::cli
