/* Compiled as strict C99 with -Wall -Wextra -pedantic -Werror (tests/packaging/CMakeLists.txt): the
 * public header must stay usable from plain C. Uses each kind of declaration so a C++-only construct
 * anywhere in it is an error here. */
#include <moerun/moerun.h>

static int on_token(void* user_data, int32_t token) {
  (void)user_data;
  return token >= 0;
}

static void on_log(void* user_data, moerun_log_level level, const char* message) {
  (void)user_data;
  (void)level;
  (void)message;
}

int moerun_header_c99_check(void);
int moerun_header_c99_check(void) {
  moerun_model_options model_options;
  moerun_session_options session_options;
  moerun_sampler_options sampler_options;
  moerun_batch batch;
  moerun_token_fn token_fn = on_token;
  moerun_log_fn log_fn = on_log;
  moerun_status status = MOERUN_OK;
  moerun_precision precision = MOERUN_PRECISION_BF16;
  model_options.struct_size = sizeof model_options;
  session_options.struct_size = sizeof session_options;
  sampler_options.struct_size = sizeof sampler_options;
  batch.struct_size = sizeof batch;
  return (int)status + (int)precision + MOERUN_ABI_VERSION + (token_fn != 0) + (log_fn != 0) +
         (int)(model_options.struct_size + session_options.struct_size + sampler_options.struct_size +
               batch.struct_size);
}
