// A PaddleCustomDevice runtime plugin whose "device" is host memory.
//
// It stands in for a real accelerator plugin (paddle-custom-npu) in tests:
// Paddle loads it from CUSTOM_DEVICE_ROOT, registers the device type
// MEDVL_DEVICE_TYPE (set at build time), and runs every op through its CPU
// kernel fallback. Memory is malloc'd host memory, copies are memcpy, streams
// and events are synchronous tokens. The XCCL collectives work across the
// processes of one host through a POSIX shared-memory segment, so
// data-parallel training under `paddle.distributed.launch` really averages
// gradients.
//
// Written from the public header paddle/phi/backends/device_ext.h only.
//
// Run-time environment:
//   MEDVL_DEVICE_COUNT      devices to expose (default 1)
//   MEDVL_XCCL_TIMEOUT      seconds a collective waits for its peers (300)
//   MEDVL_XCCL_CHUNK_BYTES  per-rank staging buffer of a collective (2 MiB)
//   MEDVL_XCCL_P2P_BYTES    ring buffer per (sender, receiver) pair (256 KiB)

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <complex>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "paddle/phi/backends/device_ext.h"

#ifndef MEDVL_DEVICE_TYPE
#define MEDVL_DEVICE_TYPE "medvl_cpu"
#endif

namespace {

constexpr int kMaxDevices = 1024;
constexpr int kMaxRanks = 256;
constexpr size_t kUniqueIdBytes = 128;  // a NUL-terminated shm name
constexpr size_t kAlign = 64;
constexpr uint32_t kReady = 0x4d45444cu;  // "MEDL"

// ---------------------------------------------------------------------------
// Configuration from the environment
// ---------------------------------------------------------------------------

void Log(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::fprintf(stderr, "[%s plugin] ", MEDVL_DEVICE_TYPE);
  std::vfprintf(stderr, fmt, args);
  std::fputc('\n', stderr);
  va_end(args);
}

// An integer from the environment: the default when unset, and the default
// plus a warning when malformed or out of range, so a typo is never silent.
long long EnvInt(const char* name, long long fallback, long long lo,
                 long long hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < lo || value > hi) {
    Log("%s='%s' is not an integer in [%lld, %lld]; using %lld", name, text,
        lo, hi, fallback);
    return fallback;
  }
  return value;
}

size_t DeviceCount() {
  static const size_t count =
      static_cast<size_t>(EnvInt("MEDVL_DEVICE_COUNT", 1, 1, kMaxDevices));
  return count;
}

double TimeoutSeconds() {
  static const double seconds =
      static_cast<double>(EnvInt("MEDVL_XCCL_TIMEOUT", 300, 1, 86400 * 7));
  return seconds;
}

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// ---------------------------------------------------------------------------
// Device, stream, event and memory API: host memory, everything synchronous
// ---------------------------------------------------------------------------

thread_local int g_current_device = 0;

bool ValidDevice(const C_Device device) {
  return device != nullptr && device->id >= 0 &&
         static_cast<size_t>(device->id) < DeviceCount();
}

C_Status SetDevice(const C_Device device) {
  if (!ValidDevice(device)) return C_ERROR;
  g_current_device = device->id;
  return C_SUCCESS;
}

C_Status GetDevice(const C_Device device) {
  device->id = g_current_device;
  return C_SUCCESS;
}

C_Status GetDeviceCount(size_t* count) {
  *count = DeviceCount();
  return C_SUCCESS;
}

C_Status GetDeviceList(size_t* devices) {
  for (size_t i = 0; i < DeviceCount(); ++i) devices[i] = i;
  return C_SUCCESS;
}

C_Status CreateStream(const C_Device, C_Stream* stream) {
  *stream = reinterpret_cast<C_Stream>(new char);
  return C_SUCCESS;
}

C_Status DestroyStream(const C_Device, C_Stream stream) {
  delete reinterpret_cast<char*>(stream);
  return C_SUCCESS;
}

// Work is done when it is issued, so a callback may run at once.
C_Status StreamAddCallback(const C_Device device, C_Stream stream,
                           C_Callback callback, void* user_data) {
  C_Status status = C_SUCCESS;
  callback(device, stream, user_data, &status);
  return status;
}

C_Status CreateEvent(const C_Device, C_Event* event) {
  *event = reinterpret_cast<C_Event>(new char);
  return C_SUCCESS;
}

C_Status DestroyEvent(const C_Device, C_Event event) {
  delete reinterpret_cast<char*>(event);
  return C_SUCCESS;
}

C_Status RecordEvent(const C_Device, C_Stream, C_Event) { return C_SUCCESS; }
C_Status SyncDevice(const C_Device) { return C_SUCCESS; }
C_Status SyncStream(const C_Device, C_Stream) { return C_SUCCESS; }
C_Status SyncEvent(const C_Device, C_Event) { return C_SUCCESS; }
C_Status StreamWaitEvent(const C_Device, C_Stream, C_Event) {
  return C_SUCCESS;
}

