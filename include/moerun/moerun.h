/*
 * moerun: an embeddable runtime for DeepSeek-style Mixture-of-Experts models with Multi-head Latent
 * Attention (DeepSeek-V2, V2-Lite, V3, R1).
 *
 * This header is the whole public C ABI. Conventions:
 *  - Opaque handles with create/destroy pairs; every destroy function accepts NULL.
 *  - Every fallible call returns a moerun_status (0 = MOERUN_OK). On failure, moerun_last_error()
 *    returns a message for the calling thread, and out-parameters are left untouched.
 *  - No C++ exception and no abort ever crosses this boundary; bad input (including corrupt or
 *    malicious model files) yields a status.
 *  - Option structs begin with `size_t struct_size`; initialise them with the matching *_init()
 *    function, which sets struct_size and the defaults. Fields are only ever appended.
 *
 * Threading contract:
 *  - A moerun_model is immutable after load. Any number of sessions on any number of threads may
 *    share it concurrently. Destroy it only after every session created from it is destroyed
 *    (sessions keep internal references, so the weights stay valid, but the handle itself must not
 *    be used after moerun_model_destroy).
 *  - A moerun_session and a moerun_sampler are used by one thread at a time (no internal locking);
 *    different sessions may run concurrently.
 *  - The log callback is process-wide and may be called from any thread that calls into moerun,
 *    with an internal lock held: it must not call moerun functions.
 *  - Pointers returned by moerun_session_get_logits stay valid until the next call that modifies
 *    that session (decode, sequence removal, destroy).
 */
#ifndef MOERUN_MOERUN_H_
#define MOERUN_MOERUN_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MOERUN_API __declspec(dllexport)
#elif defined(MOERUN_BUILDING_LIBRARY)
#define MOERUN_API __attribute__((visibility("default")))
#else
#define MOERUN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when the ABI changes incompatibly. */
#define MOERUN_ABI_VERSION 1

typedef enum moerun_status {
  MOERUN_OK = 0,
  MOERUN_ERR_INVALID_ARGUMENT = 1, /* NULL handle, bad option, token id >= vocab, ... */
  MOERUN_ERR_IO = 2,               /* file cannot be opened, read or written */
  MOERUN_ERR_CORRUPT_FILE = 3,     /* the model file failed verification */
  MOERUN_ERR_UNSUPPORTED = 4,      /* newer format version, unknown backend, unsupported config */
  MOERUN_ERR_OUT_OF_MEMORY = 5,
  MOERUN_ERR_KV_CACHE_FULL = 6,    /* the batch does not fit the session's KV capacity; state unchanged */
  MOERUN_ERR_CANCELLED = 7,        /* a callback asked to stop */
  MOERUN_ERR_BACKEND = 8,          /* a backend library failed */
  MOERUN_ERR_INTERNAL = 9          /* a bug in moerun: please report it */
} moerun_status;

typedef enum moerun_log_level {
  MOERUN_LOG_DEBUG = 0,
  MOERUN_LOG_INFO = 1,
  MOERUN_LOG_WARNING = 2,
  MOERUN_LOG_ERROR = 3,
  MOERUN_LOG_SILENT = 4
} moerun_log_level;

/* Compute precision of the CPU backends. */
typedef enum moerun_precision {
  MOERUN_PRECISION_F32 = 0,  /* activations and accumulation in float32; weights widened exactly */
  MOERUN_PRECISION_BF16 = 1, /* matmul inputs rounded to bfloat16 (int8 per 128 values with int8
                                weights), float32 accumulation; attention's too (queries, keys,
                                values and probabilities), on AMX or AVX512_BF16 where the CPU
                                has them */
  MOERUN_PRECISION_AUTO = 2  /* chosen at load from the file: BF16 when it has int8 weights (their
                                int8 kernels; f32 is ~2x slower there and no closer to the
                                checkpoint than the int8 weights are), F32 otherwise. The choice is
                                in moerun_model_info.precision */
} moerun_precision;

typedef struct moerun_model moerun_model;
typedef struct moerun_session moerun_session;
typedef struct moerun_sampler moerun_sampler;

/* ---- library ---------------------------------------------------------------------------------- */

/* Library version string, e.g. "0.1.0". Static storage. */
MOERUN_API const char* moerun_version(void);
/* MOERUN_ABI_VERSION of the loaded library. */
MOERUN_API uint32_t moerun_abi_version(void);
/* Static name of a status ("MOERUN_ERR_IO", ...). */
MOERUN_API const char* moerun_status_string(moerun_status status);
/* Message of the last failed call on this thread ("" if none). Valid until the next moerun call on
 * this thread. */
