// The Python module norm_ext._simt: the SIMT backend, which runs the CUDA kernels of csrc/cuda on CPU
// fibers (see runtime.h). While enabled, the norm_ext ops on CPU tensors dispatch to these kernels
// instead of the CPU kernels: a library of CPU-key implementations is registered over the CPU
// backend's, and dropping it restores them. Everything else here is a non-op helper: the schedule,
// the launch log and the checkers' self-tests.

#include "simt/no_checks_begin.h"

#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "simt/ops.h"
#include "simt/runtime.h"

namespace norm_ext::simt {
std::vector<std::string> selftest_names();
void run_selftest(const std::string& name);
std::vector<long long> probe_shuffle(int mode, unsigned mask, int arg, int width);
std::vector<long long> probe_indices(const std::array<int64_t, 3>& grid, const std::array<int64_t, 3>& block);
std::vector<long long> probe_cluster(int64_t blocks, int64_t cluster);
std::vector<long long> probe_schedule(int64_t threads);
void probe_barriers(int64_t threads, int count);
}  // namespace norm_ext::simt

namespace {

namespace simt = norm_ext::simt;

std::unique_ptr<torch::Library> g_library;

// Registering over the CPU kernels makes the dispatcher warn that a kernel is overridden, which is
// the point here.
class SilentWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning&) override {}
};

template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* enable(PyObject*, PyObject*) {
  return guarded([] {
    if (!g_library) {
      SilentWarnings silent;
      const c10::WarningUtils::WarningHandlerGuard guard(&silent);
      auto lib =
          std::make_unique<torch::Library>(torch::Library::IMPL, "norm_ext", c10::DispatchKey::CPU, __FILE__, __LINE__);
      simt::register_row_norm(*lib);
      simt::register_batch_norm(*lib);
      simt::register_group_norm(*lib);
      simt::register_power_norm(*lib);
      simt::register_weight_norm(*lib);
      g_library = std::move(lib);
    }
    Py_RETURN_NONE;
  });
}

PyObject* disable(PyObject*, PyObject*) {
  return guarded([] {
    g_library.reset();
    Py_RETURN_NONE;
  });
}

PyObject* enabled(PyObject*, PyObject*) {
  return PyBool_FromLong(g_library != nullptr);
}

PyObject* set_schedule(PyObject*, PyObject* args) {
  const char* name = nullptr;
  unsigned long long seed = 0;
  if (!PyArg_ParseTuple(args, "sK", &name, &seed)) return nullptr;
  return guarded([&] {
    const std::string s(name);
    TORCH_CHECK(s == "forward" || s == "reverse" || s == "random",
                "schedule must be 'forward', 'reverse' or 'random', got '", s, "'");
    simt::set_schedule(s == "forward"   ? simt::Schedule::kForward
                       : s == "reverse" ? simt::Schedule::kReverse
                                        : simt::Schedule::kRandom,
                       seed);
    Py_RETURN_NONE;
  });
}

PyObject* get_schedule(PyObject*, PyObject*) {
  const simt::Schedule s = simt::schedule();
  const char* name = s == simt::Schedule::kForward ? "forward" : s == simt::Schedule::kReverse ? "reverse" : "random";
  return Py_BuildValue("(sK)", name, static_cast<unsigned long long>(simt::schedule_seed()));
}

PyObject* flavour(PyObject*, PyObject*) {
  return PyUnicode_FromString(simt::flavour());
}

PyObject* set_launch_log(PyObject*, PyObject* arg) {
  simt::set_launch_log(PyObject_IsTrue(arg) == 1);
  Py_RETURN_NONE;
}

// [(kernel, (grid x, y, z), (block x, y, z), cluster, dynamic smem, static smem, threads run,
//   (threads working, sectors, ideal sectors, bytes, busiest block's bytes) or -1 each)]
PyObject* take_launch_log(PyObject*, PyObject*) {
  const std::vector<simt::LaunchRecord> log = simt::take_launch_log();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(log.size()));
  for (std::size_t i = 0; i < log.size(); ++i) {
    const simt::LaunchRecord& r = log[i];
    PyList_SET_ITEM(
        list, static_cast<Py_ssize_t>(i),
        Py_BuildValue("(s(LLL)(LLL)LLLL(LLLLL))", r.kernel.c_str(), r.shape.grid[0], r.shape.grid[1], r.shape.grid[2],
                      r.shape.block[0], r.shape.block[1], r.shape.block[2], r.shape.cluster, r.shape.dynamic_smem,
                      r.static_smem, r.threads_run, r.access.threads_working, r.access.sectors, r.access.ideal_sectors,
                      r.access.bytes, r.access.busiest_block_bytes));
  }
  return list;
}

PyObject* traffic_start(PyObject*, PyObject*) {
  return guarded([] {
    simt::traffic_start();
    Py_RETURN_NONE;
  });
}

PyObject* traffic_stop(PyObject*, PyObject*) {
  simt::traffic_stop();
  Py_RETURN_NONE;
}