C_Status Allocate(const C_Device, void** ptr, size_t size) {
  // CPU kernels may use aligned vector loads; 64 bytes covers AVX-512.
  if (posix_memalign(ptr, kAlign, std::max<size_t>(size, 1)) != 0) {
    *ptr = nullptr;
    return C_FAILED;
  }
  return C_SUCCESS;
}

C_Status Deallocate(const C_Device, void* ptr, size_t) {
  std::free(ptr);
  return C_SUCCESS;
}

C_Status MemorySet(const C_Device, void* ptr, unsigned char value,
                   size_t size) {
  std::memset(ptr, value, size);
  return C_SUCCESS;
}

C_Status Copy(const C_Device, void* dst, const void* src, size_t size) {
  if (size != 0) std::memcpy(dst, src, size);
  return C_SUCCESS;
}

C_Status CopyP2P(const C_Device, const C_Device, void* dst, const void* src,
                 size_t size) {
  if (size != 0) std::memcpy(dst, src, size);
  return C_SUCCESS;
}

// ---------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t FloatToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Round to nearest, ties to even (what Paddle's own float16 cast does).
uint16_t FloatToHalf(float f) {
  const uint32_t bits = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf
  if (magnitude < 0x38800000u) {  // below 2^-14: subnormal half (or zero)
    const float scaled = BitsToFloat(magnitude) * 16777216.0f;  // exact
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t half = (magnitude >> 13) - (112u << 10);
  const uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t bits = FloatToBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  }
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// How an element is widened for reduction and narrowed back: half types
// accumulate in float and round once, narrow integers in 64 bits.
template <typename T>
struct Codec {
  using Acc = T;
  static Acc Load(T v) { return v; }
  static T Store(Acc a) { return a; }
};
template <>
struct Codec<Half> {
  using Acc = float;
  static Acc Load(Half v) { return HalfToFloat(v.bits); }
  static Half Store(Acc a) { return Half{FloatToHalf(a)}; }
};
template <>
struct Codec<BFloat16> {
  using Acc = float;
  static Acc Load(BFloat16 v) {
    return BitsToFloat(static_cast<uint32_t>(v.bits) << 16);
  }
  static BFloat16 Store(Acc a) { return BFloat16{FloatToBFloat16(a)}; }
};
template <typename T, typename Wide>
struct WideCodec {
  using Acc = Wide;
  static Acc Load(T v) { return static_cast<Wide>(v); }
  static T Store(Acc a) { return static_cast<T>(a); }
};
template <>
struct Codec<int8_t> : WideCodec<int8_t, int64_t> {};
template <>
struct Codec<int16_t> : WideCodec<int16_t, int64_t> {};
template <>
struct Codec<int32_t> : WideCodec<int32_t, int64_t> {};
template <>
struct Codec<uint8_t> : WideCodec<uint8_t, uint64_t> {};
template <>
struct Codec<uint16_t> : WideCodec<uint16_t, uint64_t> {};
template <>
struct Codec<uint32_t> : WideCodec<uint32_t, uint64_t> {};

size_t DtypeSize(C_DataType dtype) {
  switch (dtype) {
    case BOOL:
    case UINT8:
    case INT8:
      return 1;
    case UINT16:
    case INT16:
    case FLOAT16:
    case BFLOAT16:
      return 2;
    case UINT32:
    case INT32:
    case FLOAT32:
      return 4;
    case UINT64:
    case INT64:
    case FLOAT64:
    case COMPLEX64:
      return 8;
    case COMPLEX128:
      return 16;
    default:
      return 0;
  }
}

// dst[i] = op over ranks of srcs[r][i]; ranks are folded in rank order so
// every rank computes bit-identical results.
template <typename T>
void ReduceTyped(const std::vector<const char*>& srcs, char* dst_bytes,
                 size_t n, C_CCLReduceOp op) {
  using C = Codec<T>;
  using Acc = typename C::Acc;
  T* dst = reinterpret_cast<T*>(dst_bytes);
  const T* first = reinterpret_cast<const T*>(srcs[0]);
  for (size_t i = 0; i < n; ++i) {
    Acc acc = C::Load(first[i]);
    for (size_t r = 1; r < srcs.size(); ++r) {
      const Acc v = C::Load(reinterpret_cast<const T*>(srcs[r])[i]);
      switch (op) {
        case SUM:
        case AVG:
          acc = acc + v;
          break;
        case PRODUCT:
          acc = acc * v;
          break;
        case MAX:
          acc = v > acc ? v : acc;
          break;
        case MIN:
          acc = v < acc ? v : acc;
          break;
      }
    }
    if (op == AVG) acc = acc / static_cast<Acc>(srcs.size());
    dst[i] = C::Store(acc);
  }
}

bool Reducible(C_DataType dtype) {
  return DtypeSize(dtype) != 0 && dtype != BOOL && dtype != COMPLEX64 &&
         dtype != COMPLEX128;
}

// For the types Reducible() accepts; callers check first.
void Reduce(C_DataType dtype, const std::vector<const char*>& srcs, char* dst,
            size_t n, C_CCLReduceOp op) {
  switch (dtype) {
    case INT8:
      ReduceTyped<int8_t>(srcs, dst, n, op);
      break;
    case INT16:
      ReduceTyped<int16_t>(srcs, dst, n, op);
      break;
    case INT32:
      ReduceTyped<int32_t>(srcs, dst, n, op);
      break;
    case INT64:
      ReduceTyped<int64_t>(srcs, dst, n, op);
      break;
    case UINT8:
      ReduceTyped<uint8_t>(srcs, dst, n, op);
      break;
    case UINT16:
      ReduceTyped<uint16_t>(srcs, dst, n, op);
      break;
    case UINT32:
      ReduceTyped<uint32_t>(srcs, dst, n, op);
      break;
    case UINT64:
      ReduceTyped<uint64_t>(srcs, dst, n, op);
      break;
    case FLOAT16:
      ReduceTyped<Half>(srcs, dst, n, op);
      break;
    case BFLOAT16:
      ReduceTyped<BFloat16>(srcs, dst, n, op);
      break;
    case FLOAT32:
      ReduceTyped<float>(srcs, dst, n, op);
      break;
    case FLOAT64:
      ReduceTyped<double>(srcs, dst, n, op);
      break;
    default:
      break;
  }
}

// Paddle's imperative gradient accumulator (imperative::TensorAdd) adds on
// custom places with y = alpha * x + beta * y (3.3's eager mode uses the add
// kernel instead).
template <typename T>
void Axpby(size_t n, float alpha, const void* x, float beta, void* y) {
  const T* xs = static_cast<const T*>(x);
  T* ys = static_cast<T*>(y);
  for (size_t i = 0; i < n; ++i) ys[i] = T(alpha) * xs[i] + T(beta) * ys[i];
}

C_Status BlasAxpby(const C_Device, C_Stream, C_DataType dtype, size_t numel,
                   float alpha, void* x, float beta, void* y) {
  switch (dtype) {
    case FLOAT32:
      Axpby<float>(numel, alpha, x, beta, y);
      return C_SUCCESS;
    case FLOAT64:
      Axpby<double>(numel, alpha, x, beta, y);
      return C_SUCCESS;
    case COMPLEX64:
      Axpby<std::complex<float>>(numel, alpha, x, beta, y);
      return C_SUCCESS;
    case COMPLEX128:
      Axpby<std::complex<double>>(numel, alpha, x, beta, y);
      return C_SUCCESS;
    default:
      Log("blas_axpby: data type %d is not supported", static_cast<int>(dtype));
      return C_ERROR;
  }
}

// ---------------------------------------------------------------------------
// XCCL over POSIX shared memory
//
// Segment layout: Shared header | ring controls (nranks^2) | one staging slot
// per rank | one p2p ring per ordered (sender, receiver) pair. Rank 0 creates
// the segment under the name carried by the unique id; once every rank has
// mapped it, rank 0 unlinks the name, so the memory is freed when the last
// process unmaps it or dies, and a crashed job leaves nothing in /dev/shm.
// ---------------------------------------------------------------------------

static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "cross-process atomics need lock-free 32-bit atomics");
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "cross-process atomics need lock-free 64-bit atomics");

