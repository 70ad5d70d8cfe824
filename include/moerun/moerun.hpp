/*
 * moerun.hpp: a header-only C++17 wrapper over the C ABI in moerun.h. It calls nothing but the C
 * functions, so it works with any libmoerun of the same MOERUN_ABI_VERSION.
 *
 * Errors:
 *  - Every failing C call becomes a moerun::Error (a std::runtime_error) that carries the
 *    moerun_status and the message moerun_last_error() gave for that call. Checks the wrapper makes
 *    itself (array lengths, sizes beyond uint32_t) throw moerun::Error with
 *    MOERUN_ERR_INVALID_ARGUMENT. Wrapper-side allocations may throw std::bad_alloc.
 *  - Using an empty (default-constructed or moved-from) handle throws moerun::Error with
 *    MOERUN_ERR_INVALID_ARGUMENT (the C functions reject NULL handles).
 *  - Callbacks you pass (progress, token stream) may throw. The exception never unwinds through the C
 *    library: the wrapper catches it in the callback, tells the C call to stop, and rethrows it,
 *    unchanged, once the C call has returned. Log callbacks are the exception to this rule: see
 *    set_log_callback.
 *
 * Ownership and lifetime:
 *  - Model, Session and Sampler own one C handle each; they are move-only, and a moved-from object is
 *    empty (operator bool is false) and may be destroyed or assigned to.
 *  - moerun.h requires a model to outlive the sessions created from it. A Session therefore shares
 *    ownership of its model's C handle: destroying the Model object first is safe, and the C model is
 *    destroyed after the last of its Model and Sessions. Memory you passed to
 *    Model::load_from_memory must stay valid and unchanged until that point.
 *  - get() exposes the C handle for interoperation with the C API; the wrapper keeps owning it.
 *
 * Threading (the contract of moerun.h, restated for the wrapper objects):
 *  - A Model is immutable after load: its const member functions (info, creating Sessions from it)
 *    may run concurrently on any number of threads.
 *  - A Session and a Sampler are used by one thread at a time; different ones may run concurrently.
 *  - Progress and token callbacks run only during the call they were passed to (this library calls
 *    them on the calling thread). The log callback may run on any thread that calls into moerun.
 */
#ifndef MOERUN_MOERUN_HPP_
#define MOERUN_MOERUN_HPP_

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moerun/moerun.h"

