// The sizes of the C ABI's structs and the packed tile constants, as this build compiled them: lib.py checks
// its ctypes declarations and the constants that packing.py lays weights out by against these at load.
#include <cstring>

#include "internal.h"

int32_t ssk_sizeof_matrix(void) { return (int32_t)sizeof(ssk_matrix); }
int32_t ssk_sizeof_rope(void) { return (int32_t)sizeof(ssk_rope); }
int32_t ssk_sizeof_layer(void) { return (int32_t)sizeof(ssk_layer); }
int32_t ssk_sizeof_model(void) { return (int32_t)sizeof(ssk_model); }
int32_t ssk_sizeof_step(void) { return (int32_t)sizeof(ssk_step); }

int32_t ssk_tile_constant(const char* name) {
  static const struct {
    const char* name;
    int32_t value;
  } constants[] = {
      {"SSK_NR", SSK_NR},
      {"SSK_QK", SSK_QK},
      {"Q8_0_TILE_BLOCK", Q8_0_TILE_BLOCK},
      {"Q8_0_QS", Q8_0_QS},
      {"Q4_1_TILE_BLOCK", Q4_1_TILE_BLOCK},
      {"Q4_1_QS", Q4_1_QS},
  };
  for (const auto& c : constants)
    if (std::strcmp(c.name, name) == 0) return c.value;
  return -1;
}