MOERUN_API const char* moerun_last_error(void);

/* Log sink: called with a NUL-terminated message. NULL restores the default (stderr). Messages below
 * min_level are dropped. */
typedef void (*moerun_log_fn)(void* user_data, moerun_log_level level, const char* message);
MOERUN_API void moerun_set_log_callback(moerun_log_fn callback, void* user_data, moerun_log_level min_level);

/* ---- model ------------------------------------------------------------------------------------ */

/* Load progress in [0, 1]. Return 0 to cancel the load (MOERUN_ERR_CANCELLED), non-zero to go on.
 * Called only while verify_weights reads the whole file; a plain load maps the file and returns
 * before a progress report would be useful. */
typedef int (*moerun_progress_fn)(void* user_data, float fraction);

typedef struct moerun_model_options {
  size_t struct_size;
  const char* backend;         /* "cpu" (default when NULL) or "reference" (scalar oracle, slow) */
  moerun_precision precision;  /* default MOERUN_PRECISION_AUTO */
  int32_t n_threads;           /* default thread count for sessions; 0 = all cores */
  int32_t verify_weights;      /* non-zero: check every tensor's checksum on load (reads the whole file) */
  moerun_progress_fn progress; /* optional */
  void* progress_user_data;
} moerun_model_options;

MOERUN_API void moerun_model_options_init(moerun_model_options* options);

/* Maps and verifies a .moerun file. options may be NULL (defaults). On success *out_model owns the
 * mapping; free it with moerun_model_destroy. */
MOERUN_API moerun_status moerun_model_load(const char* path, const moerun_model_options* options,
                                           moerun_model** out_model);
/* Same from memory. The buffer must stay valid and unchanged until the model is destroyed; a buffer
 * not aligned to 64 bytes is copied once. */
MOERUN_API moerun_status moerun_model_load_from_memory(const void* data, size_t size,
                                                       const moerun_model_options* options,
                                                       moerun_model** out_model);
MOERUN_API void moerun_model_destroy(moerun_model* model);

typedef struct moerun_model_info {
  size_t struct_size;
  const char* architecture;   /* "DeepseekV2" or "DeepseekV3"; static storage */
  const char* backend;        /* backend the model was loaded on; static storage */
  uint32_t vocab_size;
  uint32_t hidden_size;
  uint32_t num_layers;
  uint32_t num_heads;
  uint32_t n_routed_experts;
  uint32_t n_shared_experts;
  uint32_t num_experts_per_tok;
  uint32_t kv_lora_rank;
  uint32_t qk_rope_head_dim;
  uint32_t max_position_embeddings;
  int32_t bos_token_id;       /* -1 if unknown */
  int32_t eos_token_id;       /* -1 if unknown */
  uint64_t kv_bytes_per_token; /* latent KV cache bytes per token, all layers (bf16 rows, half
                                  of f32, where bf16 attention runs on AMX-BF16 or AVX2) */
  uint64_t weight_bytes;      /* bytes of the weight area in the file */
  uint32_t has_mtp;           /* the file carries a multi-token-prediction module (not run yet) */
  moerun_precision precision; /* the precision the model runs at (never AUTO) */
} moerun_model_info;

MOERUN_API void moerun_model_info_init(moerun_model_info* info);
MOERUN_API moerun_status moerun_model_get_info(const moerun_model* model, moerun_model_info* out_info);

/* ---- session ---------------------------------------------------------------------------------- */

typedef struct moerun_session_options {
  size_t struct_size;
  uint32_t kv_capacity;      /* total tokens the latent KV cache holds over all sequences; default 4096 */
  uint32_t max_sequences;    /* sequence ids are in [0, max_sequences); default 1 */
  uint32_t max_batch_tokens; /* largest batch one decode call accepts; default 512 */
  int32_t n_threads;         /* 0 = the model's default */
} moerun_session_options;

MOERUN_API void moerun_session_options_init(moerun_session_options* options);
/* A session holds a paged latent KV cache and the sequences in it. The model must outlive it. */
MOERUN_API moerun_status moerun_session_create(const moerun_model* model, const moerun_session_options* options,
                                               moerun_session** out_session);