struct Shared {
  std::atomic<uint32_t> ready;    // kReady once rank 0 has filled the header
  std::atomic<uint32_t> aborted;  // 1 + the rank that gave up, else 0
  uint32_t nranks;
  uint64_t slot_bytes;
  uint64_t ring_bytes;
  uint64_t total_bytes;
  alignas(kAlign) std::atomic<uint32_t> barrier_count;
  alignas(kAlign) std::atomic<uint32_t> barrier_generation;
  alignas(kAlign) std::atomic<int32_t> pid[kMaxRanks];
};

struct RingControl {
  alignas(kAlign) std::atomic<uint64_t> written;  // bytes ever written
  alignas(kAlign) std::atomic<uint64_t> read;     // bytes ever read
};

size_t SegmentBytes(size_t nranks, size_t slot_bytes, size_t ring_bytes) {
  return RoundUp(sizeof(Shared), kAlign) +
         RoundUp(nranks * nranks * sizeof(RingControl), 4096) +
         nranks * slot_bytes + nranks * nranks * ring_bytes;
}

}  // namespace

struct C_CCLComm_st {
  std::string name;  // of the shm segment; also the comm name
  int rank = 0;
  int nranks = 0;
  Shared* shared = nullptr;
  size_t mapped_bytes = 0;
  RingControl* rings = nullptr;
  char* slots = nullptr;
  char* ring_data = nullptr;
  size_t slot_bytes = 0;
  size_t ring_bytes = 0;

  char* Slot(int r) const { return slots + static_cast<size_t>(r) * slot_bytes; }
  size_t Pair(int from, int to) const {
    return static_cast<size_t>(from) * nranks + static_cast<size_t>(to);
  }
};

