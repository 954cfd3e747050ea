// The memory checker of the checked SIMT build.
//
// The kernels' translation units are compiled with AddressSanitizer's instrumentation in callback
// mode under the prefix __norm_ext_simt_ (see setup.py): every load, store and memcpy of kernel code
// calls one of the functions below before it happens. For an access by an emulated CUDA thread they
//   - on shared memory: report out-of-bounds accesses (naming the array), accesses to the arrays of a
//     block that has exited, reads of bytes never written, and races: two threads touching a byte
//     between the same two barriers, at least one of them writing;
//   - on global memory: report what AddressSanitizer knows is out of bounds or freed, and races: a
//     byte written by one thread of the launch and written or read by another with no barrier
//     between (a write-write race on an output element, or a read of another thread's output);
// and otherwise hand the access to AddressSanitizer's own check. A report ends the launch before the
// access is made. In the plain build this file only provides the no-op hooks of internal.h.

#include "simt/no_checks_begin.h"

#include "simt/internal.h"

#if defined(NORM_EXT_SIMT_CHECKED)

#include <sanitizer/asan_interface.h>

#include <algorithm>
#include <cstdio>
#include <unordered_map>

extern "C" {
void __asan_loadN(std::uintptr_t addr, std::uintptr_t size);
void __asan_storeN(std::uintptr_t addr, std::uintptr_t size);
void* __asan_memcpy(void* dst, const void* src, std::uintptr_t size);
void* __asan_memmove(void* dst, const void* src, std::uintptr_t size);
void* __asan_memset(void* dst, int c, std::uintptr_t size);
}

