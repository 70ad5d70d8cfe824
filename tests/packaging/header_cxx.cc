// Compiled as C++17 with -Wall -Wextra -pedantic -Werror (tests/packaging/CMakeLists.txt): the
// public C header must also be clean C++ for the oldest standard moerun supports in users' code.
#include <moerun/moerun.h>

#include <type_traits>

// The option structs cross the ABI by pointer, so C++ must see them with C layout.
static_assert(std::is_standard_layout_v<moerun_batch>);
static_assert(std::is_standard_layout_v<moerun_model_options>);

int moerun_header_cxx_check();
int moerun_header_cxx_check() {
  moerun_sampler_options options{};
  options.struct_size = sizeof options;
  moerun_token_fn token_fn = [](void*, int32_t token) -> int { return token >= 0; };
  return static_cast<int>(MOERUN_OK) + static_cast<int>(options.struct_size) + (token_fn != nullptr);
}