namespace {

using Comm = C_CCLComm_st;

bool PeerAlive(pid_t pid) {
  if (pid <= 0) return true;  // not attached yet
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A crashed rank stays a zombie until the launcher reaps it.
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return true;
  char state = 'R';
  const int got = std::fscanf(f, "%*d (%*[^)]) %c", &state);
  std::fclose(f);
  return got != 1 || state != 'Z';
}

void Fail(Comm* comm, const char* what, const char* fmt, ...) {
  char detail[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(detail, sizeof(detail), fmt, args);
  va_end(args);
  if (comm != nullptr) {
    Log("xccl %s failed on rank %d of %d (comm %s): %s", what, comm->rank,
        comm->nranks, comm->name.c_str(), detail);
    if (comm->shared != nullptr) {
      uint32_t expected = 0;
      comm->shared->aborted.compare_exchange_strong(
          expected, static_cast<uint32_t>(comm->rank) + 1);
    }
  } else {
    Log("xccl %s failed: %s", what, detail);
  }
}

// Spins briefly, then sleeps with back-off; gives up (with a message naming
// the cause) on timeout, when a peer process died, or when a peer gave up.
// A peer may finish its part of an operation and exit before this rank has
// seen the result (its last bytes sit in a ring, its barrier arrival is
// counted): `settled` re-checks the wait's own condition (making progress if
// it can) before an exited peer counts as a failure.
class Waiter {
 public:
  Waiter(Comm* comm, const char* what,
         const char* stall_hint =
             "every rank must issue the same collectives in the same order",
         std::function<bool()> settled = nullptr,
         std::vector<int> peers = {})
      : comm_(comm),
        what_(what),
        hint_(stall_hint),
        settled_(std::move(settled)),
        peers_(std::move(peers)),
        start_(Now()),
        next_check_(start_) {}

  void Progressed() { idle_ = 0; }

  bool Pause() {
    ++idle_;
    if (idle_ < 100) {
      sched_yield();
      return true;
    }
    const long micros = std::min<long>(1000, 10L * (idle_ - 99));
    timespec ts{0, micros * 1000L};
    nanosleep(&ts, nullptr);
    const double now = Now();
    if (now < next_check_) return true;
    next_check_ = now + 0.2;
    if (comm_ != nullptr && comm_->shared != nullptr) {
      const uint32_t aborted = comm_->shared->aborted.load();
      if (aborted != 0 && static_cast<int>(aborted) - 1 != comm_->rank) {
        Fail(comm_, what_, "rank %u gave up (see its error)", aborted - 1);
        return false;
      }
      for (int r = 0; r < comm_->nranks; ++r) {
        const bool watched = peers_.empty() || std::find(peers_.begin(), peers_.end(), r) != peers_.end();
        const pid_t pid = comm_->shared->pid[r].load();
        if (watched && r != comm_->rank && !PeerAlive(pid)) {
          if (settled_ && settled_()) {
            idle_ = 0;
            return true;
          }
          Fail(comm_, what_, "rank %d (pid %d) has exited", r,
               static_cast<int>(pid));
          return false;
        }
      }
    }
    if (now - start_ > TimeoutSeconds()) {
      Fail(comm_, what_,
           "timed out after %.0f s waiting for the other ranks; %s (raise "
           "MEDVL_XCCL_TIMEOUT if they are merely slow)",
           now - start_, hint_);
      return false;
    }
    return true;
  }

 private:
  Comm* comm_;
  const char* what_;
  const char* hint_;
  std::function<bool()> settled_;
  std::vector<int> peers_;  // the ranks this wait depends on; empty: all of them
  double start_;
  double next_check_;
  long idle_ = 0;
};

// A sense-reversing barrier: the last rank to arrive resets the count and
// bumps the generation the others wait on.
bool Barrier(Comm* comm, const char* what) {
  Shared* s = comm->shared;
  const uint32_t generation = s->barrier_generation.load();
  if (s->barrier_count.fetch_add(1) + 1 == static_cast<uint32_t>(comm->nranks)) {
    s->barrier_count.store(0);
    s->barrier_generation.fetch_add(1);
    return true;
  }
  Waiter waiter(comm, what, "every rank must issue the same collectives in the same order",
                [&] { return s->barrier_generation.load() != generation; });
  while (s->barrier_generation.load() == generation) {
    if (!waiter.Pause()) return false;
  }
  return true;
}

C_Status GetUniqueIdSize(size_t* size) {
  *size = kUniqueIdBytes;
  return C_SUCCESS;
}

// A fresh shm name per communicator: pid + random bits + a counter, so names
// never collide with another job or with leftovers of a crashed run.
C_Status GetUniqueId(C_CCLRootId* unique_id) {
  if (unique_id == nullptr || unique_id->data == nullptr ||
      unique_id->sz < kUniqueIdBytes) {
    Log("xccl get_unique_id: the id buffer must hold %zu bytes",
        kUniqueIdBytes);
    return C_ERROR;
  }
  static std::atomic<unsigned> counter{0};
  std::random_device entropy;
  const uint64_t random =
      (static_cast<uint64_t>(entropy()) << 32) ^ entropy();
  char* out = static_cast<char*>(unique_id->data);
  std::memset(out, 0, unique_id->sz);
  std::snprintf(out, kUniqueIdBytes, "/%s_xccl_%d_%016llx_%u",
                MEDVL_DEVICE_TYPE, static_cast<int>(getpid()),
                static_cast<unsigned long long>(random), counter.fetch_add(1));
  return C_SUCCESS;
}

void Unmap(Comm* comm) {
  if (comm->shared != nullptr) munmap(comm->shared, comm->mapped_bytes);
  comm->shared = nullptr;
}

void Layout(Comm* comm) {
  char* base = reinterpret_cast<char*>(comm->shared);
  const size_t n = static_cast<size_t>(comm->nranks);
  comm->rings =
      reinterpret_cast<RingControl*>(base + RoundUp(sizeof(Shared), kAlign));
  comm->slots = base + RoundUp(sizeof(Shared), kAlign) +
                RoundUp(n * n * sizeof(RingControl), 4096);
  comm->ring_data = comm->slots + n * comm->slot_bytes;
}

// Rank 0: create, size (fallocate, so a too-small /dev/shm fails here rather
// than as SIGBUS later) and fill the header of the segment.
bool CreateSegment(Comm* comm) {
  comm->slot_bytes = RoundUp(
      static_cast<size_t>(EnvInt("MEDVL_XCCL_CHUNK_BYTES", 2 << 20,
                                 static_cast<long long>(kAlign) * kMaxRanks,
                                 1LL << 32)),
      kAlign);
  comm->ring_bytes = RoundUp(
      static_cast<size_t>(EnvInt("MEDVL_XCCL_P2P_BYTES", 256 << 10, kAlign,
                                 1LL << 32)),
      kAlign);
  const size_t total =
      SegmentBytes(comm->nranks, comm->slot_bytes, comm->ring_bytes);
  const int fd = shm_open(comm->name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    Fail(comm, "comm_init_rank", "shm_open(%s) failed: %s", comm->name.c_str(),
         std::strerror(errno));
    return false;
  }
  const int err = ftruncate(fd, static_cast<off_t>(total)) != 0
                      ? errno
                      : posix_fallocate(fd, 0, static_cast<off_t>(total));
  void* mem = err == 0 ? mmap(nullptr, total, PROT_READ | PROT_WRITE,
                              MAP_SHARED, fd, 0)
                       : MAP_FAILED;
  const int map_err = errno;
  close(fd);
  if (mem == MAP_FAILED) {
    shm_unlink(comm->name.c_str());
    Fail(comm, "comm_init_rank",
         "cannot reserve %zu MiB of shared memory in /dev/shm (%s); give the "
         "container more (docker --shm-size) or lower MEDVL_XCCL_CHUNK_BYTES / "
         "MEDVL_XCCL_P2P_BYTES",
         total >> 20, std::strerror(err != 0 ? err : map_err));
    return false;
  }
  comm->shared = new (mem) Shared();
  comm->mapped_bytes = total;
  comm->shared->nranks = static_cast<uint32_t>(comm->nranks);
  comm->shared->slot_bytes = comm->slot_bytes;
  comm->shared->ring_bytes = comm->ring_bytes;
  comm->shared->total_bytes = total;
  comm->shared->pid[0].store(getpid());
  comm->shared->ready.store(kReady);
  return true;
}

// Other ranks: wait for rank 0 to publish the segment, then map all of it.
bool AttachSegment(Comm* comm) {
  Waiter waiter(comm, "comm_init_rank",
                "rank 0 never created the shared-memory segment; all ranks "
                "must run on one host");
  int fd = -1;
  void* header = MAP_FAILED;
  while (true) {
    if (fd < 0) fd = shm_open(comm->name.c_str(), O_RDWR, 0);
    if (fd < 0 && errno != ENOENT) {
      Fail(comm, "comm_init_rank", "shm_open(%s) failed: %s",
           comm->name.c_str(), std::strerror(errno));
      return false;
    }
    struct stat st;
    if (fd >= 0 && header == MAP_FAILED && fstat(fd, &st) == 0 &&
        static_cast<size_t>(st.st_size) >= sizeof(Shared)) {
      header = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                    MAP_SHARED, fd, 0);
    }
    if (header != MAP_FAILED &&
        static_cast<Shared*>(header)->ready.load() == kReady) {
      break;
    }
    if (!waiter.Pause()) {
      if (header != MAP_FAILED) munmap(header, sizeof(Shared));
      if (fd >= 0) close(fd);
      return false;
    }
  }
  const Shared* probe = static_cast<Shared*>(header);
  const uint32_t nranks = probe->nranks;
  comm->slot_bytes = probe->slot_bytes;
  comm->ring_bytes = probe->ring_bytes;
  comm->mapped_bytes = probe->total_bytes;
  munmap(header, sizeof(Shared));
  if (nranks != static_cast<uint32_t>(comm->nranks)) {
    close(fd);
    Fail(comm, "comm_init_rank", "segment %s was made for %u ranks, not %d",
         comm->name.c_str(), nranks, comm->nranks);
    return false;
  }
  void* mem = mmap(nullptr, comm->mapped_bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED, fd, 0);
  close(fd);
  if (mem == MAP_FAILED) {
    Fail(comm, "comm_init_rank", "mmap(%s) failed: %s", comm->name.c_str(),
         std::strerror(errno));
    return false;
  }
  comm->shared = static_cast<Shared*>(mem);
  comm->shared->pid[comm->rank].store(getpid());
  return true;
}

C_Status CommInitRank(size_t nranks, C_CCLRootId* unique_id, size_t rank,
                      C_CCLComm* out) {
  if (unique_id == nullptr || unique_id->data == nullptr ||
      unique_id->sz < kUniqueIdBytes || nranks == 0 ||
      nranks > static_cast<size_t>(kMaxRanks) || rank >= nranks) {
    Log("xccl comm_init_rank: invalid arguments (rank %zu of %zu; at most %d "
        "ranks)",
        rank, nranks, kMaxRanks);
    return C_ERROR;
  }
  Comm* comm = new Comm();
  const char* id = static_cast<const char*>(unique_id->data);
  comm->name.assign(id, strnlen(id, kUniqueIdBytes));
  comm->rank = static_cast<int>(rank);
  comm->nranks = static_cast<int>(nranks);
  const bool ok = rank == 0 ? CreateSegment(comm) : AttachSegment(comm);
  if (ok) Layout(comm);
  // Once everyone is attached the name is no longer needed.
  if (ok && Barrier(comm, "comm_init_rank")) {
    if (rank == 0) shm_unlink(comm->name.c_str());
    *out = comm;
    return C_SUCCESS;
  }
  if (rank == 0) shm_unlink(comm->name.c_str());
  Unmap(comm);
  delete comm;
  return C_FAILED;
}

C_Status DestroyComm(C_CCLComm comm) {
  if (comm == nullptr) return C_ERROR;
  // Normally unlinked at init already; this covers a comm destroyed early.
  if (comm->rank == 0) shm_unlink(comm->name.c_str());
  Unmap(comm);
  delete comm;
  return C_SUCCESS;
}

C_Status GetCommName(C_CCLComm comm, char* name) {
  if (comm == nullptr || name == nullptr) return C_ERROR;
  // Paddle passes a 128-byte buffer; unique ids are shorter than that.
  std::snprintf(name, kUniqueIdBytes, "%s", comm->name.c_str());
  return C_SUCCESS;
}

bool CheckArgs(Comm* comm, const char* what, C_DataType dtype, bool reduce,
               C_CCLReduceOp op = SUM) {
  if (comm == nullptr || comm->shared == nullptr) {
    Log("xccl %s: no communicator", what);
    return false;
  }
  if (DtypeSize(dtype) == 0 || (reduce && !Reducible(dtype))) {
    Fail(comm, what, "data type %d is not supported%s",
         static_cast<int>(dtype), reduce ? " for reductions" : "");
    return false;
  }
  if (reduce && (op < SUM || op > PRODUCT)) {
    Fail(comm, what, "unknown reduce op %d", static_cast<int>(op));
    return false;
  }
  return true;
}

std::vector<const char*> SlotPointers(Comm* comm, size_t byte_offset) {
  std::vector<const char*> srcs(comm->nranks);
  for (int r = 0; r < comm->nranks; ++r) srcs[r] = comm->Slot(r) + byte_offset;
  return srcs;
}

// Every collective moves data through the slots chunk by chunk: stage own
// data, barrier, read the others', barrier (so no slot is overwritten early).
C_Status AllReduce(void* send, void* recv, size_t count, C_DataType dtype,
                   C_CCLReduceOp op, C_CCLComm comm, C_Stream) {
  const char* what = "all_reduce";
  if (!CheckArgs(comm, what, dtype, true, op)) return C_ERROR;
  const size_t es = DtypeSize(dtype);
  const size_t per = comm->slot_bytes / es;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    std::memcpy(comm->Slot(comm->rank), static_cast<char*>(send) + off * es,
                n * es);
    if (!Barrier(comm, what)) return C_FAILED;
    Reduce(dtype, SlotPointers(comm, 0), static_cast<char*>(recv) + off * es,
           n, op);
    if (!Barrier(comm, what)) return C_FAILED;
  }
  return C_SUCCESS;
}

