// What a run needs of the address space, checked before any model loads.
#pragma once

#include <cstdint>

namespace txt2img {

// Under an address-space limit (`ulimit -v`) only: checks that the address space left holds what a run needs at
// least, for `model_bytes` of model files (those every run reads) and the BLAS library's per-thread buffers, then
// makes those buffers by a matrix product that every thread takes part in. OpenBLAS maps them at its first products
// and, where a mapping fails, retries for ever (the process spins at full CPU), and SentencePiece's protobuf crashes
// where an allocation fails: a limit too low for them is an Error(Runtime) that names it, not a hang or a crash.
// Without a limit it does nothing.
void reserve_address_space(uint64_t model_bytes);

}  // namespace txt2img
