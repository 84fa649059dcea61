// Reader for the .safetensors format (8-byte little-endian header length, JSON header, row-major data), used for
// reference fixtures and by tools that compare against them.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace txt2img {

class SafeTensors {
 public:
  // Throws Error(Io) when the file cannot be read or its header is malformed.
  static SafeTensors open(const std::filesystem::path& file);

  std::vector<std::string> keys() const;
  bool contains(const std::string& key) const { return entries_.count(key) != 0; }
  // A CPU tensor owning a copy of the data. Throws Error(Io) for an unknown key.
  torch::Tensor get(const std::string& key) const;
  // The header's "__metadata__" (string to string, as the format defines it).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    size_t begin, end;
  };
  std::filesystem::path file_;
  size_t data_offset_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace txt2img
