// The one file that exports moerun_* symbols: translates between the C ABI and the C++ runtime.
// Every entry point catches everything; no exception crosses the boundary.
#include "moerun/moerun.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/core/log.h"
#include "runtime/exec/sampler.h"
#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"

struct moerun_model {
  std::shared_ptr<moerun::Model> model;
  std::string backend;
};

struct moerun_session {
  std::unique_ptr<moerun::Session> session;
};

struct moerun_sampler {
  moerun::Sampler sampler;
};

namespace {

using moerun::Status;
using moerun::StatusCode;

thread_local std::string t_last_error;

// Never throws, so that it is safe in Guard's handlers: with no memory even for the message, the
// message is left empty and the status alone says what happened.
moerun_status FailNoThrow(StatusCode code, const char* message, const char* detail) noexcept {
  try {
    t_last_error.assign(message);
    t_last_error.append(detail);
  } catch (...) {
    t_last_error.clear();
  }
  return static_cast<moerun_status>(code);
}

moerun_status Fail(const Status& st) { return FailNoThrow(st.code(), st.message().c_str(), ""); }

moerun_status Fail(StatusCode code, const std::string& message) { return Fail(Status(code, message)); }

moerun_status Ok() { return MOERUN_OK; }

// Runs body, turning exceptions into statuses. body returns moerun_status.
template <typename F>
moerun_status Guard(F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return FailNoThrow(StatusCode::kOutOfMemory, "out of memory", "");
  } catch (const std::exception& e) {
    return FailNoThrow(StatusCode::kInternal, "internal error: ", e.what());
  } catch (...) {
    return FailNoThrow(StatusCode::kInternal, "internal error: unknown exception", "");
  }
}

// Copies a caller's option struct over defaults, honouring struct_size (older callers pass smaller
// structs; newer ones are rejected because their extra fields cannot be honoured).
template <typename T>
Status ReadOptions(const T* in, T* out, const char* what) {
  if (!in) return Status::Ok();
  if (in->struct_size < sizeof(size_t) || in->struct_size > sizeof(T))
    return moerun::InvalidArgument(std::string(what) + ": struct_size " + std::to_string(in->struct_size) +
                                   " is not in [" + std::to_string(sizeof(size_t)) + ", " + std::to_string(sizeof(T)) +
                                   "]; initialise it with the matching _init() function");
  std::memcpy(static_cast<void*>(out), in, in->struct_size);
  out->struct_size = sizeof(T);
  return Status::Ok();
}

moerun_status FinishLoad(moerun::Result<std::shared_ptr<moerun::ModelFile>> file, const moerun_model_options& o,
                         moerun_model** out_model) {
  if (!file.ok()) return Fail(file.status());
  // Read the enum as an integer: a C caller may store any value, and loading an out-of-range value
  // through the C++ enum type is undefined.
  int precision = 0;
  static_assert(sizeof(precision) == sizeof(o.precision), "enum size");
  std::memcpy(&precision, &o.precision, sizeof(precision));
  if (precision != MOERUN_PRECISION_F32 && precision != MOERUN_PRECISION_BF16 && precision != MOERUN_PRECISION_AUTO)
    return Fail(StatusCode::kInvalidArgument, "unknown precision " + std::to_string(precision));
  if (precision == MOERUN_PRECISION_AUTO) {
    const auto& tensors = file.value()->tensors();
    const bool int8 = std::any_of(tensors.begin(), tensors.end(),
                                  [](const moerun::TensorInfo& t) { return t.dtype == moerun::DType::kQ8Panel; });
    precision = int8 ? MOERUN_PRECISION_BF16 : MOERUN_PRECISION_F32;
  }
  if (o.n_threads < 0) return Fail(StatusCode::kInvalidArgument, "n_threads must be >= 0");
  const std::string backend = o.backend ? o.backend : "cpu";
  auto model = moerun::Model::Create(std::move(file).value(), backend, static_cast<moerun::Precision>(precision),
                                     o.n_threads);
  if (!model.ok()) return Fail(model.status());
  auto* handle = new (std::nothrow) moerun_model{std::move(model).value(), backend};
  if (!handle) return Fail(StatusCode::kOutOfMemory, "allocating the model handle");
  *out_model = handle;
  return Ok();
}