C_Status ReduceToRoot(void* send, void* recv, size_t count, C_DataType dtype,
                      C_CCLReduceOp op, size_t root, C_CCLComm comm, C_Stream) {
  const char* what = "reduce";
  if (!CheckArgs(comm, what, dtype, true, op)) return C_ERROR;
  if (root >= static_cast<size_t>(comm->nranks)) {
    Fail(comm, what, "root %zu is not a rank", root);
    return C_ERROR;
  }
  const size_t es = DtypeSize(dtype);
  const size_t per = comm->slot_bytes / es;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    std::memcpy(comm->Slot(comm->rank), static_cast<char*>(send) + off * es,
                n * es);
    if (!Barrier(comm, what)) return C_FAILED;
    if (static_cast<size_t>(comm->rank) == root) {
      Reduce(dtype, SlotPointers(comm, 0), static_cast<char*>(recv) + off * es,
             n, op);
    }
    if (!Barrier(comm, what)) return C_FAILED;
  }
  return C_SUCCESS;
}

C_Status Broadcast(void* buf, size_t count, C_DataType dtype, size_t root,
                   C_CCLComm comm, C_Stream) {
  const char* what = "broadcast";
  if (!CheckArgs(comm, what, dtype, false)) return C_ERROR;
  if (root >= static_cast<size_t>(comm->nranks)) {
    Fail(comm, what, "root %zu is not a rank", root);
    return C_ERROR;
  }
  const bool is_root = static_cast<size_t>(comm->rank) == root;
  const size_t es = DtypeSize(dtype);
  const size_t per = comm->slot_bytes / es;
  char* slot = comm->Slot(static_cast<int>(root));
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    char* data = static_cast<char*>(buf) + off * es;
    if (is_root) std::memcpy(slot, data, n * es);
    if (!Barrier(comm, what)) return C_FAILED;
    if (!is_root) std::memcpy(data, slot, n * es);
    if (!Barrier(comm, what)) return C_FAILED;
  }
  return C_SUCCESS;
}

