#include "txt2img/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "txt2img/error.hpp"

namespace txt2img {
namespace {

torch::ScalarType dtype_of(const std::string& name, const std::filesystem::path& file) {
  static const std::map<std::string, torch::ScalarType> types = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
      {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
      {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
  auto it = types.find(name);
  if (it == types.end()) throw Error(ErrorKind::Io, file.string() + ": unsupported safetensors dtype " + name);
  return it->second;
}

}  // namespace

SafeTensors SafeTensors::open(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open");
  unsigned char len_bytes[8];
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) throw Error(ErrorKind::Io, file.string() + ": truncated header");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  const auto file_size = std::filesystem::file_size(file);
  if (header_len > file_size - 8) throw Error(ErrorKind::Io, file.string() + ": header length exceeds file size");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));

  SafeTensors st;
  st.file_ = file;
  st.data_offset_ = 8 + header_len;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Io, file.string() + ": malformed safetensors header: " + e.what());
  }
  size_t described = 0;  // bytes of tensor data the header describes
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      for (const auto& [name, text] : value.items())
        if (text.is_string()) st.metadata_.emplace(name, text.get<std::string>());
      continue;
    }
    try {
      Entry e{dtype_of(value.at("dtype").get<std::string>(), file), value.at("shape").get<std::vector<int64_t>>(),
              value.at("data_offsets").at(0).get<size_t>(), value.at("data_offsets").at(1).get<size_t>()};
      if (e.end < e.begin || st.data_offset_ + e.end > file_size)
        throw Error(ErrorKind::Io, file.string() + ": tensor " + key + " lies outside the file");
      described = std::max(described, e.end);
      st.entries_.emplace(key, std::move(e));
    } catch (const nlohmann::json::exception&) {
      throw Error(ErrorKind::Io, file.string() + ": tensor " + key + " has a malformed header entry");
    }
  }
  // As the reference reader requires: bytes past the described ones mean the tensors would be read from the wrong
  // offsets (a header length that cuts into the header's padding still parses).
  if (st.data_offset_ + described != file_size)
    throw Error(ErrorKind::Io, file.string() + ": its header describes " + std::to_string(described) +
                                   " bytes of tensor data but the file holds " +
                                   std::to_string(file_size - st.data_offset_) +
                                   ": a damaged file, or its header length is wrong");
  return st;
}

std::vector<std::string> SafeTensors::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

torch::Tensor SafeTensors::get(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw Error(ErrorKind::Io, file_.string() + ": no tensor named " + key);
  const Entry& e = it->second;
  auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  const size_t bytes = e.end - e.begin;
  if (static_cast<size_t>(t.nbytes()) != bytes)
    throw Error(ErrorKind::Io, file_.string() + ": tensor " + key + " has a size that does not match its shape");
  std::ifstream in(file_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_offset_ + e.begin));
  if (!in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes)))
    throw Error(ErrorKind::Io, file_.string() + ": cannot read tensor " + key);
  return t;
}

}  // namespace txt2img