struct LogAdapter {
  moerun_log_fn fn;
  void* user;
  static void Call(void* self, int level, const char* message) {
    auto* a = static_cast<LogAdapter*>(self);
    a->fn(a->user, static_cast<moerun_log_level>(level), message);
  }
};

struct ProgressAdapter {
  moerun_progress_fn fn;
  void* user;
  static bool Call(void* self, float f) {
    auto* a = static_cast<ProgressAdapter*>(self);
    return a->fn(a->user, f) != 0;
  }
};

moerun::VerifyOptions MakeVerify(const moerun_model_options& o, ProgressAdapter* adapter) {
  moerun::VerifyOptions v;
  v.check_weight_checksums = o.verify_weights != 0;
  if (o.progress) {
    *adapter = {o.progress, o.progress_user_data};
    v.progress.callback = &ProgressAdapter::Call;
    v.progress.user_data = adapter;
  }
  return v;
}

}  // namespace

extern "C" {

MOERUN_API const char* moerun_version(void) { return MOERUN_VERSION_STRING; }
MOERUN_API uint32_t moerun_abi_version(void) { return MOERUN_ABI_VERSION; }

MOERUN_API const char* moerun_status_string(moerun_status status_value) {
  int status = 0;
  std::memcpy(&status, &status_value, sizeof(status));
  switch (status) {
    case MOERUN_OK: return "MOERUN_OK";
    case MOERUN_ERR_INVALID_ARGUMENT: return "MOERUN_ERR_INVALID_ARGUMENT";
    case MOERUN_ERR_IO: return "MOERUN_ERR_IO";
    case MOERUN_ERR_CORRUPT_FILE: return "MOERUN_ERR_CORRUPT_FILE";
    case MOERUN_ERR_UNSUPPORTED: return "MOERUN_ERR_UNSUPPORTED";
    case MOERUN_ERR_OUT_OF_MEMORY: return "MOERUN_ERR_OUT_OF_MEMORY";
    case MOERUN_ERR_KV_CACHE_FULL: return "MOERUN_ERR_KV_CACHE_FULL";
    case MOERUN_ERR_CANCELLED: return "MOERUN_ERR_CANCELLED";
    case MOERUN_ERR_BACKEND: return "MOERUN_ERR_BACKEND";
    case MOERUN_ERR_INTERNAL: return "MOERUN_ERR_INTERNAL";
  }
  return "MOERUN_ERR_UNKNOWN";
}

MOERUN_API const char* moerun_last_error(void) { return t_last_error.c_str(); }

MOERUN_API void moerun_set_log_callback(moerun_log_fn callback, void* user_data, moerun_log_level min_level) {
  int level = 0;
  std::memcpy(&level, &min_level, sizeof(level));
  if (level < 0 || level > MOERUN_LOG_SILENT) level = MOERUN_LOG_WARNING;
  if (!callback) {
    moerun::SetLogSink(nullptr, nullptr, static_cast<moerun::LogLevel>(level));
    return;
  }
  // The sink adapter must outlive any log call in flight on another thread, so adapters are kept
  // for the life of the process (one small object per call of this function).
  static std::mutex mu;
  static std::vector<std::unique_ptr<LogAdapter>> adapters;
  std::lock_guard<std::mutex> lock(mu);
  try {
    adapters.push_back(std::make_unique<LogAdapter>(LogAdapter{callback, user_data}));
  } catch (...) {
    return;
  }
  moerun::SetLogSink(&LogAdapter::Call, adapters.back().get(), static_cast<moerun::LogLevel>(level));
}

MOERUN_API void moerun_model_options_init(moerun_model_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof(*o));
  o->struct_size = sizeof(*o);
  o->precision = MOERUN_PRECISION_AUTO;
}