// recv holds nranks blocks of `count` elements, block r from rank r.
C_Status AllGather(void* send, void* recv, size_t count, C_DataType dtype,
                   C_CCLComm comm, C_Stream) {
  const char* what = "all_gather";
  if (!CheckArgs(comm, what, dtype, false)) return C_ERROR;
  const size_t es = DtypeSize(dtype);
  const size_t per = comm->slot_bytes / es;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    std::memcpy(comm->Slot(comm->rank), static_cast<char*>(send) + off * es,
                n * es);
    if (!Barrier(comm, what)) return C_FAILED;
    for (int r = 0; r < comm->nranks; ++r) {
      std::memcpy(static_cast<char*>(recv) + (r * count + off) * es,
                  comm->Slot(r), n * es);
    }
    if (!Barrier(comm, what)) return C_FAILED;
  }
  return C_SUCCESS;
}

// send holds nranks blocks of `count` elements; this rank gets the reduction
// of block `rank` across ranks.
C_Status ReduceScatter(void* send, void* recv, size_t count, C_DataType dtype,
                       C_CCLReduceOp op, C_CCLComm comm, C_Stream) {
  const char* what = "reduce_scatter";
  if (!CheckArgs(comm, what, dtype, true, op)) return C_ERROR;
  const size_t es = DtypeSize(dtype);
  const size_t nranks = static_cast<size_t>(comm->nranks);
  const size_t per = comm->slot_bytes / es / nranks;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    for (size_t r = 0; r < nranks; ++r) {
      std::memcpy(comm->Slot(comm->rank) + r * n * es,
                  static_cast<char*>(send) + (r * count + off) * es, n * es);
    }
    if (!Barrier(comm, what)) return C_FAILED;
    Reduce(dtype, SlotPointers(comm, comm->rank * n * es),
           static_cast<char*>(recv) + off * es, n, op);
    if (!Barrier(comm, what)) return C_FAILED;
  }
  return C_SUCCESS;
}