namespace moerun {
// The inline namespace keeps the wrapper's symbols apart from the library's internal C++ classes of
// the same names (moerun::Model, moerun::Session, ...) in programs that link both, and lets a future
// incompatible wrapper coexist with this one.
inline namespace cpp_v1 {

/* ---- errors ----------------------------------------------------------------------------------- */

// A failed moerun call. what() is the library's message (never empty: the status name stands in when
// the library gave none).
class Error : public std::runtime_error {
 public:
  Error(moerun_status status, const std::string& message)
      : std::runtime_error(message.empty() ? std::string(moerun_status_string(status)) : message), status_(status) {}
  moerun_status status() const noexcept { return status_; }

 private:
  moerun_status status_;
};

namespace detail {

// Reads moerun_last_error() at once: the message is only valid until the next moerun call on this
// thread.
[[noreturn]] inline void throw_last_error(moerun_status status) { throw Error(status, moerun_last_error()); }

inline void check(moerun_status status) {
  if (status != MOERUN_OK) throw_last_error(status);
}

inline uint32_t checked_u32(size_t n, const char* what) {
  if (n > std::numeric_limits<uint32_t>::max())
    throw Error(MOERUN_ERR_INVALID_ARGUMENT, std::string(what) + " exceeds 2^32 - 1 elements");
  return static_cast<uint32_t>(n);
}

// Carries a C++ callback through a C callback's user_data. An exception it throws is kept, the C
// side is told to stop (0), and the wrapper rethrows it once the C call has returned: unwinding
// through the library's C frames would be undefined.
template <typename Arg>
struct CallbackState {
  const std::function<bool(Arg)>* callback;
  std::exception_ptr error;

  static int trampoline(void* user_data, Arg arg) noexcept {
    auto* state = static_cast<CallbackState*>(user_data);
    try {
      return (*state->callback)(arg) ? 1 : 0;
    } catch (...) {
      state->error = std::current_exception();
      return 0;
    }
  }
};

struct ModelDeleter {
  void operator()(moerun_model* m) const noexcept { moerun_model_destroy(m); }
};
struct SessionDeleter {
  void operator()(moerun_session* s) const noexcept { moerun_session_destroy(s); }
};
struct SamplerDeleter {
  void operator()(moerun_sampler* s) const noexcept { moerun_sampler_destroy(s); }
};

}  // namespace detail

/* ---- library ---------------------------------------------------------------------------------- */

// Library version string, e.g. "0.1.0" (static storage). Throws nothing.
inline std::string_view version() noexcept { return moerun_version(); }

// MOERUN_ABI_VERSION of the loaded library; compare with the MOERUN_ABI_VERSION this header was
// compiled against to detect a mismatched libmoerun. Throws nothing.
inline uint32_t abi_version() noexcept { return moerun_abi_version(); }

// Static name of a status, e.g. "MOERUN_ERR_IO". Throws nothing.
inline std::string_view status_string(moerun_status status) noexcept { return moerun_status_string(status); }

// level: severity; message: valid only during the call.
using LogCallback = std::function<void(moerun_log_level level, std::string_view message)>;

namespace detail {

// One process-wide slot, like the C sink. A call in flight holds its own reference to the callback it
// started with, so replacing the callback never destroys one that is still running on another
// thread. Allocated once and never freed, so that logging during static destruction stays safe.
struct LogSlot {
  std::mutex mu;
  std::shared_ptr<const LogCallback> callback;
};

inline LogSlot& log_slot() {
  static LogSlot* slot = new LogSlot;
  return *slot;
}

inline void log_trampoline(void*, moerun_log_level level, const char* message) noexcept {
  try {
    std::shared_ptr<const LogCallback> callback;
    {
      LogSlot& slot = log_slot();
      std::lock_guard<std::mutex> lock(slot.mu);
      callback = slot.callback;
    }
    if (callback) (*callback)(level, message ? std::string_view(message) : std::string_view());
  } catch (...) {
    // The C caller that is logging cannot be stopped and may be on another thread than the one that
    // installed the callback, so there is nobody to hand the exception to.
  }
}

}  // namespace detail

// Installs a process-wide log sink; messages below min_level are dropped. An empty callback restores
// the library's default sink (stderr) with min_level.
//  - The callback may run on any thread that calls into moerun, also concurrently with this function;
//    the callback it replaces may still be finishing a call on another thread when this returns.
//  - Exceptions thrown by the callback are swallowed (see log_trampoline for why).
//  - The callback must not call moerun functions: the library holds its log lock while calling it.
// Throws std::bad_alloc when copying the callback fails (nothing changed then), and in theory
// std::system_error from locking a mutex.
inline void set_log_callback(LogCallback callback, moerun_log_level min_level = MOERUN_LOG_WARNING) {
  detail::LogSlot& slot = detail::log_slot();
  if (!callback) {
    moerun_set_log_callback(nullptr, nullptr, min_level);
    std::lock_guard<std::mutex> lock(slot.mu);
    slot.callback.reset();
    return;
  }
  auto shared = std::make_shared<const LogCallback>(std::move(callback));
  {
    std::lock_guard<std::mutex> lock(slot.mu);
    slot.callback = std::move(shared);
  }
  moerun_set_log_callback(&detail::log_trampoline, nullptr, min_level);
}

/* ---- model ------------------------------------------------------------------------------------ */

// Mirrors moerun_model_options; the defaults are the C library's (read from
// moerun_model_options_init, so they cannot drift from it).
struct ModelOptions {
  std::string backend;         // "cpu" or "reference"; empty = the library default ("cpu")
  moerun_precision precision;  // MOERUN_PRECISION_AUTO by default (see moerun.h)
  int32_t n_threads;           // default thread count for sessions; 0 = all cores
  bool verify_weights;         // check every tensor's checksum on load (reads the whole file)
  // Load progress in [0, 1]; return false to cancel the load (Model::load* then throws Error with
  // MOERUN_ERR_CANCELLED). This library reports progress only while verify_weights checks the
  // weights. An exception it throws cancels the load and propagates out of Model::load*.
  std::function<bool(float fraction)> progress;

  ModelOptions() {
    moerun_model_options o;
    moerun_model_options_init(&o);
    if (o.backend) backend = o.backend;
    precision = o.precision;
    n_threads = o.n_threads;
    verify_weights = o.verify_weights != 0;
  }
};

class Session;

// A loaded, verified .moerun model.
class Model {
 public:
  // An empty handle; load one with Model::load or Model::load_from_memory.
  Model() noexcept = default;

  // Maps and verifies the .moerun file at path.
  // Throws Error: MOERUN_ERR_IO (cannot open or read), MOERUN_ERR_CORRUPT_FILE (failed
  // verification), MOERUN_ERR_UNSUPPORTED (newer format, unknown backend), MOERUN_ERR_INVALID_ARGUMENT
  // (bad option), MOERUN_ERR_CANCELLED (progress returned false), ...; or whatever
  // options.progress threw.
  [[nodiscard]] static Model load(const std::string& path, const ModelOptions& options = ModelOptions()) {
    ProgressState state{&options.progress, nullptr};
    const moerun_model_options o = to_c(options, &state);
    moerun_model* raw = nullptr;
    const moerun_status status = moerun_model_load(path.c_str(), &o, &raw);
    return finish_load(status, raw, state);
  }

  // Same from memory: [data, data + size) must stay valid and unchanged until the C model is
  // destroyed, that is after this Model and every Session created from it. Throws as load; a buffer
  // too short to be a model is MOERUN_ERR_CORRUPT_FILE.
  [[nodiscard]] static Model load_from_memory(const void* data, size_t size,
                                              const ModelOptions& options = ModelOptions()) {
    ProgressState state{&options.progress, nullptr};
    const moerun_model_options o = to_c(options, &state);
    moerun_model* raw = nullptr;
    const moerun_status status = moerun_model_load_from_memory(data, size, &o, &raw);
    return finish_load(status, raw, state);
  }

  Model(Model&&) noexcept = default;
  Model& operator=(Model&&) noexcept = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model() = default;

  // Every field of moerun_model_info (struct_size = sizeof(moerun_model_info); the strings are
  // static storage). Throws Error (MOERUN_ERR_INVALID_ARGUMENT on an empty handle).
  [[nodiscard]] moerun_model_info info() const {
    moerun_model_info i;
    moerun_model_info_init(&i);
    detail::check(moerun_model_get_info(handle_.get(), &i));
    return i;
  }

  // Releases this object's share of the C model (see the lifetime notes at the top). Throws nothing.
  void reset() noexcept { handle_.reset(); }
  explicit operator bool() const noexcept { return handle_ != nullptr; }
  // The C handle, or nullptr when empty; still owned by the wrapper.
  moerun_model* get() const noexcept { return handle_.get(); }

 private:
  friend class Session;

  using ProgressState = detail::CallbackState<float>;

  // `state` must outlive the C call the result is passed to.
  static moerun_model_options to_c(const ModelOptions& options, ProgressState* state) {
    moerun_model_options o;
    moerun_model_options_init(&o);
    o.backend = options.backend.empty() ? nullptr : options.backend.c_str();
    o.precision = options.precision;
    o.n_threads = options.n_threads;
    o.verify_weights = options.verify_weights ? 1 : 0;
    if (options.progress) {
      o.progress = &ProgressState::trampoline;
      o.progress_user_data = state;
    }
    return o;
  }

  static Model finish_load(moerun_status status, moerun_model* raw, const ProgressState& state) {
    // A failed load left raw untouched: report it before any other moerun call can replace
    // moerun_last_error(). After a callback threw, take ownership before rethrowing, so that a model
    // the library finished loading anyway is freed.
    if (status != MOERUN_OK && !state.error) detail::throw_last_error(status);
    Model model(raw);
    if (state.error) std::rethrow_exception(state.error);
    return model;
  }

  explicit Model(moerun_model* raw) : handle_(raw, detail::ModelDeleter()) {}

  std::shared_ptr<moerun_model> handle_;
};

/* ---- session ---------------------------------------------------------------------------------- */

// Mirrors moerun_session_options; the defaults are the C library's.
struct SessionOptions {
  uint32_t kv_capacity;       // total tokens the latent KV cache holds over all sequences (4096)
  uint32_t max_sequences;     // sequence ids are in [0, max_sequences) (1)
  uint32_t max_batch_tokens;  // largest batch one decode call accepts (512)
  int32_t n_threads;          // 0 = the model's default

  SessionOptions() {
    moerun_session_options o;
    moerun_session_options_init(&o);
    kv_capacity = o.kv_capacity;
    max_sequences = o.max_sequences;
    max_batch_tokens = o.max_batch_tokens;
    n_threads = o.n_threads;
  }
};

// A batch of tokens from one or more sequences, as moerun_batch. Token i is appended to sequence
// seq_ids[i] at that sequence's next position; the tokens of one sequence must appear in order. The
// optional arrays are either empty or exactly tokens.size() long.
struct Batch {
  std::vector<int32_t> tokens;     // each in [0, vocab)
  std::vector<int32_t> seq_ids;    // empty = every token belongs to sequence 0
  std::vector<int32_t> positions;  // empty = next positions; if given each must equal the next position
  std::vector<uint8_t> logits;     // non-zero = compute logits for token i; empty = the last token only
};

// Logits of one batch token: `size` (= the vocabulary size) floats at `data`, owned by the session.
// Valid until the next call that modifies that session (decode, generate, seq_remove, clear,
// destruction, assignment to it); moving the Session does not invalidate it.
struct LogitsView {
  const float* data = nullptr;
  size_t size = 0;

  const float* begin() const noexcept { return data; }
  const float* end() const noexcept { return data + size; }
  float operator[](size_t i) const noexcept { return data[i]; }
};

// Called with each generated token as it is produced; return false to stop generating.
using TokenCallback = std::function<bool(int32_t token)>;

class Sampler;

// A paged latent KV cache and the sequences in it. One thread at a time.
class Session {
 public:
  // An empty handle.
  Session() noexcept = default;

  // Creates a session on model, which it keeps alive (see the lifetime notes at the top).
  // Throws Error: MOERUN_ERR_INVALID_ARGUMENT (empty model, bad option), MOERUN_ERR_OUT_OF_MEMORY.
  explicit Session(const Model& model, const SessionOptions& options = SessionOptions())
      : vocab_size_(model.info().vocab_size),
        n_expert_counts_(size_t{model.info().num_layers} * model.info().n_routed_experts) {
    moerun_session_options o;
    moerun_session_options_init(&o);
    o.kv_capacity = options.kv_capacity;
    o.max_sequences = options.max_sequences;
    o.max_batch_tokens = options.max_batch_tokens;
    o.n_threads = options.n_threads;
    moerun_session* raw = nullptr;
    detail::check(moerun_session_create(model.get(), &o, &raw));
    handle_.reset(raw);
    model_ = model.handle_;
  }

  Session(Session&& other) noexcept
      : model_(std::move(other.model_)),
        handle_(std::move(other.handle_)),
        vocab_size_(std::exchange(other.vocab_size_, 0)),
        n_expert_counts_(std::exchange(other.n_expert_counts_, 0)) {}

  // Destroys this session's C session before letting go of its model, as moerun.h requires (the
  // defaulted operator would release the model first).
  Session& operator=(Session&& other) noexcept {
    if (this != &other) {
      reset();
      model_ = std::move(other.model_);
      handle_ = std::move(other.handle_);
      vocab_size_ = std::exchange(other.vocab_size_, 0);
      n_expert_counts_ = std::exchange(other.n_expert_counts_, 0);
    }
    return *this;
  }

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { reset(); }

  // Runs the model over batch, appending to the KV cache.
  // Throws Error: MOERUN_ERR_KV_CACHE_FULL (the batch does not fit; nothing changed),
  // MOERUN_ERR_INVALID_ARGUMENT (token outside the vocabulary, bad sequence id or position, an
  // optional array of the wrong length, batch larger than max_batch_tokens, empty handle), ... On any
  // failure the sequences the batch touches are left as they were.
  void decode(const Batch& batch) {
    const size_t n = batch.tokens.size();
    check_length(batch.seq_ids.size(), n, "seq_ids");
    check_length(batch.positions.size(), n, "positions");
    check_length(batch.logits.size(), n, "logits");
    decode_raw(n, batch.tokens.data(), batch.seq_ids.empty() ? nullptr : batch.seq_ids.data(),
               batch.positions.empty() ? nullptr : batch.positions.data(),
               batch.logits.empty() ? nullptr : batch.logits.data());
  }

  // Appends tokens to one sequence and computes logits for the last of them (read them with
  // logits(tokens.size() - 1)). Throws as decode(const Batch&).
  void decode(const std::vector<int32_t>& tokens, int32_t seq_id = 0) {
    const std::vector<int32_t> seq_ids(tokens.size(), seq_id);
    decode_raw(tokens.size(), tokens.data(), seq_ids.data(), nullptr, nullptr);
  }

  // Logits for token i of the last decode, which must have requested them; see LogitsView for how
  // long they stay valid. Throws Error (MOERUN_ERR_INVALID_ARGUMENT: no logits for i, empty handle).
  [[nodiscard]] LogitsView logits(uint32_t i) const {
    const float* data = nullptr;
    detail::check(moerun_session_get_logits(handle_.get(), i, &data));
    return LogitsView{data, vocab_size_};
  }

  // Number of tokens sequence seq_id holds. Throws Error (MOERUN_ERR_INVALID_ARGUMENT: seq_id
  // outside [0, max_sequences), empty handle).
  [[nodiscard]] uint32_t seq_length(int32_t seq_id) const {
    uint32_t n = 0;
    detail::check(moerun_session_seq_length(handle_.get(), seq_id, &n));
    return n;
  }

  // Routed-expert usage since the session was created: [l * n_routed_experts + e] = tokens layer l
  // sent to expert e (moerun_session_get_expert_counts). Throws Error (empty handle).
  [[nodiscard]] std::vector<uint64_t> expert_counts() const {
    std::vector<uint64_t> counts(n_expert_counts_);
    detail::check(moerun_session_get_expert_counts(handle_.get(), counts.data(), counts.size()));
    return counts;
  }

  // Drops sequence seq_id and frees its cache pages. Throws as seq_length.
  void seq_remove(int32_t seq_id) { detail::check(moerun_session_seq_remove(handle_.get(), seq_id)); }

  // Drops every sequence. Throws Error (MOERUN_ERR_INVALID_ARGUMENT on an empty handle).
  void clear() { detail::check(moerun_session_clear(handle_.get())); }

  // Tokens the cache can still take. Throws as clear.
  [[nodiscard]] uint32_t kv_free() const {
    uint32_t n = 0;
    detail::check(moerun_session_kv_free(handle_.get(), &n));
    return n;
  }

  // moerun_generate: decodes prompt into sequence seq_id (appending to what it holds), then samples
  // up to max_tokens tokens with sampler, stopping after the model's eos token or when on_token
  // returns false. Returns the generated tokens; on_token (optional) sees each one as it is produced,
  // on this thread, and must not use this session or sampler. Afterwards the sequence holds the
  // prompt and every returned token but the last (which was never decoded).
  // Throws Error (as decode; MOERUN_ERR_INVALID_ARGUMENT for an empty prompt or handle), or
  // whatever on_token threw: then generation stopped at the token on_token was called with, the
  // sequence holds the prompt and the tokens before that one, and the tokens are not returned.
  [[nodiscard]] std::vector<int32_t> generate(Sampler& sampler, const std::vector<int32_t>& prompt,
                                              uint32_t max_tokens, const TokenCallback& on_token = nullptr,
                                              int32_t seq_id = 0);

  // Drops this object's session (and its share of the model). Throws nothing.
  void reset() noexcept {
    handle_.reset();
    model_.reset();
    vocab_size_ = 0;
    n_expert_counts_ = 0;
  }
  explicit operator bool() const noexcept { return handle_ != nullptr; }
  // The C handle, or nullptr when empty; still owned by the wrapper.
  moerun_session* get() const noexcept { return handle_.get(); }

 private:
  static void check_length(size_t got, size_t n_tokens, const char* what) {
    if (got != 0 && got != n_tokens)
      throw Error(MOERUN_ERR_INVALID_ARGUMENT, std::string("moerun::Session::decode: ") + what + " has " +
                                                   std::to_string(got) + " entries for " + std::to_string(n_tokens) +
                                                   " tokens");
  }

  void decode_raw(size_t n, const int32_t* tokens, const int32_t* seq_ids, const int32_t* positions,
                  const uint8_t* logits) {
    moerun_batch b;
    moerun_batch_init(&b);
    b.n_tokens = detail::checked_u32(n, "batch");
    b.tokens = tokens;
    b.seq_ids = seq_ids;
    b.positions = positions;
    b.logits = logits;
    detail::check(moerun_session_decode(handle_.get(), &b));
  }

  // Declared before handle_ so that it is destroyed after it, whatever the destruction path.
  std::shared_ptr<moerun_model> model_;
  std::unique_ptr<moerun_session, detail::SessionDeleter> handle_;
  size_t vocab_size_ = 0;
  size_t n_expert_counts_ = 0;
};

/* ---- sampling --------------------------------------------------------------------------------- */

// Mirrors moerun_sampler_options; the defaults are the C library's (greedy).
struct SamplerOptions {
  float temperature;  // 0 = greedy (argmax, lowest id on ties); must be >= 0
  int32_t top_k;      // 0 = off
  float top_p;        // 1 = off; in (0, 1]
  float min_p;        // 0 = off; in [0, 1)
  uint64_t seed;      // same seed + same logits = same tokens

  SamplerOptions() {
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    temperature = o.temperature;
    top_k = o.top_k;
    top_p = o.top_p;
    min_p = o.min_p;
    seed = o.seed;
  }
};

// Picks tokens from logits; holds the random state. One thread at a time.
class Sampler {
 public:
  // An empty handle. A greedy sampler is Sampler{SamplerOptions{}}.
  Sampler() noexcept = default;

  // Throws Error: MOERUN_ERR_INVALID_ARGUMENT (a parameter out of range; the message names it).
  explicit Sampler(const SamplerOptions& options) {
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    o.temperature = options.temperature;
    o.top_k = options.top_k;
    o.top_p = options.top_p;
    o.min_p = options.min_p;
    o.seed = options.seed;
    moerun_sampler* raw = nullptr;
    detail::check(moerun_sampler_create(&o, &raw));
    handle_.reset(raw);
  }

  Sampler(Sampler&&) noexcept = default;
  Sampler& operator=(Sampler&&) noexcept = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;
  ~Sampler() = default;

  // Samples a token id in [0, n_vocab) from n_vocab logits (read during the call only).
  // Throws Error: MOERUN_ERR_INVALID_ARGUMENT (null logits, n_vocab 0, empty handle).
  [[nodiscard]] int32_t sample(const float* logits, size_t n_vocab) {
    int32_t token = -1;
    detail::check(moerun_sampler_sample(handle_.get(), logits, detail::checked_u32(n_vocab, "logits"), &token));
    return token;
  }
  [[nodiscard]] int32_t sample(LogitsView logits) { return sample(logits.data, logits.size); }
  [[nodiscard]] int32_t sample(const std::vector<float>& logits) { return sample(logits.data(), logits.size()); }

  // Throws nothing.
  void reset() noexcept { handle_.reset(); }
  explicit operator bool() const noexcept { return handle_ != nullptr; }
  // The C handle, or nullptr when empty; still owned by the wrapper.
  moerun_sampler* get() const noexcept { return handle_.get(); }

 private:
  std::unique_ptr<moerun_sampler, detail::SamplerDeleter> handle_;
};

inline std::vector<int32_t> Session::generate(Sampler& sampler, const std::vector<int32_t>& prompt,
                                              uint32_t max_tokens, const TokenCallback& on_token, int32_t seq_id) {
  std::vector<int32_t> out(max_tokens);
  uint32_t n = 0;
  detail::CallbackState<int32_t> state{&on_token, nullptr};
  const moerun_status status =
      moerun_generate(handle_.get(), sampler.get(), seq_id, prompt.data(), detail::checked_u32(prompt.size(), "prompt"),
                      max_tokens, on_token ? &detail::CallbackState<int32_t>::trampoline : nullptr, &state, out.data(), &n);
  if (state.error) std::rethrow_exception(state.error);
  detail::check(status);
  out.resize(n);
  return out;
}

}  // namespace cpp_v1
}  // namespace moerun

#endif  // MOERUN_MOERUN_HPP_