MOERUN_API moerun_status moerun_model_load(const char* path, const moerun_model_options* options,
                                           moerun_model** out_model) {
  return Guard([&] {
    if (!path) return Fail(StatusCode::kInvalidArgument, "path is NULL");
    if (!out_model) return Fail(StatusCode::kInvalidArgument, "out_model is NULL");
    moerun_model_options o;
    moerun_model_options_init(&o);
    Status st = ReadOptions(options, &o, "moerun_model_options");
    if (!st.ok()) return Fail(st);
    ProgressAdapter adapter{};
    return FinishLoad(moerun::ModelFile::Open(path, MakeVerify(o, &adapter)), o, out_model);
  });
}

MOERUN_API moerun_status moerun_model_load_from_memory(const void* data, size_t size,
                                                       const moerun_model_options* options,
                                                       moerun_model** out_model) {
  return Guard([&] {
    if (!out_model) return Fail(StatusCode::kInvalidArgument, "out_model is NULL");
    moerun_model_options o;
    moerun_model_options_init(&o);
    Status st = ReadOptions(options, &o, "moerun_model_options");
    if (!st.ok()) return Fail(st);
    ProgressAdapter adapter{};
    return FinishLoad(moerun::ModelFile::FromMemory(data, size, MakeVerify(o, &adapter)), o, out_model);
  });
}

MOERUN_API void moerun_model_destroy(moerun_model* model) { delete model; }

MOERUN_API void moerun_model_info_init(moerun_model_info* info) {
  if (!info) return;
  std::memset(info, 0, sizeof(*info));
  info->struct_size = sizeof(*info);
}

MOERUN_API moerun_status moerun_model_get_info(const moerun_model* model, moerun_model_info* out_info) {
  return Guard([&] {
    if (!model) return Fail(StatusCode::kInvalidArgument, "model is NULL");
    if (!out_info) return Fail(StatusCode::kInvalidArgument, "out_info is NULL");
    if (out_info->struct_size < sizeof(size_t) || out_info->struct_size > sizeof(moerun_model_info))
      return Fail(StatusCode::kInvalidArgument, "moerun_model_info: bad struct_size; call moerun_model_info_init");
    const moerun::ModelConfig& c = model->model->config();
    moerun_model_info i;
    moerun_model_info_init(&i);
    i.architecture = moerun::ArchitectureName(c.architecture);
    i.backend = model->model->backend().name();
    i.vocab_size = c.vocab_size;
    i.hidden_size = c.hidden_size;
    i.num_layers = c.num_layers;
    i.num_heads = c.num_heads;
    i.n_routed_experts = c.n_routed_experts;
    i.n_shared_experts = c.n_shared_experts;
    i.num_experts_per_tok = c.num_experts_per_tok;
    i.kv_lora_rank = c.kv_lora_rank;
    i.qk_rope_head_dim = c.qk_rope_head_dim;
    i.max_position_embeddings = c.max_position_embeddings;
    i.bos_token_id = c.bos_token_id;
    i.eos_token_id = c.eos_token_id;
    i.kv_bytes_per_token = model->model->kv_bytes_per_token();
    i.weight_bytes = model->model->file().weights_size();
    i.has_mtp = model->model->has_mtp() ? 1 : 0;
    i.precision = model->model->backend().precision() == moerun::Precision::kBF16 ? MOERUN_PRECISION_BF16
                                                                                    : MOERUN_PRECISION_F32;
    const size_t n = out_info->struct_size;
    std::memcpy(static_cast<void*>(out_info), &i, n);
    out_info->struct_size = n;
    return Ok();
  });
}

MOERUN_API void moerun_session_options_init(moerun_session_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof(*o));
  o->struct_size = sizeof(*o);
  o->kv_capacity = 4096;
  o->max_sequences = 1;
  o->max_batch_tokens = 512;
}