// Point-to-point: a byte stream per ordered pair through a ring buffer.
// Inside group_start/group_end the operations are queued and then progressed
// together, so a group whose sends and receives depend on each other cannot
// deadlock on a full ring.
struct P2POp {
  Comm* comm;
  char* data;
  size_t bytes;
  size_t done;
  int peer;
  bool is_send;
};

thread_local int g_group_depth = 0;
thread_local std::vector<P2POp> g_group_ops;

// Moves as many bytes as the ring allows; true if any moved.
bool Step(P2POp& op) {
  Comm* c = op.comm;
  const size_t pair =
      op.is_send ? c->Pair(c->rank, op.peer) : c->Pair(op.peer, c->rank);
  RingControl& ring = c->rings[pair];
  char* buffer = c->ring_data + pair * c->ring_bytes;
  const uint64_t written = ring.written.load();
  const uint64_t read = ring.read.load();
  const uint64_t position = op.is_send ? written : read;
  const size_t room = op.is_send ? c->ring_bytes - (written - read)
                                 : static_cast<size_t>(written - read);
  const size_t k = std::min(room, op.bytes - op.done);
  if (k == 0) return false;
  const size_t start = position % c->ring_bytes;
  const size_t first = std::min(k, c->ring_bytes - start);
  if (op.is_send) {
    std::memcpy(buffer + start, op.data + op.done, first);
    std::memcpy(buffer, op.data + op.done + first, k - first);
    ring.written.store(written + k);
  } else {
    std::memcpy(op.data + op.done, buffer + start, first);
    std::memcpy(op.data + op.done + first, buffer, k - first);
    ring.read.store(read + k);
  }
  op.done += k;
  return true;
}

