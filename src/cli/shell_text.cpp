#include "cli/shell_text.hpp"

#include <cstdio>

namespace txt2img::cli {
namespace {

// A control character (C0 but tab, and but newline where `newlines` are kept; DEL; C1, or a bidirectional format
// character, as UTF-8) at text[i]: its length in bytes, else 0. Text from a downloaded image's metadata must not
// reach a terminal as escape sequences (a title, a cleared screen), nor reorder what a command line shows.
size_t control_at(const std::string& text, size_t i, bool newlines = true) {
  const auto byte = [&](size_t k) { return i + k < text.size() ? static_cast<unsigned char>(text[i + k]) : 0; };
  const unsigned char c = byte(0);
  if ((c < 0x20 && c != '\t' && !(newlines && c == '\n')) || c == 0x7f) return 1;
  if (c == 0xc2 && byte(1) >= 0x80 && byte(1) <= 0x9f) return 2;
  // U+061C, U+200E and U+200F (marks), U+202A to U+202E (embeddings, overrides), U+2066 to U+2069 (isolates).
  if (c == 0xd8 && byte(1) == 0x9c) return 2;
  if (c == 0xe2 && byte(1) == 0x80 && (byte(2) == 0x8e || byte(2) == 0x8f || (byte(2) >= 0xaa && byte(2) <= 0xae)))
    return 3;
  if (c == 0xe2 && byte(1) == 0x81 && byte(2) >= 0xa6 && byte(2) <= 0xa9) return 3;
  return 0;
}

// `text` with each control character escaped: printed as its code point (\xNN, \uNNNN); inside bash's $'...' as its
// UTF-8 bytes (\xNN each), which any locale reads as they are (\uNNNN a C locale would leave as text), and there
// backslashes and quotes are escaped too.
std::string escape_controls(const std::string& text, bool in_shell, bool newlines = true) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const size_t n = control_at(text, i, newlines);
    if (n == 0) {
      if (in_shell && (text[i] == '\\' || text[i] == '\'')) out += '\\';
      out += text[i++];
      continue;
    }
    char escape[16];
    if (in_shell) {
      for (size_t k = 0; k < n; ++k) {
        std::snprintf(escape, sizeof escape, "\\x%02X", static_cast<unsigned char>(text[i + k]));
        out += escape;
      }
    } else {
      const auto b = [&](size_t k) { return static_cast<unsigned>(static_cast<unsigned char>(text[i + k])); };
      const unsigned code = n == 1   ? b(0)
                            : n == 2 ? (b(0) & 0x1f) << 6 | (b(1) & 0x3f)
                                     : (b(0) & 0x0f) << 12 | (b(1) & 0x3f) << 6 | (b(2) & 0x3f);
      if (code < 0x100)
        std::snprintf(escape, sizeof escape, "\\x%02X", code);
      else
        std::snprintf(escape, sizeof escape, "\\u%04X", code);
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