/* Frees the session and its KV cache. Its activation scratch (the buffers its largest batch grew)
 * stays with the model for the next session created on it, one session's worth at most, and is freed
 * by moerun_model_destroy. */
MOERUN_API void moerun_session_destroy(moerun_session* session);

/* A batch of tokens from one or more sequences (prefill and decode may be mixed). Token i is appended
 * to sequence seq_ids[i] at that sequence's next position; tokens of one sequence must appear in
 * order. */
typedef struct moerun_batch {
  size_t struct_size;
  uint32_t n_tokens;
  const int32_t* tokens;    /* [n_tokens], each in [0, vocab) */
  const int32_t* seq_ids;   /* [n_tokens] or NULL (all sequence 0) */
  const int32_t* positions; /* [n_tokens] or NULL; if given each must equal the sequence's next position */
  const uint8_t* logits;    /* [n_tokens] non-zero = compute logits for token i; NULL = last token only */
} moerun_batch;

MOERUN_API void moerun_batch_init(moerun_batch* batch);

/* Runs the model over the batch, appending to the KV cache. If the batch does not fit, returns
 * MOERUN_ERR_KV_CACHE_FULL and changes nothing. On any other failure the sequences touched by the
 * batch are left as they were before the call. */
MOERUN_API moerun_status moerun_session_decode(moerun_session* session, const moerun_batch* batch);

/* Logits (vocab_size floats) for batch token i of the last decode, which must have requested them. */
MOERUN_API moerun_status moerun_session_get_logits(const moerun_session* session, uint32_t i,
                                                   const float** out_logits);

/* Routed-expert usage, the statistics an expert-placement policy starts from: counts[l * E + e] =
 * the tokens that layer l's router sent to expert e (E = n_routed_experts) over every successful
 * moerun_session_decode since the session was created; dense layers count zero. n must be
 * num_layers * n_routed_experts (moerun_model_info); a failed decode adds nothing. */
MOERUN_API moerun_status moerun_session_get_expert_counts(const moerun_session* session, uint64_t* counts,
                                                          size_t n);

/* Number of tokens sequence seq_id holds. */
MOERUN_API moerun_status moerun_session_seq_length(const moerun_session* session, int32_t seq_id,
                                                   uint32_t* out_length);
/* Drops a sequence and frees its cache pages. */
MOERUN_API moerun_status moerun_session_seq_remove(moerun_session* session, int32_t seq_id);
/* Drops every sequence. */
MOERUN_API moerun_status moerun_session_clear(moerun_session* session);
/* Tokens the cache can still take. */
MOERUN_API moerun_status moerun_session_kv_free(const moerun_session* session, uint32_t* out_tokens);

/* ---- sampling --------------------------------------------------------------------------------- */

typedef struct moerun_sampler_options {
  size_t struct_size;
  float temperature; /* 0 = greedy (argmax, lowest id on ties); default 0 */
  int32_t top_k;     /* 0 = off */
  float top_p;       /* 1 = off; in (0, 1] */
  float min_p;       /* 0 = off; in [0, 1) */
  uint64_t seed;     /* same seed + same logits = same tokens */
} moerun_sampler_options;

MOERUN_API void moerun_sampler_options_init(moerun_sampler_options* options);
MOERUN_API moerun_status moerun_sampler_create(const moerun_sampler_options* options, moerun_sampler** out_sampler);
MOERUN_API void moerun_sampler_destroy(moerun_sampler* sampler);
MOERUN_API moerun_status moerun_sampler_sample(moerun_sampler* sampler, const float* logits, uint32_t n_vocab,
                                               int32_t* out_token);

/* Streaming callback for moerun_generate: return 0 to stop early, non-zero to continue. */
typedef int (*moerun_token_fn)(void* user_data, int32_t token);

/* Convenience loop: decodes the prompt into sequence seq_id (appending to what it holds), then samples
 * up to max_tokens tokens, stopping after the model's eos token. Generated ids go to out_tokens
 * (capacity max_tokens) and *out_n_generated; on_token (optional) sees each as it is produced. */
MOERUN_API moerun_status moerun_generate(moerun_session* session, moerun_sampler* sampler, int32_t seq_id,
                                         const int32_t* prompt, uint32_t n_prompt, uint32_t max_tokens,
                                         moerun_token_fn on_token, void* user_data, int32_t* out_tokens,
                                         uint32_t* out_n_generated);

#ifdef __cplusplus
}
#endif

#endif /* MOERUN_MOERUN_H_ */