namespace norm_ext::simt {
namespace {

// A shared array and the block that owns it, sorted by address for the lookup.
struct ArrayRef {
  char* begin;
  char* end;
  SharedArray* array;
  BlockState* owner;
};

// The last writer of one byte of global memory in this launch: the writer's grid-wide thread index
// plus one, and the barrier epochs of its block (low 16 bits) and cluster (high 16 bits) then.
struct GlobalCell {
  std::uint32_t writer;
  std::uint32_t epochs;
};
constexpr std::uintptr_t kPageBits = 12;
constexpr std::uintptr_t kPageBytes = std::uintptr_t{1} << kPageBits;
// How far past a shared array an access is still reported as that array's overrun.
constexpr std::uintptr_t kNearArray = 64;

// The first two readers of one byte of global memory in this launch (grid-wide thread indices plus
// one; 0: none), `second` kBroadcast once a third thread read it. A byte that at most two threads
// read is their work (GroupNorm's backward reads each value once for the group sums and once for the
// channel sums); one that more read is a broadcast value, nobody's.
struct Readers {
  std::uint32_t first;
  std::uint32_t second;
};
constexpr std::uint32_t kBroadcast = 0xffffffffu;

// A lane's visit to an instruction that accesses global memory: the lane (grid-wide thread index)
// and the instruction's address. Its count numbers the lane's visits, and the k-th visits of a warp's
// lanes form one memory request, as the lanes of a converged warp issue it together.
struct LaneSite {
  std::uint64_t thread;
  std::uintptr_t pc;
  bool operator==(const LaneSite&) const = default;
};
struct Request {
  std::uint64_t warp;
  std::uintptr_t pc;
  std::uint32_t visit;
  bool operator==(const Request&) const = default;
};
struct KeyHash {
  static std::size_t mix(std::uint64_t a, std::uint64_t b) {
    return static_cast<std::size_t>((a * 0x9e3779b97f4a7c15ull) ^ (b + 0x632be59bd9b4e019ull + (a << 6)));
  }
  std::size_t operator()(const LaneSite& k) const { return mix(k.thread, k.pc); }
  std::size_t operator()(const Request& k) const { return mix(k.warp, k.pc * 31 + k.visit); }
};
struct Span {
  std::uintptr_t begin;
  std::uintptr_t end;
};
constexpr std::uintptr_t kSectorBits = 5;
// A lane's access not yet filed as a request: the host compiler may split one 128-bit access of the
// device code into narrower ones, which are put back together while they continue one another
// within one aligned 16-byte segment.
struct PendingAccess {
  Span span;
  std::uintptr_t pc;
  std::uint64_t warp;
  bool write;
};
constexpr std::uintptr_t kWidestAccessBits = 4;

struct CheckerState {
  std::vector<ArrayRef> arrays;  // of the running cluster
  std::unordered_map<std::uintptr_t, std::unique_ptr<GlobalCell[]>> pages;
  // The page of the last global access, and its cells (null: no byte of it written).
  std::uintptr_t last_page = ~std::uintptr_t{0};
  GlobalCell* last_cells = nullptr;
  std::unordered_map<std::uintptr_t, std::unique_ptr<Readers[]>> read_pages;
  std::uintptr_t last_read_page = ~std::uintptr_t{0};
  Readers* last_readers = nullptr;
  std::unordered_map<std::uint64_t, PendingAccess> pending;  // by grid-wide thread index
  std::unordered_map<LaneSite, std::uint32_t, KeyHash> visits;
  std::unordered_map<Request, std::vector<Span>, KeyHash> requests;
  std::vector<std::int64_t> block_bytes;  // by grid-linear block index
};
// A pointer, so that reading it needs no thread-local initialization guard.
NORM_EXT_SIMT_TLS CheckerState* tls_state = nullptr;

// Per-byte access counts of one page of global memory, saturating.
struct TrafficPage {
  std::uint16_t reads[kPageBytes];
  std::uint16_t writes[kPageBytes];
};
struct Traffic {
  bool counting = false;
  std::unordered_map<std::uintptr_t, std::unique_ptr<TrafficPage>> pages;
  std::uintptr_t last_page = ~std::uintptr_t{0};
  TrafficPage* last = nullptr;
};
// Process-wide rather than per thread: an op's launches may run on another thread than the caller
// (autograd's), one at a time. A pointer for the same reason as tls_state.
Traffic* g_traffic = nullptr;

Traffic& traffic() {
  if (g_traffic == nullptr) g_traffic = new Traffic();
  return *g_traffic;
}

void count_traffic(std::uintptr_t addr, std::size_t size, bool write) {
  Traffic& tr = traffic();
  for (std::uintptr_t a = addr; a < addr + size; ++a) {
    const std::uintptr_t page = a >> kPageBits;
    if (page != tr.last_page) {
      std::unique_ptr<TrafficPage>& cells = tr.pages[page];
      if (!cells) cells = std::make_unique<TrafficPage>();
      tr.last_page = page;
      tr.last = cells.get();
    }
    std::uint16_t& count = (write ? tr.last->writes : tr.last->reads)[a & (kPageBytes - 1)];
    if (count != UINT16_MAX) ++count;
  }
}

void add_counts(TrafficCount& c, const TrafficPage& page, std::uintptr_t first, std::uintptr_t last) {
  for (std::uintptr_t i = first; i < last; ++i) {
    c.read += page.reads[i];
    c.written += page.writes[i];
    c.distinct_read += page.reads[i] > 0;
    c.distinct_written += page.writes[i] > 0;
    c.reread += page.reads[i] > 1;
    c.rewritten += page.writes[i] > 1;
  }
}

CheckerState& state() {
  if (tls_state == nullptr) tls_state = new CheckerState();
  return *tls_state;
}

// AddressSanitizer's shadow mapping: one shadow byte per 8 bytes, 0 when all 8 are addressable,
// k in 1..7 when the first k are. Plain zero-initialized globals, read lazily: the checker runs from
// the library's first static constructor on, before any dynamic initialization of this file.
std::size_t g_shadow_scale = 0;
std::size_t g_shadow_offset = 0;
bool g_shadow_known = false;

// Whether AddressSanitizer marks any byte of [addr, addr + size) as unaddressable: the shadow bytes
// read directly, and its own (slower) query only where one is not 0.
NORM_EXT_SIMT_UNCHECKED bool poisoned(std::uintptr_t addr, std::size_t size) {
  if (size == 0) return false;
  if (!g_shadow_known) {
    __asan_get_shadow_mapping(&g_shadow_scale, &g_shadow_offset);
    g_shadow_known = true;
  }
  const auto* shadow = reinterpret_cast<const std::int8_t*>((addr >> g_shadow_scale) + g_shadow_offset);
  const auto* last = reinterpret_cast<const std::int8_t*>(((addr + size - 1) >> g_shadow_scale) + g_shadow_offset);
  for (; shadow <= last; ++shadow) {
    if (*shadow != 0) return __asan_region_is_poisoned(reinterpret_cast<void*>(addr), size) != nullptr;
  }
  return false;
}

std::string hex(std::uintptr_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

const char* verb(bool write) {
  return write ? "writes" : "reads";
}

const ThreadState& cluster_thread(const ClusterState& c, std::uint32_t index) {
  const auto per_block = static_cast<std::uint32_t>(c.blocks.front()->threads.size());
  return c.blocks[index / per_block]->threads[index % per_block];
}

std::string access_text(const ThreadState& t, std::uintptr_t addr, std::size_t size, bool write) {
  return describe(t) + " " + verb(write) + " " + std::to_string(size) + " bytes at " + hex(addr);
}

void check_shared(ThreadState& t, const ArrayRef& ref, std::uintptr_t addr, std::size_t size, bool write) {
  SharedArray& a = *ref.array;
  const auto offset = static_cast<std::int64_t>(addr - reinterpret_cast<std::uintptr_t>(a.data));
  const auto what = [&] {
    return access_text(t, addr, size, write) + " of shared array `" + a.name + "` (offset " + std::to_string(offset) +
           " of " + std::to_string(a.bytes) + " bytes" +
           (ref.owner != t.block ? ", of block " + describe(*ref.owner) : std::string()) + ")";
  };
  if (offset < 0 || offset + static_cast<std::int64_t>(size) > static_cast<std::int64_t>(a.bytes)) {
    fail("out-of-bounds shared-memory access: " + what());
  }
  if (ref.owner->finished) {
    fail("access to the shared memory of a block that has exited (a cluster.sync() before exit is missing): " + what());
  }
  const BlockState& mine = *t.block;
  const ClusterState& c = *mine.cluster;
  const std::uint32_t me = t.cluster_index + 1;
  const auto rank = static_cast<std::uint16_t>(mine.rank);
  const auto be = static_cast<std::uint16_t>(mine.epoch);
  const auto ce = static_cast<std::uint16_t>(c.epoch);
  const auto ordered = [&](std::uint32_t who, std::uint16_t block, std::uint16_t who_be, std::uint16_t who_ce) {
    return who == me || who_ce != ce || (block == rank && who_be != be);
  };
  for (std::size_t i = static_cast<std::size_t>(offset); i < static_cast<std::size_t>(offset) + size; ++i) {
    ShadowCell& s = a.shadow[i];
    if (!write && s.writer == 0) fail("read of uninitialized shared memory: " + what());
    if (s.writer != 0 && !ordered(s.writer, s.writer_block, s.writer_block_epoch, s.writer_cluster_epoch)) {
      fail("shared-memory race: " + what() + ", which " + describe(cluster_thread(c, s.writer - 1)) +
           " wrote with no barrier between");
    }
    if (write) {
      const bool readers_ordered =
          s.reader == 0 ||
          (s.reader == kManyReaders
               ? (s.reader_cluster_epoch != ce || (s.reader_block == rank && s.reader_block_epoch != be))
               : ordered(s.reader, s.reader_block, s.reader_block_epoch, s.reader_cluster_epoch));
      if (!readers_ordered) {
        fail("shared-memory race: " + what() + ", which " +
             (s.reader == kManyReaders ? std::string("other threads") : describe(cluster_thread(c, s.reader - 1))) +
             " read with no barrier between");
      }
      s = ShadowCell{me, 0, be, ce, 0, 0, rank, 0};
    } else if (s.reader == 0 || (s.reader != kManyReaders &&
                                 ordered(s.reader, s.reader_block, s.reader_block_epoch, s.reader_cluster_epoch))) {
      s.reader = me;
      s.reader_block = rank;
      s.reader_block_epoch = be;
      s.reader_cluster_epoch = ce;
    } else if (s.reader != me) {
      const bool same_block = s.reader != kManyReaders ? s.reader_block == rank : s.reader_block == rank;
      s.reader = kManyReaders;
      s.reader_block = same_block ? rank : kMixedBlocks;
      s.reader_block_epoch = be;
      s.reader_cluster_epoch = ce;
    }
  }
}

// The cells of a page of global memory (null when nothing was written to it and `create` is false).
GlobalCell* page_cells(std::uintptr_t page, bool create) {
  CheckerState& st = state();
  if (page == st.last_page && (st.last_cells != nullptr || !create)) return st.last_cells;
  const auto it = st.pages.find(page);
  GlobalCell* cells = it != st.pages.end() ? it->second.get() : nullptr;
  if (cells == nullptr && create) {
    auto& slot = st.pages[page];
    slot = std::make_unique<GlobalCell[]>(kPageBytes);
    cells = slot.get();
  }
  st.last_page = page;
  st.last_cells = cells;
  return cells;
}

void note_readers(std::uintptr_t addr, std::size_t size, std::uint32_t me) {
  CheckerState& st = state();
  for (std::uintptr_t a = addr; a < addr + size; ++a) {
    const std::uintptr_t page = a >> kPageBits;
    if (page != st.last_read_page) {
      std::unique_ptr<Readers[]>& cells = st.read_pages[page];
      if (!cells) cells = std::make_unique<Readers[]>(kPageBytes);
      st.last_read_page = page;
      st.last_readers = cells.get();
    }
    Readers& r = st.last_readers[a & (kPageBytes - 1)];
    if (r.first == 0) {
      r.first = me;
    } else if (r.first != me && r.second != me) {
      r.second = r.second == 0 ? me : kBroadcast;
    }
  }
}

// A byte another thread of the launch wrote: fine if a barrier both threads passed lies between.
void check_global_order(const ThreadState& t, const GlobalCell& cell, std::uint32_t epochs, std::uintptr_t addr,
                        std::size_t size, bool write) {
  const Launch& l = *tls_launch;
  const BlockState& b = *t.block;
  const std::uint64_t other = cell.writer - 1;
  const std::uint64_t other_block = other / l.threads_per_block;
  const std::uint64_t block_x = b.linear % l.grid.x;
  const std::uint64_t other_x = other_block % l.grid.x;
  const bool same_block = other_block == b.linear;
  const bool same_cluster = b.linear - block_x % l.shape.cluster == other_block - other_x % l.shape.cluster;
  const bool ordered = (same_block && (cell.epochs & 0xffffu) != (epochs & 0xffffu)) ||
                       (same_cluster && (cell.epochs >> 16) != (epochs >> 16));
  if (ordered) return;
  const std::uint64_t other_yz = other_block / l.grid.x;
  const std::uint64_t other_t = other % l.threads_per_block;
  const auto triple = [](std::uint64_t x, std::uint64_t y, std::uint64_t z) {
    return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
  };
  fail("global-memory race: " + access_text(t, addr, size, write) + ", which block " +
       triple(other_x, other_yz % l.grid.y, other_yz / l.grid.y) + " thread " +
       triple(other_t % l.block.x, other_t / l.block.x % l.block.y, other_t / (l.block.x * l.block.y)) +
       " wrote in this launch with no barrier between" + (write ? " (two threads write the same element)" : ""));
}

void check_global(ThreadState& t, std::uintptr_t addr, std::size_t size, bool write) {
  if (poisoned(addr, size)) {
    const void* bad = __asan_region_is_poisoned(reinterpret_cast<void*>(addr), size);
    char name[128] = "";
    void* region = nullptr;
    std::size_t region_size = 0;
    const char* kind = __asan_locate_address(const_cast<void*>(bad), name, sizeof(name), &region, &region_size);
    std::string detail = std::string(kind != nullptr ? kind : "unknown") + " memory";
    if (region != nullptr) {
      const auto begin = reinterpret_cast<std::uintptr_t>(region);
      const auto b = reinterpret_cast<std::uintptr_t>(bad);
      detail += b >= begin + region_size ? ", " + std::to_string(b - begin - region_size) + " bytes after the " +
                                               std::to_string(region_size) + "-byte region at " + hex(begin)
                : b < begin
                    ? ", " + std::to_string(begin - b) + " bytes before the " + std::to_string(region_size) +
                          "-byte region at " + hex(begin)
                    : " (freed or poisoned) in the " + std::to_string(region_size) + "-byte region at " + hex(begin);
    }
    fail("out-of-bounds global-memory access: " + access_text(t, addr, size, write) + ": " + detail);
  }
  const Launch& l = *tls_launch;
  const BlockState& b = *t.block;
  const std::uint64_t gid = b.linear * l.threads_per_block + t.linear;
  const std::uint32_t me = static_cast<std::uint32_t>(gid) + 1;
  const std::uint32_t epochs =
      (static_cast<std::uint32_t>(b.cluster->epoch) << 16) | (static_cast<std::uint32_t>(b.epoch) & 0xffffu);
  for (std::uintptr_t a = addr; a < addr + size;) {
    const std::uintptr_t page = a >> kPageBits;
    const std::uintptr_t end = std::min(addr + size, (page + 1) << kPageBits);
    GlobalCell* cells = page_cells(page, write);
    if (cells == nullptr) {  // a read of a page nothing was written to in this launch
      a = end;
      continue;
    }
    for (; a < end; ++a) {
      GlobalCell& cell = cells[a & (kPageBytes - 1)];
      if (cell.writer != 0 && cell.writer != me) check_global_order(t, cell, epochs, addr, size, write);
      if (write) cell = {me, epochs};
    }
  }
  if (!write) note_readers(addr, size, me);
}

void file_request(CheckerState& st, std::uint64_t thread, const PendingAccess& a) {
  const std::uint32_t visit = st.visits[{thread, a.pc}]++;
  st.requests[{a.warp, a.pc, visit}].push_back(a.span);
}

void note_request(const ThreadState& t, std::uintptr_t addr, std::size_t size, bool write, std::uintptr_t pc) {
  CheckerState& st = state();
  const Launch& l = *tls_launch;
  const BlockState& b = *t.block;
  const std::uint64_t thread = b.linear * l.threads_per_block + t.linear;
  const std::uint64_t warp = b.linear * ((l.threads_per_block + 31) / 32) + t.linear / 32;
  if (b.linear < st.block_bytes.size()) st.block_bytes[b.linear] += static_cast<std::int64_t>(size);
  const auto [it, first] = st.pending.try_emplace(thread, PendingAccess{{addr, addr + size}, pc, warp, write});
  if (first) return;
  PendingAccess& p = it->second;
  if (p.write == write && p.span.end == addr &&
      p.span.begin >> kWidestAccessBits == (addr + size - 1) >> kWidestAccessBits) {
    p.span.end = addr + size;
    return;
  }
  file_request(st, thread, p);
  p = {{addr, addr + size}, pc, warp, write};
}

// The entry points below are not instrumented themselves (they would call back into the checker);
// what they call is, and runs with tls_in_runtime set, which sends those nested calls straight to
// AddressSanitizer.
NORM_EXT_SIMT_UNCHECKED void asan_check(std::uintptr_t addr, std::size_t size, bool write) {
  if (!poisoned(addr, size)) return;
  // Reports and aborts, as AddressSanitizer's own check would.
  if (write) {
    __asan_storeN(addr, size);
  } else {
    __asan_loadN(addr, size);
  }
}

}  // namespace

NORM_EXT_SIMT_UNCHECKED void checked_access(std::uintptr_t addr, std::size_t size, bool write, std::uintptr_t pc) {
  ThreadState* t = tls_thread;
  if (t == nullptr || tls_in_runtime || size == 0) {
    asan_check(addr, size, write);
    return;
  }
  const auto stack = reinterpret_cast<std::uintptr_t>(t->ctx.stack_bottom);
  const auto params = reinterpret_cast<std::uintptr_t>(tls_launch->body_ctx);
  if ((addr >= stack && addr < stack + t->ctx.stack_size) ||
      (addr >= params && addr < params + tls_launch->body_ctx_bytes)) {
    asan_check(addr, size, write);
    return;
  }
  // The checker's own instrumented code below must not come back here (set directly: a RuntimeScope's
  // out-of-line constructor would itself be instrumented).
  tls_in_runtime = true;
  const std::vector<ArrayRef>& arrays = state().arrays;
  const auto it = std::upper_bound(arrays.begin(), arrays.end(), addr, [](std::uintptr_t a, const ArrayRef& r) {
    return a < reinterpret_cast<std::uintptr_t>(r.begin);
  });
  const ArrayRef* near = nullptr;
  if (it != arrays.begin()) {
    const ArrayRef& r = *(it - 1);
    if (addr < reinterpret_cast<std::uintptr_t>(r.end) + kNearArray) near = &r;
  }
  if (near == nullptr && it != arrays.end() && addr + size + kNearArray > reinterpret_cast<std::uintptr_t>(it->begin)) {
    near = &*it;
  }
  if (near != nullptr) {
    check_shared(*t, *near, addr, size, write);
  } else {
    check_global(*t, addr, size, write);
    if (tls_launch->logged) note_request(*t, addr, size, write, pc);
    if (g_traffic != nullptr && g_traffic->counting) count_traffic(addr, size, write);
  }
  tls_in_runtime = false;
}

void checker_launch_begin(Launch& l) {
  checker_launch_end();
  state().block_bytes.assign(static_cast<std::size_t>(l.grid.x) * l.grid.y * l.grid.z, 0);
}

namespace {

std::int64_t threads_working(const Launch& l) {
  const CheckerState& st = state();
  std::vector<bool> working(static_cast<std::size_t>(l.grid.x) * l.grid.y * l.grid.z * l.threads_per_block);
  for (const auto& [page, cells] : st.pages) {
    for (std::uintptr_t i = 0; i < kPageBytes; ++i) {
      if (cells[i].writer != 0) working[cells[i].writer - 1] = true;
    }
  }
  for (const auto& [page, readers] : st.read_pages) {
    for (std::uintptr_t i = 0; i < kPageBytes; ++i) {
      const Readers& r = readers[i];
      if (r.first == 0 || r.second == kBroadcast) continue;
      working[r.first - 1] = true;
      if (r.second != 0) working[r.second - 1] = true;
    }
  }
  return std::count(working.begin(), working.end(), true);
}

// Sectors a request touches, and the fewest its distinct bytes could fill.
void count_sectors(std::vector<Span>& spans, std::int64_t& sectors, std::int64_t& ideal) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::uintptr_t covered = 0;
  std::uintptr_t next_sector = 0;  // the first sector not yet counted
  std::int64_t distinct = 0;
  for (const Span& s : spans) {
    const std::uintptr_t from = std::max(s.begin, covered);
    if (s.end > from) distinct += static_cast<std::int64_t>(s.end - from);
    covered = std::max(covered, s.end);
    const std::uintptr_t first = std::max(s.begin >> kSectorBits, next_sector);
    const std::uintptr_t last = (s.end - 1) >> kSectorBits;
    if (last >= first) {
      sectors += static_cast<std::int64_t>(last - first + 1);
      next_sector = last + 1;
    }
  }
  ideal += (distinct + (std::int64_t{1} << kSectorBits) - 1) >> kSectorBits;
}

}  // namespace

AccessStats checker_access_stats(const Launch& l) {
  CheckerState& st = state();
  AccessStats a;
  a.threads_working = threads_working(l);
  for (const auto& [thread, access] : st.pending) file_request(st, thread, access);
  st.pending.clear();
  a.sectors = 0;
  a.ideal_sectors = 0;
  for (auto& [request, spans] : st.requests) count_sectors(spans, a.sectors, a.ideal_sectors);
  a.bytes = 0;
  a.busiest_block_bytes = 0;
  for (const std::int64_t b : st.block_bytes) {
    a.bytes += b;
    a.busiest_block_bytes = std::max(a.busiest_block_bytes, b);
  }
  return a;
}

void checker_launch_end() {
  CheckerState& st = state();
  st.pages.clear();
  st.arrays.clear();
  st.last_page = ~std::uintptr_t{0};
  st.last_cells = nullptr;
  st.read_pages.clear();
  st.last_read_page = ~std::uintptr_t{0};
  st.last_readers = nullptr;
  st.pending.clear();
  st.visits.clear();
  st.requests.clear();
  st.block_bytes.clear();
}

void traffic_start() {
  Traffic& tr = traffic();
  tr.pages.clear();
  tr.last_page = ~std::uintptr_t{0};
  tr.last = nullptr;
  tr.counting = true;
}

void traffic_stop() {
  traffic().counting = false;
}

TrafficCount traffic_of(std::uintptr_t begin, std::uint64_t bytes) {
  TrafficCount c;
  const Traffic& tr = traffic();
  for (std::uintptr_t a = begin; a < begin + bytes;) {
    const std::uintptr_t page = a >> kPageBits;
    const std::uintptr_t end = std::min<std::uintptr_t>(begin + bytes, (page + 1) << kPageBits);
    const auto it = tr.pages.find(page);
    if (it != tr.pages.end()) add_counts(c, *it->second, a & (kPageBytes - 1), ((end - 1) & (kPageBytes - 1)) + 1);
    a = end;
  }
  return c;
}

TrafficCount traffic_total() {
  TrafficCount c;
  for (const auto& [page, cells] : traffic().pages) add_counts(c, *cells, 0, kPageBytes);
  return c;
}

void checker_cluster_begin(ClusterState& cluster) {
  auto& arrays = state().arrays;
  arrays.clear();
  for (auto& b : cluster.blocks) {
    arrays.push_back({b->dynamic.data, b->dynamic.data + b->dynamic.bytes, &b->dynamic, b.get()});
    for (SharedArray& a : b->arrays) arrays.push_back({a.data, a.data + a.bytes, &a, b.get()});
  }
  std::sort(arrays.begin(), arrays.end(), [](const ArrayRef& a, const ArrayRef& b) { return a.begin < b.begin; });
}

void checker_array_allocated(SharedArray& array, BlockState& owner) {
  array.shadow = std::make_unique<ShadowCell[]>(array.bytes);
  const Launch* l = tls_launch;
  if (l == nullptr || l->cluster != owner.cluster) return;  // registered when its cluster starts
  auto& arrays = state().arrays;
  const ArrayRef ref{array.data, array.data + array.bytes, &array, &owner};
  arrays.insert(std::upper_bound(arrays.begin(), arrays.end(), ref,
                                 [](const ArrayRef& a, const ArrayRef& b) { return a.begin < b.begin; }),
                ref);
}

}  // namespace norm_ext::simt