MOERUN_API moerun_status moerun_session_create(const moerun_model* model, const moerun_session_options* options,
                                               moerun_session** out_session) {
  return Guard([&] {
    if (!model) return Fail(StatusCode::kInvalidArgument, "model is NULL");
    if (!out_session) return Fail(StatusCode::kInvalidArgument, "out_session is NULL");
    moerun_session_options o;
    moerun_session_options_init(&o);
    Status st = ReadOptions(options, &o, "moerun_session_options");
    if (!st.ok()) return Fail(st);
    moerun::SessionOptions so;
    so.kv_capacity = o.kv_capacity;
    so.max_sequences = o.max_sequences;
    so.max_batch_tokens = o.max_batch_tokens;
    so.n_threads = o.n_threads;
    auto s = moerun::Session::Create(model->model, so);
    if (!s.ok()) return Fail(s.status());
    auto* handle = new (std::nothrow) moerun_session{std::move(s).value()};
    if (!handle) return Fail(StatusCode::kOutOfMemory, "allocating the session handle");
    *out_session = handle;
    return Ok();
  });
}

MOERUN_API void moerun_session_destroy(moerun_session* session) { delete session; }

MOERUN_API void moerun_batch_init(moerun_batch* batch) {
  if (!batch) return;
  std::memset(batch, 0, sizeof(*batch));
  batch->struct_size = sizeof(*batch);
}

MOERUN_API moerun_status moerun_session_decode(moerun_session* session, const moerun_batch* batch) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!batch) return Fail(StatusCode::kInvalidArgument, "batch is NULL");
    moerun_batch b;
    moerun_batch_init(&b);
    Status st = ReadOptions(batch, &b, "moerun_batch");
    if (!st.ok()) return Fail(st);
    moerun::Batch cb;
    cb.n_tokens = b.n_tokens;
    cb.tokens = b.tokens;
    cb.seq_ids = b.seq_ids;
    cb.positions = b.positions;
    cb.logits = b.logits;
    st = session->session->Decode(cb);
    return st.ok() ? Ok() : Fail(st);
  });
}

MOERUN_API moerun_status moerun_session_get_logits(const moerun_session* session, uint32_t i,
                                                   const float** out_logits) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!out_logits) return Fail(StatusCode::kInvalidArgument, "out_logits is NULL");
    auto r = session->session->Logits(i);
    if (!r.ok()) return Fail(r.status());
    *out_logits = r.value();
    return Ok();
  });
}

MOERUN_API moerun_status moerun_session_get_expert_counts(const moerun_session* session, uint64_t* counts,
                                                          size_t n) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!counts) return Fail(StatusCode::kInvalidArgument, "counts is NULL");
    const std::vector<uint64_t>& c = session->session->expert_counts();
    if (n != c.size())
      return Fail(StatusCode::kInvalidArgument, "counts has " + std::to_string(n) + " entries; this model needs " +
                                                    std::to_string(c.size()) + " (num_layers * n_routed_experts)");
    std::copy(c.begin(), c.end(), counts);
    return Ok();
  });
}

MOERUN_API moerun_status moerun_session_seq_length(const moerun_session* session, int32_t seq_id,
                                                   uint32_t* out_length) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!out_length) return Fail(StatusCode::kInvalidArgument, "out_length is NULL");
    auto r = session->session->SeqLength(seq_id);
    if (!r.ok()) return Fail(r.status());
    *out_length = r.value();
    return Ok();
  });
}

MOERUN_API moerun_status moerun_session_seq_remove(moerun_session* session, int32_t seq_id) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    Status st = session->session->SeqRemove(seq_id);
    return st.ok() ? Ok() : Fail(st);
  });
}

MOERUN_API moerun_status moerun_session_clear(moerun_session* session) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    session->session->Clear();
    return Ok();
  });
}

MOERUN_API moerun_status moerun_session_kv_free(const moerun_session* session, uint32_t* out_tokens) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!out_tokens) return Fail(StatusCode::kInvalidArgument, "out_tokens is NULL");
    *out_tokens = static_cast<uint32_t>(session->session->kv_free_tokens());
    return Ok();
  });
}

MOERUN_API void moerun_sampler_options_init(moerun_sampler_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof(*o));
  o->struct_size = sizeof(*o);
  o->top_p = 1.0f;
}

