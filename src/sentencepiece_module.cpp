// libsentencepiece behind a C interface, built as its own shared module. Debian's libsentencepiece exports a private
// copy of protobuf 3.14 that clashes with the protobuf 3.21 libtorch loads (the process crashes before main when
// both are linked), so the tokenizer dlopens this module with RTLD_DEEPBIND and the two copies never meet.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

void copy_message(const std::string& message, char* out, size_t capacity) {
  if (capacity == 0) return;
  std::strncpy(out, message.c_str(), capacity - 1);
  out[capacity - 1] = '\0';
}

}  // namespace

extern "C" {

// A processor for the model file, or null with the reason in `error`.
void* txt2img_spm_load(const char* model_file, char* error, size_t error_capacity) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->Load(model_file);
  if (!status.ok()) {
    copy_message(status.ToString(), error, error_capacity);
    delete processor;
    return nullptr;
  }
  return processor;
}

void txt2img_spm_free(void* processor) { delete static_cast<sentencepiece::SentencePieceProcessor*>(processor); }

// Id of a piece when it is a control piece, else -1.
int txt2img_spm_control_id(void* processor, const char* piece) {
  const auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
  const int id = sp->PieceToId(piece);
  return sp->IsControl(id) ? id : -1;
}

// Encodes `text` into `ids` (at most `capacity`); returns the number of ids, which may exceed `capacity`, or -1
// with the reason in `error`.
long txt2img_spm_encode(void* processor, const char* text, size_t length, int* ids, size_t capacity, char* error,
                        size_t error_capacity) {
  std::vector<int> out;
  const auto status =
      static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Encode(std::string(text, length), &out);
  if (!status.ok()) {
    copy_message(status.ToString(), error, error_capacity);
    return -1;
  }
  std::memcpy(ids, out.data(), std::min(out.size(), capacity) * sizeof(int));
  return static_cast<long>(out.size());
}

}  // extern "C"