// The callbacks AddressSanitizer's instrumentation calls under -asan-memory-access-callback-prefix.
// The instruction after the call: one per access site of the kernels' code (a copy's store is
// told from its load by adding 1).
#define NORM_EXT_SIMT_CALLER reinterpret_cast<std::uintptr_t>(__builtin_return_address(0))
#define NORM_EXT_SIMT_ACCESS_HOOKS(n)                                     \
  extern "C" void __norm_ext_simt_load##n(std::uintptr_t addr) {          \
    norm_ext::simt::checked_access(addr, n, false, NORM_EXT_SIMT_CALLER); \
  }                                                                       \
  extern "C" void __norm_ext_simt_store##n(std::uintptr_t addr) {         \
    norm_ext::simt::checked_access(addr, n, true, NORM_EXT_SIMT_CALLER);  \
  }
NORM_EXT_SIMT_ACCESS_HOOKS(1)
NORM_EXT_SIMT_ACCESS_HOOKS(2)
NORM_EXT_SIMT_ACCESS_HOOKS(4)
NORM_EXT_SIMT_ACCESS_HOOKS(8)
NORM_EXT_SIMT_ACCESS_HOOKS(16)

extern "C" NORM_EXT_SIMT_UNCHECKED void __norm_ext_simt_loadN(std::uintptr_t addr, std::uintptr_t size) {
  norm_ext::simt::checked_access(addr, size, false, NORM_EXT_SIMT_CALLER);
}
extern "C" NORM_EXT_SIMT_UNCHECKED void __norm_ext_simt_storeN(std::uintptr_t addr, std::uintptr_t size) {
  norm_ext::simt::checked_access(addr, size, true, NORM_EXT_SIMT_CALLER);
}
extern "C" NORM_EXT_SIMT_UNCHECKED void* __norm_ext_simt_memcpy(void* dst, const void* src, std::uintptr_t size) {
  norm_ext::simt::checked_access(reinterpret_cast<std::uintptr_t>(src), size, false, NORM_EXT_SIMT_CALLER);
  norm_ext::simt::checked_access(reinterpret_cast<std::uintptr_t>(dst), size, true, NORM_EXT_SIMT_CALLER + 1);
  return __asan_memcpy(dst, src, size);
}
extern "C" NORM_EXT_SIMT_UNCHECKED void* __norm_ext_simt_memmove(void* dst, const void* src, std::uintptr_t size) {
  norm_ext::simt::checked_access(reinterpret_cast<std::uintptr_t>(src), size, false, NORM_EXT_SIMT_CALLER);
  norm_ext::simt::checked_access(reinterpret_cast<std::uintptr_t>(dst), size, true, NORM_EXT_SIMT_CALLER + 1);
  return __asan_memmove(dst, src, size);
}
extern "C" NORM_EXT_SIMT_UNCHECKED void* __norm_ext_simt_memset(void* dst, int c, std::uintptr_t size) {
  norm_ext::simt::checked_access(reinterpret_cast<std::uintptr_t>(dst), size, true, NORM_EXT_SIMT_CALLER);
  return __asan_memset(dst, c, size);
}

#else

#include <stdexcept>

namespace norm_ext::simt {
namespace {
[[noreturn]] void no_traffic() {
  throw std::runtime_error("counting global-memory traffic needs the checked SIMT build (NORM_EXT_SIMT=checked)");
}
}  // namespace
void traffic_start() {
  no_traffic();
}
void traffic_stop() {}
TrafficCount traffic_of(std::uintptr_t, std::uint64_t) {
  no_traffic();
}
TrafficCount traffic_total() {
  no_traffic();
}
void checker_launch_begin(Launch&) {}
AccessStats checker_access_stats(const Launch&) {
  return {};
}
void checker_launch_end() {}
void checker_cluster_begin(ClusterState&) {}
void checker_array_allocated(SharedArray&, BlockState&) {}
}  // namespace norm_ext::simt

#endif

#include "simt/no_checks_end.h"
