#include "cli/shell_text.hpp"

#include <cstdio>

namespace txt2img::cli {
namespace {

// A control character (C0 but tab, and but newline where `newlines` are kept; DEL; or C1 as UTF-8) at text[i]: its
// length in bytes, else 0. Text from a downloaded image's metadata must not reach a terminal as escape sequences (a
// title, a cleared screen).
size_t control_at(const std::string& text, size_t i, bool newlines = true) {
  const auto c = static_cast<unsigned char>(text[i]);
  if ((c < 0x20 && c != '\t' && !(newlines && c == '\n')) || c == 0x7f) return 1;
  const bool c1 = c == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
                  static_cast<unsigned char>(text[i + 1]) <= 0x9f;
  return c1 ? 2 : 0;
}

// `text` with each control character escaped: \xNN for C0 and DEL; for C1 \xNN (its code point) when printed, and
// its two UTF-8 bytes (\xC2\xNN) inside bash's $'...', which a C locale reads as they are (\u00NN it would leave as
// text). Inside $'...' backslashes and quotes are escaped too.
std::string escape_controls(const std::string& text, bool in_shell, bool newlines = true) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const size_t n = control_at(text, i, newlines);
    if (n == 0) {
      if (in_shell && (text[i] == '\\' || text[i] == '\'')) out += '\\';
      out += text[i++];
      continue;
    }
    for (size_t byte = in_shell ? 0 : n - 1; byte < n; ++byte) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02X", static_cast<unsigned char>(text[i + byte]));
      out += escape;
    }
    i += n;
  }
  return out;
}

// A word for a POSIX shell: as it is when it needs no quoting, else in single quotes; one with control characters
// (with `in_one_line`, newlines too) as bash's and zsh's $'...', whose escapes keep them out of the printed line.
std::string shell_word(const std::string& word, bool in_one_line) {
  const bool plain = !word.empty() && word.find_first_not_of(
                                          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789_-+=.,:/@%") == std::string::npos;
  if (plain) return word;
  bool controls = false;
  for (size_t i = 0; i < word.size() && !controls; ++i) controls = control_at(word, i, !in_one_line) != 0;
  if (controls) return "$'" + escape_controls(word, true, !in_one_line) + "'";
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

}  // namespace

std::string printable(const std::string& text) { return escape_controls(text, false); }

std::string one_line(const std::string& text) { return escape_controls(text, false, /*newlines=*/false); }

// The words as one shell command line.
std::string shell_line(const std::vector<std::string>& words, bool in_one_line) {
  std::string line;
  for (const auto& word : words) line += (line.empty() ? "" : " ") + shell_word(word, in_one_line);
  return line;
}

}  // namespace txt2img::cli