PyObject* traffic_tuple(const simt::TrafficCount& c) {
  return Py_BuildValue("(KKKKKK)", static_cast<unsigned long long>(c.read), static_cast<unsigned long long>(c.written),
                       static_cast<unsigned long long>(c.distinct_read),
                       static_cast<unsigned long long>(c.distinct_written), static_cast<unsigned long long>(c.reread),
                       static_cast<unsigned long long>(c.rewritten));
}

PyObject* traffic_of(PyObject*, PyObject* args) {
  unsigned long long begin = 0, bytes = 0;
  if (!PyArg_ParseTuple(args, "KK", &begin, &bytes)) return nullptr;
  return guarded([&] { return traffic_tuple(simt::traffic_of(begin, bytes)); });
}

PyObject* traffic_total(PyObject*, PyObject*) {
  return guarded([] { return traffic_tuple(simt::traffic_total()); });
}

PyObject* selftest_names(PyObject*, PyObject*) {
  const std::vector<std::string> names = simt::selftest_names();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(names.size()));
  for (std::size_t i = 0; i < names.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyUnicode_FromString(names[i].c_str()));
  }
  return list;
}

PyObject* run_selftest(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  return guarded([&] {
    simt::run_selftest(name);
    Py_RETURN_NONE;
  });
}

PyObject* to_list(const std::vector<long long>& values) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyLong_FromLongLong(values[i]));
  }
  return list;
}

PyObject* probe_shuffle(PyObject*, PyObject* args) {
  int mode = 0, arg = 0, width = 32;
  unsigned int mask = 0;
  if (!PyArg_ParseTuple(args, "iIii", &mode, &mask, &arg, &width)) return nullptr;
  return guarded([&] { return to_list(simt::probe_shuffle(mode, mask, arg, width)); });
}

PyObject* probe_indices(PyObject*, PyObject* args) {
  long long g[3], b[3];
  if (!PyArg_ParseTuple(args, "(LLL)(LLL)", &g[0], &g[1], &g[2], &b[0], &b[1], &b[2])) return nullptr;
  return guarded([&] { return to_list(simt::probe_indices({g[0], g[1], g[2]}, {b[0], b[1], b[2]})); });
}

PyObject* probe_cluster(PyObject*, PyObject* args) {
  long long blocks = 0, cluster = 0;
  if (!PyArg_ParseTuple(args, "LL", &blocks, &cluster)) return nullptr;
  return guarded([&] { return to_list(simt::probe_cluster(blocks, cluster)); });
}

PyObject* probe_schedule(PyObject*, PyObject* args) {
  long long threads = 0;
  if (!PyArg_ParseTuple(args, "L", &threads)) return nullptr;
  return guarded([&] { return to_list(simt::probe_schedule(threads)); });
}

PyObject* probe_barriers(PyObject*, PyObject* args) {
  long long threads = 0;
  int count = 0;
  if (!PyArg_ParseTuple(args, "Li", &threads, &count)) return nullptr;
  return guarded([&] {
    simt::probe_barriers(threads, count);
    Py_RETURN_NONE;
  });
}

PyMethodDef methods[] = {
    {"enable", enable, METH_NOARGS, "Serve the norm_ext ops on CPU tensors with the SIMT backend."},
    {"disable", disable, METH_NOARGS, "Restore the CPU kernels."},
    {"enabled", enabled, METH_NOARGS, "Whether the SIMT backend serves the ops."},
    {"set_schedule", set_schedule, METH_VARARGS, "set_schedule(name, seed): 'forward', 'reverse' or 'random'."},
    {"schedule", get_schedule, METH_NOARGS, "The schedule and seed: (name, seed)."},
    {"flavour", flavour, METH_NOARGS, "'plain', or 'checked' (race, uninitialized-read and ASan checks)."},
    {"set_launch_log", set_launch_log, METH_O, "Start (True) or stop (False) recording launches."},
    {"take_launch_log", take_launch_log, METH_NOARGS, "The launches recorded since the last call."},
    {"traffic_start", traffic_start, METH_NOARGS, "Count the kernels' global-memory accesses (checked build)."},
    {"traffic_stop", traffic_stop, METH_NOARGS, "Stop counting; the counts stay until the next start."},
    {"traffic_of", traffic_of, METH_VARARGS, "traffic_of(address, bytes): the counts of that range."},
    {"traffic_total", traffic_total, METH_NOARGS, "The counts of all global memory."},
    {"selftest_names", selftest_names, METH_NOARGS, "Names of the checkers' self-test kernels."},
    {"run_selftest", run_selftest, METH_VARARGS, "Run one self-test kernel; raises what the checkers report."},
    {"probe_shuffle", probe_shuffle, METH_VARARGS, "probe_shuffle(mode, mask, arg, width): 32 lanes' results."},
    {"probe_indices", probe_indices, METH_VARARGS, "probe_indices(grid, block): each thread's 6 indices."},
    {"probe_cluster", probe_cluster, METH_VARARGS, "probe_cluster(blocks, cluster): each block's view of its peers."},
    {"probe_schedule", probe_schedule, METH_VARARGS, "probe_schedule(threads): the last writer, as each saw it."},
    {"probe_barriers", probe_barriers, METH_VARARGS, "probe_barriers(threads, count): count block barriers."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMODINIT_FUNC PyInit__simt(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_simt", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}

#include "simt/no_checks_end.h"
