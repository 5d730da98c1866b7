// Drives the plugin through the C interface of device_ext.h (no Paddle), one forked
// process per rank.
//
// Paddle 3.3 cannot reach some of the plugin from Python (ProcessGroupCustom rejects
// ReduceOp.AVG, its eager mode never calls blas_axpby, and a stuck or dead peer is hard to
// stage under launch), so this checks them directly:
//   plugin_driver <plugin.so> collectives <nranks>  every collective, every reduce op, fp16
//                                                   and bf16 rounding, chunking, grouped p2p
//   plugin_driver <plugin.so> timeout 2             rank 1 never joins: rank 0 must fail
//                                                   after MEDVL_XCCL_TIMEOUT, not hang
//   plugin_driver <plugin.so> dead_peer 2           rank 1 exits: rank 0 must fail at once
//   plugin_driver <plugin.so> early_exit 3          rank 2 exits once its part of rank 0's group
//                                                   is done, while rank 1 is still slow: rank 0
//                                                   must wait for rank 1, not fail
// Every run also checks blas_axpby and that no shared-memory segment is left in /dev/shm.
// Prints "ok ..." lines; exits non-zero on the first failed expectation.

#include <dirent.h>
#include <dlfcn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "paddle/phi/backends/device_ext.h"

namespace {

C_DeviceInterface api;
int g_rank = -1;

#define EXPECT(cond)                                                       \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "FAIL rank %d line %d: %s\n", g_rank, __LINE__, \
                   #cond);                                                 \
      _exit(1);                                                            \
    }                                                                      \
  } while (0)

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// fp16 encoding of a value it represents exactly (every fp16 test value is, up to 4 ranks).
uint16_t Half(float f) {
  if (f == 0.0f) return 0;
  const uint32_t b = Bits(f);
  return static_cast<uint16_t>(((b >> 16) & 0x8000u) |
                               ((((b >> 23) & 0xffu) - 112u) << 10) |
                               ((b >> 13) & 0x3ffu));
}
// bf16 rounds to nearest even: products over 4 ranks need more than its 8 bits.
uint16_t BFloat(float f) {
  const uint32_t b = Bits(f);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// Rank r contributes base(i) + r (+ r/2 for float types): different on every rank.
float Value(size_t i, int r, bool fractional) {
  return static_cast<float>(i % 5) + r + (fractional ? 0.5f * r : 0.0f);
}

// Checks one all_reduce against the expected result computed the plugin's way: in Acc
// (float for half types, double for float64), folding ranks in order, rounding once.
template <typename T, typename Acc, typename Enc>
void CheckAllReduce(C_CCLComm comm, int nranks, C_DataType dtype,
                    C_CCLReduceOp op, size_t n, Enc encode, bool fractional) {
  std::vector<T> send(n), recv(n), want(n);
  for (size_t i = 0; i < n; ++i) {
    send[i] = encode(Value(i, g_rank, fractional));
    Acc acc = Value(i, 0, fractional);
    for (int r = 1; r < nranks; ++r) {
      const Acc v = Value(i, r, fractional);
      if (op == SUM || op == AVG) acc += v;
      if (op == PRODUCT) acc *= v;
      if (op == MAX) acc = v > acc ? v : acc;
      if (op == MIN) acc = v < acc ? v : acc;
    }
    if (op == AVG) acc /= nranks;
    want[i] = encode(static_cast<float>(acc));
  }
  EXPECT(api.xccl_all_reduce(send.data(), recv.data(), n, dtype, op, comm,
                             nullptr) == C_SUCCESS);
  EXPECT(std::memcmp(recv.data(), want.data(), n * sizeof(T)) == 0);
  // In place, as Paddle calls it.
  EXPECT(api.xccl_all_reduce(send.data(), send.data(), n, dtype, op, comm,
                             nullptr) == C_SUCCESS);
  EXPECT(std::memcmp(send.data(), want.data(), n * sizeof(T)) == 0);
}

void Collectives(C_CCLComm comm, int nranks, const std::string& id) {
  char name[128] = {0};
  EXPECT(api.xccl_get_comm_name(comm, name) == C_SUCCESS);
  EXPECT(id == name);

  // 10007 elements span several MEDVL_XCCL_CHUNK_BYTES chunks, with a ragged tail.
  const size_t n = 10007;
  const C_CCLReduceOp ops[] = {SUM, AVG, MAX, MIN, PRODUCT};
  for (C_CCLReduceOp op : ops) {
    const bool exact_avg = op != AVG || (nranks & (nranks - 1)) == 0;
    CheckAllReduce<float, float>(comm, nranks, FLOAT32, op, n,
                                 [](float v) { return v; }, true);
    CheckAllReduce<double, double>(comm, nranks, FLOAT64, op, n,
                                   [](float v) { return static_cast<double>(v); }, true);
    if (exact_avg) {  // the test's exact encoders need an exact mean: power-of-two rank counts
      CheckAllReduce<uint16_t, float>(comm, nranks, FLOAT16, op, n, Half, true);
      CheckAllReduce<uint16_t, float>(comm, nranks, BFLOAT16, op, n, BFloat, true);
    }
    if (op != AVG) {  // integer AVG truncates; not what Paddle would use
      CheckAllReduce<int32_t, int64_t>(comm, nranks, INT32, op, n,
                                       [](float v) { return static_cast<int32_t>(v); }, false);
      CheckAllReduce<int64_t, int64_t>(comm, nranks, INT64, op, n,
                                       [](float v) { return static_cast<int64_t>(v); }, false);
    }
  }
  std::printf("ok all_reduce rank %d: SUM AVG MAX MIN PRODUCT on f32 f64 f16 bf16 i32 i64\n",
              g_rank);

  // Half types accumulate in float and round once: 2048 + 1 (+ 0...) stays 2048 in fp16
  // only because the sum is rounded to even at the end.
  {
    uint16_t h = Half(g_rank == 0 ? 2048.0f : (g_rank == 1 ? 1.0f : 0.0f));
    EXPECT(api.xccl_all_reduce(&h, &h, 1, FLOAT16, SUM, comm, nullptr) == C_SUCCESS);
    EXPECT(h == Half(2048.0f));
    uint16_t b = BFloat(g_rank == 0 ? 256.0f : (g_rank == 1 ? 1.0f : 0.0f));
    EXPECT(api.xccl_all_reduce(&b, &b, 1, BFLOAT16, SUM, comm, nullptr) == C_SUCCESS);
    EXPECT(b == BFloat(256.0f));
  }

  // broadcast from the last rank
  {
    std::vector<float> buf(n);
    for (size_t i = 0; i < n; ++i) buf[i] = Value(i, g_rank, true);
    EXPECT(api.xccl_broadcast(buf.data(), n, FLOAT32, nranks - 1, comm, nullptr) ==
           C_SUCCESS);
    for (size_t i = 0; i < n; ++i) EXPECT(buf[i] == Value(i, nranks - 1, true));
  }
  // reduce (SUM) to rank 1 % nranks; other ranks' recv buffers stay untouched
  {
    const int root = 1 % nranks;
    std::vector<float> send(n), recv(n, -1.0f);
    for (size_t i = 0; i < n; ++i) send[i] = Value(i, g_rank, true);
    EXPECT(api.xccl_reduce(send.data(), recv.data(), n, FLOAT32, SUM, root, comm,
                           nullptr) == C_SUCCESS);
    for (size_t i = 0; i < n; ++i) {
      float want = 0;
      for (int r = 0; r < nranks; ++r) want += Value(i, r, true);
      EXPECT(recv[i] == (g_rank == root ? want : -1.0f));
    }
  }
  // all_gather: block r comes from rank r
  {
    std::vector<int64_t> send(n), recv(n * nranks);
    for (size_t i = 0; i < n; ++i) send[i] = 1000000LL * g_rank + i;
    EXPECT(api.xccl_all_gather(send.data(), recv.data(), n, INT64, comm, nullptr) ==
           C_SUCCESS);
    for (int r = 0; r < nranks; ++r)
      for (size_t i = 0; i < n; ++i) EXPECT(recv[r * n + i] == 1000000LL * r + (int64_t)i);
  }
  // reduce_scatter (MAX): this rank gets block `rank` reduced over ranks
  {
    std::vector<float> send(n * nranks), recv(n);
    for (int b = 0; b < nranks; ++b)
      for (size_t i = 0; i < n; ++i) send[b * n + i] = Value(i, g_rank, true) + 100.0f * b;
    EXPECT(api.xccl_reduce_scatter(send.data(), recv.data(), n, FLOAT32, MAX, comm,
                                   nullptr) == C_SUCCESS);
    for (size_t i = 0; i < n; ++i)
      EXPECT(recv[i] == Value(i, nranks - 1, true) + 100.0f * g_rank);
  }
  std::printf("ok broadcast reduce all_gather reduce_scatter rank %d\n", g_rank);

  // p2p: every rank sends to every other rank first and receives afterwards, inside one
  // group; with messages far larger than MEDVL_XCCL_P2P_BYTES this deadlocks unless the
  // group progresses all its operations together.
  {
    const size_t m = 50000;
    std::vector<std::vector<int32_t>> out(nranks, std::vector<int32_t>(m)),
        in(nranks, std::vector<int32_t>(m, -1));
    EXPECT(api.xccl_group_start() == C_SUCCESS);
    for (int p = 0; p < nranks; ++p) {
      if (p == g_rank) continue;
      for (size_t i = 0; i < m; ++i) out[p][i] = g_rank * 1000000 + p * 1000 + (int32_t)i;
      EXPECT(api.xccl_send(out[p].data(), m, INT32, p, comm, nullptr) == C_SUCCESS);
    }
    for (int p = 0; p < nranks; ++p) {
      if (p == g_rank) continue;
      EXPECT(api.xccl_recv(in[p].data(), m, INT32, p, comm, nullptr) == C_SUCCESS);
    }
    EXPECT(api.xccl_group_end() == C_SUCCESS);
    for (int p = 0; p < nranks; ++p) {
      if (p == g_rank) continue;
      for (size_t i = 0; i < m; ++i) EXPECT(in[p][i] == p * 1000000 + g_rank * 1000 + (int32_t)i);
    }
    // And ungrouped, ordered: rank 0 -> rank 1.
    std::vector<int32_t> msg(m);
    if (g_rank == 0 && nranks > 1) {
      for (size_t i = 0; i < m; ++i) msg[i] = 7 * (int32_t)i;
      EXPECT(api.xccl_send(msg.data(), m, INT32, 1, comm, nullptr) == C_SUCCESS);
    } else if (g_rank == 1) {
      EXPECT(api.xccl_recv(msg.data(), m, INT32, 0, comm, nullptr) == C_SUCCESS);
      for (size_t i = 0; i < m; ++i) EXPECT(msg[i] == 7 * (int32_t)i);
    }
  }
  std::printf("ok send recv group rank %d\n", g_rank);
}

// Rank 0 waits in an all_reduce that rank 1 never joins (rank 1 stays alive).
void Timeout(C_CCLComm comm) {
  float x = 1.0f;
  if (g_rank == 0) {
    const double start = Now();
    EXPECT(api.xccl_all_reduce(&x, &x, 1, FLOAT32, SUM, comm, nullptr) == C_FAILED);
    const double waited = Now() - start;
    EXPECT(waited >= 0.9 && waited < 10.0);
    std::printf("ok timeout after %.1f s\n", waited);
  } else {
    sleep(2);
  }
}

// Rank 1 dies right after init; rank 0 must notice long before MEDVL_XCCL_TIMEOUT.
void DeadPeer(C_CCLComm comm) {
  float x = 1.0f;
  if (g_rank == 1) _exit(0);
  const double start = Now();
  EXPECT(api.xccl_all_reduce(&x, &x, 1, FLOAT32, SUM, comm, nullptr) == C_FAILED);
  const double waited = Now() - start;
  EXPECT(waited < 5.0);
  std::printf("ok dead peer noticed after %.1f s\n", waited);
}

// Rank 0's group sends to rank 2 and receives from rank 1. Rank 2 takes its message and exits at
// once; rank 1 sends only after a second, by which time rank 0 has seen rank 2 gone. That is no
// failure: nothing rank 0 still waits for involves rank 2.
void EarlyExit(C_CCLComm comm) {
  std::vector<int32_t> msg(16);
  if (g_rank == 2) {
    EXPECT(api.xccl_recv(msg.data(), msg.size(), INT32, 0, comm, nullptr) == C_SUCCESS);
    EXPECT(msg[15] == 15);
    std::printf("ok rank 2 took its message and exits\n");
    std::fflush(stdout);
    _exit(0);
  }
  if (g_rank == 1) {
    timespec ts{1, 0};
    nanosleep(&ts, nullptr);
    for (size_t i = 0; i < msg.size(); ++i) msg[i] = 100 + (int32_t)i;
    EXPECT(api.xccl_send(msg.data(), msg.size(), INT32, 0, comm, nullptr) == C_SUCCESS);
    return;
  }
  std::vector<int32_t> in(16, -1);
  for (size_t i = 0; i < msg.size(); ++i) msg[i] = (int32_t)i;
  EXPECT(api.xccl_group_start() == C_SUCCESS);
  EXPECT(api.xccl_send(msg.data(), msg.size(), INT32, 2, comm, nullptr) == C_SUCCESS);
  EXPECT(api.xccl_recv(in.data(), in.size(), INT32, 1, comm, nullptr) == C_SUCCESS);
  EXPECT(api.xccl_group_end() == C_SUCCESS);
  EXPECT(in[15] == 115);
  std::printf("ok group finished after rank 2 exited\n");
}

void BlasAxpby() {
  std::vector<float> xf{1, 2, 3}, yf{10, 20, 30};
  EXPECT(api.blas_axpby(nullptr, nullptr, FLOAT32, 3, 2.0f, xf.data(), 0.5f, yf.data()) ==
         C_SUCCESS);
  EXPECT((yf == std::vector<float>{7, 14, 21}));
  std::vector<double> xd{1, -1}, yd{0.25, 4};
  EXPECT(api.blas_axpby(nullptr, nullptr, FLOAT64, 2, 1.0f, xd.data(), 1.0f, yd.data()) ==
         C_SUCCESS);
  EXPECT((yd == std::vector<double>{1.25, 3}));
  int32_t xi = 1, yi = 1;
  EXPECT(api.blas_axpby(nullptr, nullptr, INT32, 1, 1.0f, &xi, 1.0f, &yi) == C_ERROR);
  std::printf("ok blas_axpby\n");
}

int LeftoverSegments(const std::string& prefix) {
  int count = 0;
  if (DIR* dir = opendir("/dev/shm")) {
    while (dirent* entry = readdir(dir)) count += std::strncmp(entry->d_name, prefix.c_str(), prefix.size()) == 0;
    closedir(dir);
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <plugin.so> collectives|timeout|dead_peer|early_exit <nranks>\n", argv[0]);
    return 2;
  }
  const std::string scenario = argv[2];
  const int nranks = std::atoi(argv[3]);
  if (nranks < 1 || nranks > 4) {
    std::fprintf(stderr, "1 to 4 ranks (beyond that fp16 products of the test values round)\n");
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (lib == nullptr) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto init = reinterpret_cast<void (*)(CustomRuntimeParams*)>(dlsym(lib, "InitPlugin"));
  CustomRuntimeParams params;
  std::memset(&params, 0, sizeof(params));
  std::memset(&api, 0, sizeof(api));
  params.size = sizeof(params);
  params.interface = &api;
  api.size = sizeof(api);
  init(&params);
  EXPECT(params.device_type != nullptr);
  BlasAxpby();

  // As in Paddle: rank 0 makes the id, every rank receives it (here: through fork).
  size_t id_size = 0;
  EXPECT(api.xccl_get_unique_id_size(&id_size) == C_SUCCESS);
  std::vector<char> id(id_size);
  C_CCLRootId root{id_size, id.data()};
  EXPECT(api.xccl_get_unique_id(&root) == C_SUCCESS);

  std::vector<pid_t> children;
  for (int rank = 0; rank < nranks; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) {
      g_rank = rank;
      C_CCLComm comm = nullptr;
      EXPECT(api.xccl_comm_init_rank(nranks, &root, rank, &comm) == C_SUCCESS);
      if (scenario == "collectives") Collectives(comm, nranks, id.data());
      if (scenario == "timeout") Timeout(comm);
      if (scenario == "dead_peer") DeadPeer(comm);
      if (scenario == "early_exit") EarlyExit(comm);
      EXPECT(api.xccl_destroy_comm(comm) == C_SUCCESS);
      std::fflush(stdout);
      _exit(0);
    }
    children.push_back(pid);
  }
  int failed = 0;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  // Segment names start with <type>_xccl_<pid of the process that made the id>_.
  const std::string prefix =
      std::string(params.device_type) + "_xccl_" + std::to_string(getpid()) + "_";
  const int leftovers = LeftoverSegments(prefix);
  std::printf("%s: %d of %d ranks failed, %d shared-memory segments left\n", scenario.c_str(),
              failed, nranks, leftovers);
  return failed == 0 && leftovers == 0 ? 0 : 1;
}
