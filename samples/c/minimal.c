/*
 * Minimal use of the moerun C API: load a model, decode a prompt, then sample one token at a time.
 *
 *   minimal MODEL.moerun
 *
 * Prints the generated token ids on one line. moerun_generate() does the same loop in one call; it is
 * spelled out here to show where an application would look at the logits or stop early.
 */
#include <moerun/moerun.h>

#include <stdio.h>

/* Every fallible call returns a status; on failure moerun_last_error() says why. */
#define CHECK(call)                                                                   \
  do {                                                                                \
    moerun_status status_ = (call);                                                   \
    if (status_ != MOERUN_OK) {                                                       \
      fprintf(stderr, "%s failed: %s: %s\n", #call, moerun_status_string(status_),    \
              moerun_last_error());                                                   \
      goto done;                                                                      \
    }                                                                                 \
  } while (0)

int main(int argc, char** argv) {
  /* Handles start NULL so the cleanup below is valid from any point: destroy accepts NULL. */
  moerun_model* model = NULL;
  moerun_session* session = NULL;
  moerun_sampler* sampler = NULL;
  moerun_model_info info;
  moerun_sampler_options sampler_options;
  moerun_batch batch;
  const int32_t prompt[] = {0, 17, 42}; /* token ids; a real application gets them from a tokenizer */
  const uint32_t max_new_tokens = 16;
  int32_t token;
  uint32_t i;
  int exit_code = 1;

  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.moerun\n", argv[0]);
    return 2;
  }

  CHECK(moerun_model_load(argv[1], NULL, &model)); /* NULL options: cpu backend, f32, all cores */
  moerun_model_info_init(&info);
  CHECK(moerun_model_get_info(model, &info));
  CHECK(moerun_session_create(model, NULL, &session));

  moerun_sampler_options_init(&sampler_options);
  sampler_options.temperature = 0.7f;
  sampler_options.top_p = 0.9f;
  sampler_options.seed = 42; /* same seed, same model: same tokens */
  CHECK(moerun_sampler_create(&sampler_options, &sampler));

  /* The prompt goes in as one batch; by default only its last position gets logits. */
  moerun_batch_init(&batch);
  batch.n_tokens = sizeof prompt / sizeof prompt[0];
  batch.tokens = prompt;
  CHECK(moerun_session_decode(session, &batch));

  printf("generated:");
  for (i = 0; i < max_new_tokens; ++i) {
    const float* logits;
    /* Logits are indexed by position in the last batch: its last token here. */
    CHECK(moerun_session_get_logits(session, batch.n_tokens - 1, &logits));
    CHECK(moerun_sampler_sample(sampler, logits, info.vocab_size, &token));
    printf(" %d", (int)token);
    if (token == info.eos_token_id) break;
    /* Feed the sampled token back: a one-token batch appends it to the sequence. */
    batch.n_tokens = 1;
    batch.tokens = &token;
    CHECK(moerun_session_decode(session, &batch));
  }
  printf("\n");
  exit_code = 0;

done:
  moerun_sampler_destroy(sampler);
  moerun_session_destroy(session); /* sessions before the model they were created from */
  moerun_model_destroy(model);
  return exit_code;
}