C_Status RunP2P(std::vector<P2POp>& ops) {
  if (ops.empty()) return C_SUCCESS;
  // An exited peer is only a failure if an operation with it is still unfinished once what it
  // left in our rings is taken: a peer whose part of the group is done may exit while this
  // rank still waits on another, slower one.
  auto settled = [&ops] {
    for (P2POp& op : ops) {
      if (op.done < op.bytes) Step(op);
    }
    for (const P2POp& op : ops) {
      if (op.done < op.bytes && !PeerAlive(op.comm->shared->pid[op.peer].load())) return false;
    }
    return true;
  };
  // Only the peers of these operations matter: other ranks may have finished and exited.
  std::vector<int> peers;
  for (const P2POp& op : ops) peers.push_back(static_cast<int>(op.peer));
  Waiter waiter(ops[0].comm, ops[0].is_send ? "send" : "recv",
                "every rank must issue the same collectives in the same order", settled, peers);
  while (true) {
    bool finished = true;
    bool progressed = false;
    for (P2POp& op : ops) {
      if (op.done < op.bytes) progressed |= Step(op);
      finished &= op.done == op.bytes;
    }
    if (finished) return C_SUCCESS;
    if (progressed) {
      waiter.Progressed();
    } else if (!waiter.Pause()) {
      return C_FAILED;
    }
  }
}

C_Status PointToPoint(void* buf, size_t count, C_DataType dtype, size_t peer,
                      C_CCLComm comm, bool is_send) {
  const char* what = is_send ? "send" : "recv";
  if (!CheckArgs(comm, what, dtype, false)) return C_ERROR;
  if (peer >= static_cast<size_t>(comm->nranks)) {
    Fail(comm, what, "peer %zu is not a rank", peer);
    return C_ERROR;
  }
  P2POp op{comm, static_cast<char*>(buf), count * DtypeSize(dtype), 0,
           static_cast<int>(peer), is_send};
  if (g_group_depth > 0) {
    g_group_ops.push_back(op);
    return C_SUCCESS;
  }
  std::vector<P2POp> single{op};
  return RunP2P(single);
}

C_Status Send(void* buf, size_t count, C_DataType dtype, size_t peer,
              C_CCLComm comm, C_Stream) {
  return PointToPoint(buf, count, dtype, peer, comm, true);
}

C_Status Recv(void* buf, size_t count, C_DataType dtype, size_t peer,
              C_CCLComm comm, C_Stream) {
  return PointToPoint(buf, count, dtype, peer, comm, false);
}

C_Status GroupStart() {
  ++g_group_depth;
  return C_SUCCESS;
}

C_Status GroupEnd() {
  if (g_group_depth == 0) {
    Log("xccl group_end without group_start");
    return C_ERROR;
  }
  if (--g_group_depth > 0) return C_SUCCESS;
  std::vector<P2POp> ops;
  ops.swap(g_group_ops);
  return RunP2P(ops);
}

}  // namespace

void InitPlugin(CustomRuntimeParams* params) {
  PADDLE_CUSTOM_RUNTIME_CHECK_VERSION(params);
  params->device_type = const_cast<char*>(MEDVL_DEVICE_TYPE);
  params->sub_device_type = const_cast<char*>("host");

  C_DeviceInterface* api = params->interface;
  api->set_device = SetDevice;
  api->get_device = GetDevice;
  api->create_stream = CreateStream;
  api->destroy_stream = DestroyStream;
  api->stream_add_callback = StreamAddCallback;
  api->create_event = CreateEvent;
  api->record_event = RecordEvent;
  api->destroy_event = DestroyEvent;
  api->synchronize_device = SyncDevice;
  api->synchronize_stream = SyncStream;
  api->synchronize_event = SyncEvent;
  api->stream_wait_event = StreamWaitEvent;

  api->device_memory_allocate = Allocate;
  api->device_memory_deallocate = Deallocate;
  api->host_memory_allocate = Allocate;
  api->host_memory_deallocate = Deallocate;
  api->device_memory_set = MemorySet;
  api->memory_copy_h2d = Copy;
  api->memory_copy_d2h = Copy;
  api->memory_copy_d2d = Copy;
  api->memory_copy_p2p = CopyP2P;

  api->get_device_count = GetDeviceCount;
  api->get_device_list = GetDeviceList;

  api->blas_axpby = BlasAxpby;

  api->xccl_get_unique_id_size = GetUniqueIdSize;
  api->xccl_get_unique_id = GetUniqueId;
  api->xccl_comm_init_rank = CommInitRank;
  api->xccl_destroy_comm = DestroyComm;
  api->xccl_get_comm_name = GetCommName;
  api->xccl_all_reduce = AllReduce;
  api->xccl_broadcast = Broadcast;
  api->xccl_reduce = ReduceToRoot;
  api->xccl_all_gather = AllGather;
  api->xccl_reduce_scatter = ReduceScatter;
  api->xccl_group_start = GroupStart;
  api->xccl_group_end = GroupEnd;
  api->xccl_send = Send;
  api->xccl_recv = Recv;
}
