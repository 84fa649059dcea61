#pragma once

#include <filesystem>
#include <string>

namespace txt2img {

// Lower-case hex sha256 of a file.
std::string sha256_file(const std::filesystem::path& file);

}  // namespace txt2img