MOERUN_API moerun_status moerun_sampler_create(const moerun_sampler_options* options, moerun_sampler** out_sampler) {
  return Guard([&] {
    if (!out_sampler) return Fail(StatusCode::kInvalidArgument, "out_sampler is NULL");
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    Status st = ReadOptions(options, &o, "moerun_sampler_options");
    if (!st.ok()) return Fail(st);
    moerun::SamplerParams p;
    p.temperature = o.temperature;
    p.top_k = o.top_k;
    p.top_p = o.top_p;
    p.min_p = o.min_p;
    p.seed = o.seed;
    st = moerun::Sampler::Validate(p);
    if (!st.ok()) return Fail(st);
    auto* handle = new (std::nothrow) moerun_sampler{moerun::Sampler(p)};
    if (!handle) return Fail(StatusCode::kOutOfMemory, "allocating the sampler");
    *out_sampler = handle;
    return Ok();
  });
}

MOERUN_API void moerun_sampler_destroy(moerun_sampler* sampler) { delete sampler; }

MOERUN_API moerun_status moerun_sampler_sample(moerun_sampler* sampler, const float* logits, uint32_t n_vocab,
                                               int32_t* out_token) {
  return Guard([&] {
    if (!sampler) return Fail(StatusCode::kInvalidArgument, "sampler is NULL");
    if (!logits) return Fail(StatusCode::kInvalidArgument, "logits is NULL");
    if (!out_token) return Fail(StatusCode::kInvalidArgument, "out_token is NULL");
    if (n_vocab == 0) return Fail(StatusCode::kInvalidArgument, "n_vocab is 0");
    *out_token = sampler->sampler.Sample(logits, n_vocab);
    return Ok();
  });
}

MOERUN_API moerun_status moerun_generate(moerun_session* session, moerun_sampler* sampler, int32_t seq_id,
                                         const int32_t* prompt, uint32_t n_prompt, uint32_t max_tokens,
                                         moerun_token_fn on_token, void* user_data, int32_t* out_tokens,
                                         uint32_t* out_n_generated) {
  return Guard([&] {
    if (!session) return Fail(StatusCode::kInvalidArgument, "session is NULL");
    if (!sampler) return Fail(StatusCode::kInvalidArgument, "sampler is NULL");
    if (!prompt || n_prompt == 0) return Fail(StatusCode::kInvalidArgument, "prompt is empty");
    if (max_tokens > 0 && !out_tokens) return Fail(StatusCode::kInvalidArgument, "out_tokens is NULL");
    if (!out_n_generated) return Fail(StatusCode::kInvalidArgument, "out_n_generated is NULL");
    moerun::Session& s = *session->session;
    const uint32_t chunk = s.options().max_batch_tokens;
    const uint32_t vocab = s.model().config().vocab_size;
    const int32_t eos = s.model().config().eos_token_id;
    std::vector<int32_t> seq;
    auto decode = [&](const int32_t* toks, uint32_t n) -> Status {
      seq.assign(n, seq_id);
      moerun::Batch b;
      b.n_tokens = n;
      b.tokens = toks;
      b.seq_ids = seq.data();
      return s.Decode(b);
    };
    for (uint32_t i = 0; i < n_prompt; i += chunk) {
      Status st = decode(prompt + i, std::min(chunk, n_prompt - i));
      if (!st.ok()) return Fail(st);
    }
    uint32_t produced = 0;
    int64_t last_row = static_cast<int64_t>((n_prompt - 1) % chunk);
    while (produced < max_tokens) {
      auto logits = s.Logits(last_row);
      if (!logits.ok()) return Fail(logits.status());
      const int32_t tok = sampler->sampler.Sample(logits.value(), vocab);
      out_tokens[produced++] = tok;
      if (on_token && on_token(user_data, tok) == 0) break;
      if (tok == eos || produced == max_tokens) break;
      Status st = decode(&tok, 1);
      if (!st.ok()) return Fail(st);
      last_row = 0;
    }
    *out_n_generated = produced;
    return Ok();
  });
}

}  // extern "C"
