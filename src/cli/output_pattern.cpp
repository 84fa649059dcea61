#include "cli/output_pattern.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "txt2img/error.hpp"

namespace txt2img::cli {
namespace {

constexpr size_t kDefaultSlugChars = 60;
constexpr int kMaxWidth = 64;

const char* const kPlaceholderHelp = "placeholders are {index}, {seed}, {n} and {prompt}, e.g. {index:05}";

}  // namespace

bool ends_with_png(const std::string& s) {
  if (s.size() < 4) return false;
  std::string tail = s.substr(s.size() - 4);
  std::transform(tail.begin(), tail.end(), tail.begin(), [](unsigned char c) { return std::tolower(c); });
  return tail == ".png";
}

std::string slug(const std::string& text, size_t max_chars) {
  std::string out;
  bool dash = false;
  for (unsigned char c : text) {
    if (std::isalnum(c) && c < 0x80) {
      if (dash && !out.empty()) out += '-';
      dash = false;
      if (out.size() >= max_chars) break;
      out += static_cast<char>(std::tolower(c));
    } else {
      dash = true;
    }
  }
  if (out.size() > max_chars) out.resize(max_chars);
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "untitled" : out;
}

OutputPattern OutputPattern::parse(const std::string& pattern, const std::string& what) {
  OutputPattern p;
  p.text_ = pattern;
  std::error_code ec;
  if (pattern.empty()) throw Error(ErrorKind::Usage, what + " is empty; give a file name such as image.png");
  if (pattern.back() == '/' || std::filesystem::is_directory(pattern, ec))
    p.text_ += std::string(pattern.back() == '/' ? "" : "/") + kDefaultFileName;

  const std::string& t = p.text_;
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) p.parts_.push_back({Part::Literal, literal});
    literal.clear();
  };
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '}') {
      if (i + 1 < t.size() && t[i + 1] == '}') {
        literal += '}';
        ++i;
        continue;
      }
      throw Error(ErrorKind::Usage, what + " \"" + pattern + "\": unmatched '}' (write }} for a brace)");
    }
    if (t[i] != '{') {
      literal += t[i];
      continue;
    }
    if (i + 1 < t.size() && t[i + 1] == '{') {
      literal += '{';
      ++i;
      continue;
    }
    const auto close = t.find('}', i);
    if (close == std::string::npos)
      throw Error(ErrorKind::Usage, what + " \"" + pattern + "\": unclosed '{' (write {{ for a brace)");
    const std::string field = t.substr(i + 1, close - i - 1);
    const auto colon = field.find(':');
    const std::string name = field.substr(0, colon);
    const std::string spec = colon == std::string::npos ? "" : field.substr(colon + 1);
    Part part;
    if (name == "index")
      part.kind = Part::Index;
    else if (name == "seed")
      part.kind = Part::Seed;
    else if (name == "n")
      part.kind = Part::N;
    else if (name == "prompt")
      part.kind = Part::Prompt;
    else
      throw Error(ErrorKind::Usage,
                  what + " \"" + pattern + "\": unknown placeholder {" + name + "}; " + kPlaceholderHelp);
    if (colon != std::string::npos) {
      const bool digits =
          !spec.empty() && spec.size() <= 3 && spec.find_first_not_of("0123456789") == std::string::npos;
      const int width = digits ? std::stoi(spec) : 0;
      if (width < 1 || width > kMaxWidth)
        throw Error(ErrorKind::Usage, what + " \"" + pattern + "\": {" + field + "} needs a width from 1 to " +
                                          std::to_string(kMaxWidth) + " after the colon, e.g. {" + name +
                                          (part.kind == Part::Prompt ? ":40}" : ":05}"));
      part.zero_pad = spec[0] == '0' && part.kind != Part::Prompt;
      part.width = width;
    }
    flush();
    p.parts_.push_back(part);
    i = close;
  }
  flush();
  if (p.parts_.empty() || p.parts_.back().kind != Part::Literal || !ends_with_png(p.parts_.back().literal))
    throw Error(ErrorKind::Usage,
                what + " \"" + pattern + "\": the file name must end in .png (the only format written)");
  return p;
}

std::filesystem::path OutputPattern::render(const OutputFields& fields) const {
  std::string out;
  for (const auto& part : parts_) {
    if (part.kind == Part::Literal) {
      out += part.literal;
    } else if (part.kind == Part::Prompt) {
      out += slug(fields.prompt, part.width > 0 ? static_cast<size_t>(part.width) : kDefaultSlugChars);
    } else {
      const uint64_t value = part.kind == Part::Index ? fields.index : part.kind == Part::Seed ? fields.seed : fields.n;
      char buf[96];
      std::snprintf(buf, sizeof buf, part.zero_pad ? "%0*llu" : "%*llu", part.width,
                    static_cast<unsigned long long>(value));
      out += buf;
    }
  }
  // Without "." components and doubled slashes, for reports; ".." stays, as only the file system knows where it leads
  // past a symbolic link ("link/../x.png" is beside the link's target, not here).
  std::filesystem::path tidy;
  for (const auto& part : std::filesystem::path(out))
    if (!part.empty() && part != ".") tidy /= part;
  return tidy;
}

}  // namespace txt2img::cli
