#include "txt2img/error.hpp"

namespace txt2img {

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Usage: return 2;
    case ErrorKind::Bundle: return 3;
    case ErrorKind::Io: return 4;
    case ErrorKind::Runtime: return 5;
    case ErrorKind::Nsfw: return 6;
    case ErrorKind::Interrupted: return 130;
  }
  return 1;
}

}  // namespace txt2img
