// The whole native layer of Partita: what JavaScript cannot do by itself.
//
// - syscalls on file descriptors: open, close, ioctl (KVM is driven entirely through ioctls)
// - memory: mmap/munmap and an ArrayBuffer view over a host address (guest RAM, a vCPU's kvm_run page)
// - eventfd (for ioeventfd/irqfd)
// - thread signals: a no-op handler for SIG_KICK so a pthread_kill makes KVM_RUN return EINTR, the calling
//   thread's id, a per-thread periodic tick, and host termination signals turned into a flag plus a kick
// - application-processor vCPU threads: native threads that block in KVM_RUN and hand each exit to
//   JavaScript through a thread-safe function (see README, "Why the exit path is built this way")
//
// Nothing here knows what an exit means; all VMM logic lives in TypeScript. Errors come back as -errno.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/ioctl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>

#define KVM_RUN_IOCTL 0xAE80 // _IO(KVMIO, 0x80); the TypeScript ABI module is the reference, this is checked there

static int sig_kick(void) { return SIGRTMIN + 4; }

static void kick_handler(int sig) { (void)sig; }

// Host termination signals (SIGINT, SIGTERM, SIGHUP, and SIGQUIT: stop with a dump of the vCPUs): recorded, and the thread that registered for them is
// kicked out of KVM_RUN so JavaScript sees the flag at once.
static atomic_int pending_signal;
static pthread_t signal_target;
static _Atomic(uint8_t *) signal_target_immediate_exit;

static void term_handler(int sig) {
  atomic_store(&pending_signal, sig);
  uint8_t *ie = atomic_load(&signal_target_immediate_exit);
  if (ie) *ie = 1;
  pthread_kill(signal_target, sig_kick());
}

#define CHECK(call)                                                                                       \
  do {                                                                                                    \
    if ((call) != napi_ok) return throw_last(env);                                                        \
  } while (0)

static napi_value throw_last(napi_env env) {
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "native error");
  return NULL;
}

static napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static napi_value big(napi_env env, uint64_t v) {
  napi_value r;
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return -1;
  for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
  return (int)argc;
}

// ---- Argument checks ---------------------------------------------------------------------------------------
// Every argument is checked before it reaches a system call or a pointer: a wrong type throws a TypeError, a
// value out of range a RangeError (naming the function and the argument), so a JavaScript mistake is an exception
// and never a crash, a write past a buffer or a call on fd 0. Each reader returns false with the error thrown.

static bool throw_type(napi_env env, const char *fn, const char *arg, const char *expected) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s must be %s", fn, arg, expected);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

static bool throw_range(napi_env env, const char *fn, const char *arg, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "%s: %s %s", fn, arg, what);
  napi_throw_range_error(env, NULL, msg);
  return false;
}

#define ARG(check)           \
  do {                       \
    if (!(check)) return NULL; \
  } while (0)

#define MAX_SAFE_INTEGER 9007199254740991.0

// A whole JavaScript number in [min, max].
static bool arg_int(napi_env env, napi_value v, const char *fn, const char *arg, int64_t min, int64_t max,
                    int64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return throw_type(env, fn, arg, "a number");
  double d;
  napi_get_value_double(env, v, &d);
  if (d != d || d < -MAX_SAFE_INTEGER || d > MAX_SAFE_INTEGER || d != (double)(int64_t)d)
    return throw_range(env, fn, arg, "must be a whole number");
  if (d < (double)min || d > (double)max) return throw_range(env, fn, arg, "is out of range");
  *out = (int64_t)d;
  return true;
}

static bool arg_i32(napi_env env, napi_value v, const char *fn, const char *arg, int32_t *out) {
  int64_t r;
  if (!arg_int(env, v, fn, arg, INT32_MIN, INT32_MAX, &r)) return false;
  *out = (int32_t)r;
  return true;
}

// A non-negative 64-bit quantity (an address, a length, a pthread_t): a bigint, or a safe-integer number.
static bool arg_u64(napi_env env, napi_value v, const char *fn, const char *arg, uint64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return throw_type(env, fn, arg, "a bigint or a number");
  if (t == napi_bigint) {
    bool lossless;
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok || !lossless)
      return throw_range(env, fn, arg, "must be a non-negative 64-bit value");
    return true;
  }
  int64_t r;
  if (t != napi_number) return throw_type(env, fn, arg, "a bigint or a number");
  if (!arg_int(env, v, fn, arg, 0, INT64_MAX, &r)) return false;
  *out = (uint64_t)r;
  return true;
}

// An optional address: undefined, null and 0 mean none.
static bool arg_opt_address(napi_env env, napi_value v, const char *fn, const char *arg, uint64_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_undefined || t == napi_null) {
    *out = 0;
    return true;
  }
  return arg_u64(env, v, fn, arg, out);
}

static bool arg_bool(napi_env env, napi_value v, const char *fn, const char *arg, bool *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean) return throw_type(env, fn, arg, "a boolean");
  napi_get_value_bool(env, v, out);
  return true;
}

static bool arg_function(napi_env env, napi_value v, const char *fn, const char *arg) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_function) return throw_type(env, fn, arg, "a function");
  return true;
}

// A path for open(2): a string of fewer than PATH_MAX bytes with no NUL byte (a NUL would cut it short, so
// "/dev/null\0anything" would open /dev/null).
static bool arg_path(napi_env env, napi_value v, const char *fn, const char *arg, char *out, size_t cap) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) return throw_type(env, fn, arg, "a string");
  size_t len;
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (len >= cap) return throw_range(env, fn, arg, "is too long");
  napi_get_value_string_utf8(env, v, out, cap, &len);
  if (memchr(out, 0, len)) return throw_type(env, fn, arg, "a string without NUL bytes");
  return true;
}

// Pointer to the bytes behind a TypedArray, DataView or ArrayBuffer (NULL for anything else).
static void *bytes_of(napi_env env, napi_value v, size_t *len) {
  bool is;
  void *data = NULL;
  *len = 0;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length, offset;
    napi_value ab;
    napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &offset);
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    *len = length * elem;
    return data;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    size_t length, offset;
    napi_value ab;
    napi_get_dataview_info(env, v, &length, &data, &ab, &offset);
    *len = length;
    return data;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    napi_get_arraybuffer_info(env, v, &data, len);
    return data;
  }
  return NULL;
}

static bool is_bytes(napi_env env, napi_value v) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) return true;
  if (napi_is_dataview(env, v, &is) == napi_ok && is) return true;
  return napi_is_arraybuffer(env, v, &is) == napi_ok && is;
}

// open(path: string, flags: number): fd | -errno
static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  char path[PATH_MAX];
  int32_t flags;
  ARG(arg_path(env, argv[0], "open", "path", path, sizeof path));
  ARG(arg_i32(env, argv[1], "open", "flags", &flags));
  int fd = open(path, flags | O_CLOEXEC);
  return num(env, fd < 0 ? -errno : fd);
}

// close(fd): 0 | -errno
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int32_t fd;
  ARG(arg_i32(env, argv[0], "close", "fd", &fd));
  int r = close(fd);
  return num(env, r < 0 ? -errno : r);
}

// dup2(oldfd, newfd): newfd | -errno. Only for a warm VMM (`partita vmm-standby`) taking over a VM: its
// stdout/stderr become that VM's vmm.log, as a cold spawn's are (Node has no dup2; writes from native code and
// Node's own fatal errors go to fd 2, so replacing the JS stream would not be enough).
static napi_value js_dup2(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int32_t oldfd, newfd;
  ARG(arg_i32(env, argv[0], "dup2", "oldfd", &oldfd));
  ARG(arg_i32(env, argv[1], "dup2", "newfd", &newfd));
  int r = dup2(oldfd, newfd);
  return num(env, r < 0 ? -errno : r);
}

// flock(fd, operation): 0 | -errno. Disk images are locked LOCK_EX|LOCK_NB (or LOCK_SH read-only) so two VMs
// cannot open one image for writing; the lock belongs to the open file description and ends with it.
static napi_value js_flock(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int32_t fd, op;
  ARG(arg_i32(env, argv[0], "flock", "fd", &fd));
  ARG(arg_i32(env, argv[1], "flock", "operation", &op));
  int r = flock(fd, op);
  return num(env, r < 0 ? -errno : r);
}

// fallocate(fd, mode, offset, length): 0 | -errno. virtio-blk discard and write-zeroes punch holes
// (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) or zero ranges, so disk images stay sparse.
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  get_args(env, info, 4, argv);
  int32_t fd, mode;
  int64_t offset, length;
  ARG(arg_i32(env, argv[0], "fallocate", "fd", &fd));
  ARG(arg_i32(env, argv[1], "fallocate", "mode", &mode));
  ARG(arg_int(env, argv[2], "fallocate", "offset", 0, INT64_MAX, &offset));
  ARG(arg_int(env, argv[3], "fallocate", "length", 0, INT64_MAX, &length));
  int r = fallocate(fd, mode, (off_t)offset, (off_t)length);
  return num(env, r < 0 ? -errno : r);
}

// ioctl(fd, request, arg?: number | bigint | ArrayBufferView | ArrayBuffer): result | -errno
// A buffer argument is passed by pointer (the struct); a number is passed by value. A request that encodes a
// direction and size (_IOR/_IOW/_IOWR) gets a buffer of at least _IOC_SIZE bytes, or a RangeError: the kernel
// would read or write that many bytes from the pointer. (Older encodings such as TUNSETIFF's understate the
// size; for those this is a lower bound only.)
static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  int32_t fd;
  uint64_t request;
  ARG(arg_i32(env, argv[0], "ioctl", "fd", &fd));
  ARG(arg_u64(env, argv[1], "ioctl", "request", &request));
  if (request > UINT32_MAX) return (throw_range(env, "ioctl", "request", "must fit in 32 bits"), NULL);
  unsigned long req = (unsigned long)request;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  long r;
  if (t == napi_undefined) {
    r = ioctl(fd, req, 0);
  } else if (t == napi_bigint) {
    uint64_t value;
    bool lossless;
    napi_get_value_bigint_uint64(env, argv[2], &value, &lossless);  // an address, or a negative value below
    if (!lossless) {
      int64_t negative;
      napi_get_value_bigint_int64(env, argv[2], &negative, &lossless);
      value = (uint64_t)negative;
    }
    if (!lossless) return (throw_range(env, "ioctl", "argument", "does not fit in 64 bits"), NULL);
    r = ioctl(fd, req, (unsigned long)value);
  } else if (t == napi_number) {
    int64_t value;
    ARG(arg_int(env, argv[2], "ioctl", "argument", INT64_MIN, INT64_MAX, &value));
    r = ioctl(fd, req, (unsigned long)value);
  } else {
    size_t len;
    void *p;
    if (!is_bytes(env, argv[2]))
      return (throw_type(env, "ioctl", "argument", "a number, bigint, TypedArray, DataView or ArrayBuffer"), NULL);
    p = bytes_of(env, argv[2], &len);
    if (_IOC_DIR(req) != _IOC_NONE && len < _IOC_SIZE(req)) {
      char what[96];
      snprintf(what, sizeof what, "is %zu bytes; request 0x%lx needs %u", len, req, (unsigned)_IOC_SIZE(req));
      return (throw_range(env, "ioctl", "buffer", what), NULL);
    }
    r = ioctl(fd, req, p);
  }
  return num(env, r < 0 ? -errno : (double)r);
}

// run(vcpuFd): 0 | -errno. KVM_RUN with nothing else on the path: the hot call of the whole VMM.
static napi_value js_run(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  // One status check, no typeof: napi_number_expected is the only failure for a value that is there.
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok)
    return (throw_type(env, "run", "fd", "a number"), NULL);
  int r = ioctl(fd, KVM_RUN_IOCTL, 0);
  napi_value out;
  napi_create_int32(env, r < 0 ? -errno : r, &out);
  return out;
}

// mmap(length, prot, flags, fd, offset): bigint address | number -errno
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  get_args(env, info, 5, argv);
  uint64_t len;
  int32_t prot, flags, fd;
  int64_t off;
  ARG(arg_u64(env, argv[0], "mmap", "length", &len));
  ARG(arg_i32(env, argv[1], "mmap", "prot", &prot));
  ARG(arg_i32(env, argv[2], "mmap", "flags", &flags));
  ARG(arg_i32(env, argv[3], "mmap", "fd", &fd));
  ARG(arg_int(env, argv[4], "mmap", "offset", 0, INT64_MAX, &off));
  void *p = mmap(NULL, (size_t)len, prot, flags, fd, (off_t)off);
  if (p == MAP_FAILED) return num(env, -errno);
  return big(env, (uint64_t)(uintptr_t)p);
}

// munmap(address, length): 0 | -errno
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  uint64_t addr, len;
  ARG(arg_u64(env, argv[0], "munmap", "address", &addr));
  ARG(arg_u64(env, argv[1], "munmap", "length", &len));
  int r = munmap((void *)(uintptr_t)addr, (size_t)len);
  return num(env, r < 0 ? -errno : r);
}

// madvise(address, length, advice): 0 | -errno
static napi_value js_madvise(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  uint64_t addr, len;
  int32_t advice;
  ARG(arg_u64(env, argv[0], "madvise", "address", &addr));
  ARG(arg_u64(env, argv[1], "madvise", "length", &len));
  ARG(arg_i32(env, argv[2], "madvise", "advice", &advice));
  int r = madvise((void *)(uintptr_t)addr, (size_t)len, advice);
  return num(env, r < 0 ? -errno : r);
}

// view(address, length): ArrayBuffer over memory this process mapped. The mapping outlives the view: guest
// RAM and kvm_run pages are unmapped only when the VM is torn down, after every view is dropped. The address
// itself cannot be checked here (the caller got it from mmap); a null one can.
static napi_value js_view(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  uint64_t addr, len;
  ARG(arg_u64(env, argv[0], "view", "address", &addr));
  ARG(arg_u64(env, argv[1], "view", "length", &len));
  if (addr == 0 && len != 0) return (throw_range(env, "view", "address", "is null"), NULL);
  if (addr + len < addr) return (throw_range(env, "view", "length", "runs past the end of the address space"), NULL);
  napi_value ab;
  CHECK(napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, (size_t)len, NULL, NULL, &ab));
  return ab;
}

// addressOf(buffer): bigint host address of an ArrayBuffer/TypedArray's bytes (for structs that carry pointers)
static napi_value js_address_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  if (!is_bytes(env, argv[0]))
    return (throw_type(env, "addressOf", "buffer", "a TypedArray, DataView or ArrayBuffer"), NULL);
  size_t len;
  void *p = bytes_of(env, argv[0], &len);
  return big(env, (uint64_t)(uintptr_t)p);
}

// eventfd(initval, flags): fd | -errno
static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int64_t initval;
  int32_t flags;
  ARG(arg_int(env, argv[0], "eventfd", "initval", 0, UINT32_MAX, &initval));
  ARG(arg_i32(env, argv[1], "eventfd", "flags", &flags));
  int fd = eventfd((unsigned)initval, flags | EFD_CLOEXEC);
  return num(env, fd < 0 ? -errno : fd);
}

// threadSelf(): bigint pthread_t of the calling thread
static napi_value js_thread_self(napi_env env, napi_callback_info info) {
  (void)info;
  return big(env, (uint64_t)pthread_self());
}

static int kick_thread(pthread_t thread, uint64_t immediate_exit);

// kick(thread, immediateExitAddress?): set kvm_run.immediate_exit (if given) then signal the thread, so a
// vCPU inside KVM_RUN returns EINTR and one about to enter it returns at once. 0 | -errno; -ESRCH (and no
// signal, no immediate_exit write) for an application-processor thread that has already ended.
static napi_value js_kick(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  uint64_t thread, ie;
  ARG(arg_u64(env, argv[0], "kick", "thread", &thread));
  ARG(arg_opt_address(env, argv[1], "kick", "immediateExitAddress", &ie));
  if (thread == 0) return (throw_range(env, "kick", "thread", "is 0, not a thread"), NULL);
  return num(env, kick_thread((pthread_t)thread, ie));
}

// ---- Handles -------------------------------------------------------------------------------------------------
// What JavaScript holds as a bigint handle (a tick timer, an fd watcher, a block I/O thread) is used only while
// registered here, so a stale or made-up bigint is a RangeError instead of a wild pointer. Few exist at a time.
enum handle_kind { HANDLE_TIMER = 1, HANDLE_WATCHER, HANDLE_IO_THREAD };
#define MAX_HANDLES 4096
static struct { void *ptr; int kind; } handles[MAX_HANDLES];
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;

static bool handle_add(void *ptr, int kind) {
  pthread_mutex_lock(&handles_lock);
  for (int i = 0; i < MAX_HANDLES; i++) {
    if (!handles[i].kind) {
      handles[i].ptr = ptr;
      handles[i].kind = kind;
      pthread_mutex_unlock(&handles_lock);
      return true;
    }
  }
  pthread_mutex_unlock(&handles_lock);
  return false;
}

// Removes the handle; false when it was not registered.
static bool handle_remove(void *ptr, int kind) {
  bool found = false;
  pthread_mutex_lock(&handles_lock);
  for (int i = 0; i < MAX_HANDLES && !found; i++) {
    if (handles[i].kind == kind && handles[i].ptr == ptr) {
      handles[i].kind = 0;
      found = true;
    }
  }
  pthread_mutex_unlock(&handles_lock);
  return found;
}

static bool handle_known(void *ptr, int kind) {
  bool found = false;
  pthread_mutex_lock(&handles_lock);
  for (int i = 0; i < MAX_HANDLES && !found; i++) found = handles[i].kind == kind && handles[i].ptr == ptr;
  pthread_mutex_unlock(&handles_lock);
  return found;
}

// Reads a registered handle of `kind` into *out, or throws.
static bool arg_handle(napi_env env, napi_value v, const char *fn, int kind, void **out) {
  uint64_t h;
  if (!arg_u64(env, v, fn, "handle", &h)) return false;
  if (!handle_known((void *)(uintptr_t)h, kind)) return throw_range(env, fn, "handle", "is not a live handle");
  *out = (void *)(uintptr_t)h;
  return true;
}

// Per-thread periodic tick: a POSIX timer that sends SIG_KICK to the calling thread every `ms`, so a vCPU
// blocked in the guest (HLT with interrupts off, a spinning guest) comes back to JavaScript regularly to check
// for stop requests and dead states. startTick(ms): timer id | -errno; stopTick(id)
static napi_value js_start_tick(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int64_t ms;
  ARG(arg_int(env, argv[0], "startTick", "ms", 1, 3600 * 1000, &ms));  // 0 would disarm the timer
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = sig_kick();
  sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &sev, &t) < 0) return num(env, -errno);
  struct itimerspec its;
  its.it_interval.tv_sec = ms / 1000;
  its.it_interval.tv_nsec = (ms % 1000) * 1000000;
  its.it_value = its.it_interval;
  if (timer_settime(t, 0, &its, NULL) < 0) {
    int e = errno;
    timer_delete(t);
    return num(env, -e);
  }
  if (!handle_add((void *)t, HANDLE_TIMER)) {
    timer_delete(t);
    return num(env, -EAGAIN);
  }
  return big(env, (uint64_t)(uintptr_t)t);
}

static napi_value js_stop_tick(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  uint64_t id;
  ARG(arg_u64(env, argv[0], "stopTick", "timer", &id));
  // timer_delete on an id that is not a live timer is undefined behaviour in glibc: only ours are deleted.
  if (!handle_remove((void *)(uintptr_t)id, HANDLE_TIMER))
    return (throw_range(env, "stopTick", "timer", "is not a live timer"), NULL);
  int r = timer_delete((timer_t)(uintptr_t)id);
  return num(env, r < 0 ? -errno : 0);
}

// watchTerminationSignals(immediateExitAddress): SIGINT, SIGTERM, SIGHUP and SIGQUIT set a flag and kick the calling
// thread (and set the given kvm_run.immediate_exit). pendingSignal(): the signal number seen, or 0.
static napi_value js_watch_signals(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  uint64_t ie;
  ARG(arg_opt_address(env, argv[0], "watchTerminationSignals", "immediateExitAddress", &ie));
  signal_target = pthread_self();
  atomic_store(&signal_target_immediate_exit, (uint8_t *)(uintptr_t)ie);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = term_handler;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
  for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    if (sigaction(sigs[i], &sa, NULL) < 0) return num(env, -errno);
  return num(env, 0);
}

// restoreTerminationSignals(): back to the default actions, once no vCPU runs any more.
static napi_value js_restore_signals(napi_env env, napi_callback_info info) {
  (void)info;
  int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
  for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
  atomic_store(&signal_target_immediate_exit, NULL);
  return num(env, 0);
}

static napi_value js_pending_signal(napi_env env, napi_callback_info info) {
  (void)info;
  return num(env, atomic_exchange(&pending_signal, 0));
}

// ---- Application-processor vCPU threads -------------------------------------------------------------------
// Each runs KVM_RUN in a loop; after every return it hands (result) to JavaScript through a thread-safe
// function and waits until JavaScript calls complete(handle, keepRunning).
typedef struct vcpu_thread {
  int fd;
  uint8_t *immediate_exit;
  pthread_t thread;
  napi_threadsafe_function tsfn;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int completed;  // set by complete()
  int keep_running;
  int last_result;
  int id;
  int exited;  // set (under lock) when the thread has left its loop: it must not be signalled any more
} vcpu_thread;

// Every AP thread, so the VM can stop them all natively before the process exits: a thread must release its
// thread-safe function while the I/O thread that owns it is still alive. Entries stay valid for the life of the
// process, and the threads are never detached or joined: a pthread_t of an ended AP thread is therefore never
// reused by another thread, and kick() can look it up here and see (under its lock) that it has exited instead
// of signalling a thread that is gone (undefined behaviour; a crash once its stack is unmapped).
#define MAX_VCPU_THREADS 1024
static vcpu_thread *all_threads[MAX_VCPU_THREADS];  // published with __atomic release stores, NULL until then
static atomic_int thread_count;                     // slots reserved
static atomic_int stop_all;
static atomic_int live_threads;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cond = PTHREAD_COND_INITIALIZER;

static vcpu_thread *registered_vcpu(bool (*match)(vcpu_thread *, const void *), const void *key) {
  int n = atomic_load(&thread_count);
  for (int i = 0; i < n && i < MAX_VCPU_THREADS; i++) {
    vcpu_thread *v = __atomic_load_n(&all_threads[i], __ATOMIC_ACQUIRE);
    if (v && match(v, key)) return v;
  }
  return NULL;
}

static bool same_thread(vcpu_thread *v, const void *key) { return pthread_equal(v->thread, *(const pthread_t *)key); }
static bool same_handle(vcpu_thread *v, const void *key) { return v == key; }

// An AP thread is signalled only while it has not exited (checked under its lock, which it takes to exit);
// any other thread (the BSP's, on which the caller vouches) directly. 0 | -errno.
static int kick_thread(pthread_t thread, uint64_t immediate_exit) {
  vcpu_thread *v = registered_vcpu(same_thread, &thread);
  int r = ESRCH;
  if (v) pthread_mutex_lock(&v->lock);
  if (!v || !v->exited) {
    if (immediate_exit) __atomic_store_n((uint8_t *)(uintptr_t)immediate_exit, 1, __ATOMIC_SEQ_CST);
    r = pthread_kill(thread, sig_kick());
  }
  if (v) pthread_mutex_unlock(&v->lock);
  return -r;
}

static void *vcpu_thread_main(void *arg) {
  vcpu_thread *v = arg;
  for (;;) {
    int r = ioctl(v->fd, KVM_RUN_IOCTL, 0);
    if (atomic_load(&stop_all)) break;
    pthread_mutex_lock(&v->lock);
    v->last_result = r < 0 ? -errno : r;
    v->completed = 0;
    pthread_mutex_unlock(&v->lock);
    if (napi_call_threadsafe_function(v->tsfn, v, napi_tsfn_blocking) != napi_ok) break;
    pthread_mutex_lock(&v->lock);
    while (!v->completed) pthread_cond_wait(&v->cond, &v->lock);
    int keep = v->keep_running;
    pthread_mutex_unlock(&v->lock);
    if (!keep || atomic_load(&stop_all)) break;
  }
  pthread_mutex_lock(&v->lock);
  v->exited = 1;
  pthread_mutex_unlock(&v->lock);
  napi_release_threadsafe_function(v->tsfn, napi_tsfn_release);
  pthread_mutex_lock(&live_lock);
  atomic_fetch_sub(&live_threads, 1);
  pthread_cond_broadcast(&live_cond);
  pthread_mutex_unlock(&live_lock);
  return NULL;
}

// stopVcpuThreads(timeoutMs): ends every AP thread (kicks it out of KVM_RUN, releases one waiting for JS) and
// waits until all have released their thread-safe functions. Returns how many are still alive.
static napi_value js_stop_vcpu_threads(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int64_t ms;
  ARG(arg_int(env, argv[0], "stopVcpuThreads", "timeoutMs", 0, INT32_MAX, &ms));
  atomic_store(&stop_all, 1);
  int n = atomic_load(&thread_count);
  for (int i = 0; i < n && i < MAX_VCPU_THREADS; i++) {
    vcpu_thread *v = __atomic_load_n(&all_threads[i], __ATOMIC_ACQUIRE);
    if (!v) continue;
    pthread_mutex_lock(&v->lock);
    if (!v->exited) {
      __atomic_store_n(v->immediate_exit, 1, __ATOMIC_SEQ_CST);
      pthread_kill(v->thread, sig_kick());
    }
    v->keep_running = 0;
    v->completed = 1;
    pthread_cond_signal(&v->cond);
    pthread_mutex_unlock(&v->lock);
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += ms / 1000;
  deadline.tv_nsec += (ms % 1000) * 1000000;
  if (deadline.tv_nsec >= 1000000000) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000; }
  pthread_mutex_lock(&live_lock);
  while (atomic_load(&live_threads) > 0) {
    if (pthread_cond_timedwait(&live_cond, &live_lock, &deadline) == ETIMEDOUT) break;
  }
  int left = atomic_load(&live_threads);
  pthread_mutex_unlock(&live_lock);
  return num(env, left);
}

static void vcpu_call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  vcpu_thread *v = data;
  if (!env) return;
  napi_value argv[2], undef;
  napi_create_int32(env, v->id, &argv[0]);
  napi_create_int32(env, v->last_result, &argv[1]);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, js_cb, 2, argv, NULL);
}

// The struct stays allocated for the life of the process (a few hundred bytes per vCPU): stopVcpuThreads may
// still look at it after its thread ended and the thread-safe function was finalized.
static void vcpu_finalize(napi_env env, void *data, void *hint) {
  (void)env; (void)data; (void)hint;
}

// startVcpuThread(fd, id, onExit(id, result), immediateExitAddress): { handle, thread } | -errno
// The thread-safe function's queue holds one call (max_queue_size 1), which is all there can be: the thread
// calls it in blocking mode once per exit and then waits for completeVcpuExit before it runs again.
static napi_value js_start_vcpu_thread(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  get_args(env, info, 4, argv);
  int32_t fd, id;
  uint64_t ie;
  ARG(arg_i32(env, argv[0], "startVcpuThread", "fd", &fd));
  ARG(arg_i32(env, argv[1], "startVcpuThread", "id", &id));
  ARG(arg_function(env, argv[2], "startVcpuThread", "onExit"));
  ARG(arg_u64(env, argv[3], "startVcpuThread", "immediateExitAddress", &ie));
  if (ie == 0) return (throw_range(env, "startVcpuThread", "immediateExitAddress", "is null"), NULL);
  int slot = atomic_fetch_add(&thread_count, 1);
  if (slot >= MAX_VCPU_THREADS) {
    atomic_fetch_sub(&thread_count, 1);
    return num(env, -EAGAIN);
  }
  vcpu_thread *v = calloc(1, sizeof *v);
  if (!v) return num(env, -ENOMEM);  // the slot stays empty
  v->fd = fd;
  v->id = id;
  v->immediate_exit = (uint8_t *)(uintptr_t)ie;
  pthread_mutex_init(&v->lock, NULL);
  pthread_cond_init(&v->cond, NULL);
  napi_value name;
  napi_create_string_utf8(env, "partita-vcpu", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[2], NULL, name, 1, 1, v, vcpu_finalize, NULL, vcpu_call_js,
                                      &v->tsfn) != napi_ok) {
    free(v);
    return throw_last(env);
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);  // a vCPU thread needs little stack: keep RSS per vCPU low
  atomic_fetch_add(&live_threads, 1);
  int e = pthread_create(&v->thread, &attr, vcpu_thread_main, v);
  pthread_attr_destroy(&attr);
  if (e) {
    atomic_fetch_sub(&live_threads, 1);
    napi_release_threadsafe_function(v->tsfn, napi_tsfn_abort);
    return num(env, -e);
  }
  __atomic_store_n(&all_threads[slot], v, __ATOMIC_RELEASE);  // not detached: see all_threads
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "handle", big(env, (uint64_t)(uintptr_t)v));
  napi_set_named_property(env, out, "thread", big(env, (uint64_t)v->thread));
  return out;
}

// completeVcpuExit(handle, keepRunning): let the vCPU thread re-enter KVM_RUN, or end it.
static napi_value js_complete_vcpu_exit(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  uint64_t handle;
  bool keep;
  ARG(arg_u64(env, argv[0], "completeVcpuExit", "handle", &handle));
  ARG(arg_bool(env, argv[1], "completeVcpuExit", "keepRunning", &keep));
  vcpu_thread *v = registered_vcpu(same_handle, (const void *)(uintptr_t)handle);
  if (!v) return (throw_range(env, "completeVcpuExit", "handle", "is not a vCPU thread"), NULL);
  pthread_mutex_lock(&v->lock);
  v->keep_running = keep;
  v->completed = 1;
  pthread_cond_signal(&v->cond);
  pthread_mutex_unlock(&v->lock);
  return NULL;
}

// ---- eventfd watcher -----------------------------------------------------------------------------------
// A native thread epoll-waits on eventfds (ioeventfds of virtio queues) and tells JavaScript which fired,
// through a thread-safe function on the thread that created the watcher. Each eventfd's counter is read
// (reset) before the call, so one call covers any number of guest kicks since the previous one.
// The watcher's calls waiting for its JavaScript thread at most (napi max_queue_size).
#define WATCHER_QUEUE_MAX 64

typedef struct fd_watcher {
  int epfd;
  int stopfd;
  pthread_t thread;
  napi_threadsafe_function tsfn;
  atomic_int finalizing;
} fd_watcher;

static void watcher_call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  if (!env) return;
  napi_value argv[1], undef;
  napi_create_int32(env, (int32_t)(intptr_t)data, &argv[0]);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, js_cb, 1, argv, NULL);
}

static void *watcher_main(void *arg) {
  fd_watcher *w = arg;
  struct epoll_event events[64];
  for (;;) {
    int n = epoll_wait(w->epfd, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; i++) {
      int fd = (int)(uint32_t)events[i].data.u64;
      int readiness_only = (int)(events[i].data.u64 >> 32);
      uint64_t count;
      if (fd == w->stopfd) goto done;
      // An eventfd is reset here (one call covers any number of kicks); any other fd (a TAP, a socket) is only
      // reported ready, edge-triggered, and JavaScript reads it until EAGAIN.
      if (!readiness_only && read(fd, &count, sizeof count) != sizeof count) continue;
      if (atomic_load(&w->finalizing)) goto done;
      // Blocking: with WATCHER_QUEUE_MAX calls waiting for JavaScript this thread waits too, and kicks arriving
      // meanwhile add up in their eventfd counters (nothing is lost). napi_closing ends the wait at teardown.
      if (napi_call_threadsafe_function(w->tsfn, (void *)(intptr_t)fd, napi_tsfn_blocking) != napi_ok) goto done;
    }
  }
done:
  return NULL;
}

// The thread that owns the watcher is going away (a worker ending, or process exit): Node frees the
// thread-safe function then, whatever other threads hold it, so the watcher thread is stopped and joined
// before this returns and never touches the function again.
static void watcher_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  fd_watcher *w = data;
  handle_remove(w, HANDLE_WATCHER);
  atomic_store(&w->finalizing, 1);
  uint64_t one = 1;
  if (write(w->stopfd, &one, sizeof one) < 0) { /* the thread also checks `finalizing` */ }
  pthread_join(w->thread, NULL);
  close(w->epfd);
  close(w->stopfd);
  free(w);
}

// watchFds(onReady(fd)): bigint watcher handle. Add fds with watchFdAdd(handle, fd).
static napi_value js_watch_fds(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  ARG(arg_function(env, argv[0], "watchFds", "onReady"));
  fd_watcher *w = calloc(1, sizeof *w);
  if (!w) return num(env, -ENOMEM);
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->epfd < 0 || w->stopfd < 0) {
    int e = errno;
    free(w);
    return num(env, -e);
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint32_t)w->stopfd};
  epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stopfd, &ev);
  napi_value name;
  napi_create_string_utf8(env, "partita-fd-watcher", NAPI_AUTO_LENGTH, &name);
  // The thread is started before the function exists so the finalizer always has a thread to join; it waits
  // on epoll and touches the function only after an fd is added (by JavaScript, after this returns).
  if (pthread_create(&w->thread, NULL, watcher_main, w)) {
    close(w->epfd);
    close(w->stopfd);
    free(w);
    return num(env, -EAGAIN);
  }
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, WATCHER_QUEUE_MAX, 1, w, watcher_finalize, NULL,
                                      watcher_call_js, &w->tsfn) != napi_ok) {
    watcher_finalize(env, w, NULL);  // stops and joins the thread, closes the fds, frees
    return throw_last(env);
  }
  handle_add(w, HANDLE_WATCHER);
  napi_unref_threadsafe_function(env, w->tsfn);  // watching does not keep the event loop alive by itself
  return big(env, (uint64_t)(uintptr_t)w);
}

// watchFdAdd(handle, fd, readinessOnly?): an eventfd (read and reset by the watcher), or with readinessOnly
// any pollable fd, reported edge-triggered when it becomes readable.
static napi_value js_watch_fd_add(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  fd_watcher *w;
  int32_t fd;
  bool readiness_only = false;
  ARG(arg_handle(env, argv[0], "watchFdAdd", HANDLE_WATCHER, (void **)&w));
  ARG(arg_i32(env, argv[1], "watchFdAdd", "fd", &fd));
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_undefined) ARG(arg_bool(env, argv[2], "watchFdAdd", "readinessOnly", &readiness_only));
  struct epoll_event ev = {.events = EPOLLIN | (readiness_only ? EPOLLET : 0),
                           .data.u64 = (uint32_t)fd | ((uint64_t)readiness_only << 32)};
  int r = epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
  return num(env, r < 0 ? -errno : 0);
}

static napi_value js_watch_fd_remove(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  fd_watcher *w;
  int32_t fd;
  ARG(arg_handle(env, argv[0], "watchFdRemove", HANDLE_WATCHER, (void **)&w));
  ARG(arg_i32(env, argv[1], "watchFdRemove", "fd", &fd));
  int r = epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
  return num(env, r < 0 ? -errno : 0);
}


// ---- block I/O thread ---------------------------------------------------------------------------------
// A disk's writes and syncs run back to back on a native thread of their own (QEMU's "iothread"), straight
// from guest RAM (iovecs over the guest-memory views JavaScript hands in; reads stay in libuv's pool, where
// several run in parallel). Measured here:
// 64 KiB random buffered writes from libuv's thread pool reach about half of one thread's pwrite rate (the
// threads contend for the file's inode lock); one thread per disk keeps the host's own rate and keeps
// requests in submission order (a sync runs after the writes submitted before it). Completions are batched:
// the thread-safe function is called once per batch and JavaScript reaps (id, result) pairs.
typedef struct io_request {
  struct io_request *next;
  double id;
  int fd;
  int op;  // 1 write, 2 fdatasync
  off_t offset;
  int64_t result;  // bytes or -errno
  int iovcnt;
  struct iovec iov[];
} io_request;

typedef struct io_thread {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  io_request *queue_head, *queue_tail;
  io_request *done_head, *done_tail;
  int call_pending;  // a tsfn call is scheduled and JavaScript has not reaped yet
  int stopping;
  pthread_t thread;
  napi_threadsafe_function tsfn;
} io_thread;

static int64_t do_io(io_request *r) {
  if (r->op == 2) return fdatasync(r->fd) < 0 ? -errno : 0;
  int64_t total = 0;
  struct iovec *iov = r->iov;
  int cnt = r->iovcnt;
  while (cnt > 0) {
    ssize_t n = pwritev(r->fd, iov, cnt, r->offset + total);
    if (n < 0) {
      if (errno == EINTR) continue;
      return total ? total : -errno;
    }
    if (n == 0) break;  // nothing written: reported as a short write
    total += n;
    while (cnt > 0 && (size_t)n >= iov->iov_len) {
      n -= (ssize_t)iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0 && n > 0) {
      iov->iov_base = (char *)iov->iov_base + n;
      iov->iov_len -= (size_t)n;
    }
  }
  return total;
}

static void *io_thread_main(void *arg) {
  io_thread *t = arg;
  pthread_mutex_lock(&t->lock);
  for (;;) {
    while (!t->queue_head && !t->stopping) pthread_cond_wait(&t->wake, &t->lock);
    if (t->stopping) break;
    io_request *r = t->queue_head;
    t->queue_head = r->next;
    if (!t->queue_head) t->queue_tail = NULL;
    pthread_mutex_unlock(&t->lock);
    r->result = do_io(r);
    r->next = NULL;
    pthread_mutex_lock(&t->lock);
    if (t->done_tail) t->done_tail->next = r;
    else t->done_head = r;
    t->done_tail = r;
    if (!t->call_pending && !t->stopping) {
      // The queue holds one call (max_queue_size 1). napi_queue_full means one is queued and not yet run: it
      // reaps until the list is empty, this completion included, so nothing waits for a call that never comes.
      t->call_pending = 1;
      napi_call_threadsafe_function(t->tsfn, NULL, napi_tsfn_nonblocking);
    }
  }
  pthread_mutex_unlock(&t->lock);
  return NULL;
}

static void io_call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  (void)data;
  if (!env) return;
  napi_value undef;
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, js_cb, 0, NULL, NULL);
}

static void io_free_list(io_request *r) {
  while (r) {
    io_request *next = r->next;
    free(r);
    r = next;
  }
}

// The owning thread is ending: stop the I/O thread (the request it is running finishes first) and free all.
static void io_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  io_thread *t = data;
  handle_remove(t, HANDLE_IO_THREAD);
  pthread_mutex_lock(&t->lock);
  t->stopping = 1;
  pthread_cond_signal(&t->wake);
  pthread_mutex_unlock(&t->lock);
  pthread_join(t->thread, NULL);
  io_free_list(t->queue_head);
  io_free_list(t->done_head);
  pthread_mutex_destroy(&t->lock);
  pthread_cond_destroy(&t->wake);
  free(t);
}

// ioThreadStart(onCompletions()): bigint handle | -errno. onCompletions is called (on this JS thread) when
// completions are waiting; collect them with ioReap.
static napi_value js_io_thread_start(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  ARG(arg_function(env, argv[0], "ioThreadStart", "onCompletions"));
  io_thread *t = calloc(1, sizeof *t);
  if (!t) return num(env, -ENOMEM);
  pthread_mutex_init(&t->lock, NULL);
  pthread_cond_init(&t->wake, NULL);
  napi_value name;
  napi_create_string_utf8(env, "partita-block-io", NAPI_AUTO_LENGTH, &name);
  if (pthread_create(&t->thread, NULL, io_thread_main, t)) {
    free(t);
    return num(env, -EAGAIN);
  }
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 1, 1, t, io_finalize, NULL, io_call_js, &t->tsfn) !=
      napi_ok) {
    io_finalize(env, t, NULL);  // stops and joins the thread, frees
    return throw_last(env);
  }
  handle_add(t, HANDLE_IO_THREAD);
  napi_unref_threadsafe_function(env, t->tsfn);
  return big(env, (uint64_t)(uintptr_t)t);
}

// ioSubmit(handle, id, fd, op, offset, views: Uint8Array[]): 0 | -errno. op 1 write (from views),
// 2 fdatasync (views ignored). The views must stay valid until the completion is reaped: guest
// RAM views are (the mapping lives as long as the VM).
static napi_value js_io_submit(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  get_args(env, info, 6, argv);
  io_thread *t;
  int64_t id_value, offset;
  int32_t fd, op;
  ARG(arg_handle(env, argv[0], "ioSubmit", HANDLE_IO_THREAD, (void **)&t));
  ARG(arg_int(env, argv[1], "ioSubmit", "id", 0, (int64_t)MAX_SAFE_INTEGER, &id_value));
  ARG(arg_i32(env, argv[2], "ioSubmit", "fd", &fd));
  ARG(arg_i32(env, argv[3], "ioSubmit", "op", &op));
  ARG(arg_int(env, argv[4], "ioSubmit", "offset", 0, INT64_MAX, &offset));
  double id = (double)id_value;
  uint32_t count = 0;
  bool is_array = false;
  if (op != 2) {
    napi_is_array(env, argv[5], &is_array);
    if (!is_array) return (throw_type(env, "ioSubmit", "views", "an array of Uint8Array"), NULL);
    napi_get_array_length(env, argv[5], &count);
    if (count > IOV_MAX) return num(env, -EINVAL);
  }
  if (op != 1 && op != 2) return (throw_range(env, "ioSubmit", "op", "must be 1 (write) or 2 (fdatasync)"), NULL);
  io_request *r = calloc(1, sizeof *r + count * sizeof(struct iovec));
  if (!r) return num(env, -ENOMEM);
  r->id = id;
  r->fd = fd;
  r->op = op;
  r->offset = (off_t)offset;
  r->iovcnt = (int)count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    napi_typedarray_type type;
    size_t length;
    void *data;
    napi_value ab;
    size_t byte_offset;
    if (napi_get_element(env, argv[5], i, &v) != napi_ok ||
        napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &byte_offset) != napi_ok || type != napi_uint8_array) {
      free(r);
      return (throw_type(env, "ioSubmit", "views", "an array of Uint8Array"), NULL);
    }
    r->iov[i].iov_base = data;  // already advanced by byte_offset
    r->iov[i].iov_len = length;
  }
  pthread_mutex_lock(&t->lock);
  if (t->queue_tail) t->queue_tail->next = r;
  else t->queue_head = r;
  t->queue_tail = r;
  pthread_cond_signal(&t->wake);
  pthread_mutex_unlock(&t->lock);
  return num(env, 0);
}

// ioKeepAlive(handle, keep): while I/O is pending the thread's completions keep the event loop alive.
static napi_value js_io_keep_alive(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  io_thread *t;
  bool keep;
  ARG(arg_handle(env, argv[0], "ioKeepAlive", HANDLE_IO_THREAD, (void **)&t));
  ARG(arg_bool(env, argv[1], "ioKeepAlive", "keep", &keep));
  napi_status st = keep ? napi_ref_threadsafe_function(env, t->tsfn) : napi_unref_threadsafe_function(env, t->tsfn);
  return num(env, st == napi_ok ? 0 : -EINVAL);
}

// ioReap(handle, out: Float64Array): number of (id, result) pairs written to `out` (2 doubles each). Call
// until it returns 0: then the next completion calls onCompletions again.
static napi_value js_io_reap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  io_thread *t;
  ARG(arg_handle(env, argv[0], "ioReap", HANDLE_IO_THREAD, (void **)&t));
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value ab;
  size_t byte_offset;
  bool is_typed = false;
  if (napi_is_typedarray(env, argv[1], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &byte_offset) != napi_ok ||
      type != napi_float64_array)
    return (throw_type(env, "ioReap", "out", "a Float64Array"), NULL);
  double *out = data;
  size_t n = 0;
  pthread_mutex_lock(&t->lock);
  while (t->done_head && 2 * (n + 1) <= length) {
    io_request *r = t->done_head;
    t->done_head = r->next;
    if (!t->done_head) t->done_tail = NULL;
    out[2 * n] = r->id;
    out[2 * n + 1] = (double)r->result;
    n++;
    free(r);
  }
  if (!t->done_head) t->call_pending = 0;
  pthread_mutex_unlock(&t->lock);
  return num(env, (double)n);
}

static napi_value init(napi_env env, napi_value exports) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;  // no SA_RESTART: the point is to interrupt KVM_RUN
  sigemptyset(&sa.sa_mask);
  sigaction(sig_kick(), &sa, NULL);

  struct { const char *name; napi_callback cb; } fns[] = {
      {"open", js_open},         {"close", js_close},     {"dup2", js_dup2},
      {"ioctl", js_ioctl},       {"flock", js_flock}, {"fallocate", js_fallocate},
      {"ioThreadStart", js_io_thread_start}, {"ioSubmit", js_io_submit}, {"ioReap", js_io_reap},
      {"ioKeepAlive", js_io_keep_alive},       {"run", js_run},
      {"mmap", js_mmap},         {"munmap", js_munmap},
      {"madvise", js_madvise},   {"view", js_view},
      {"addressOf", js_address_of}, {"eventfd", js_eventfd},
      {"threadSelf", js_thread_self}, {"kick", js_kick},
      {"startTick", js_start_tick}, {"stopTick", js_stop_tick},
      {"watchTerminationSignals", js_watch_signals}, {"pendingSignal", js_pending_signal},
      {"restoreTerminationSignals", js_restore_signals},
      {"startVcpuThread", js_start_vcpu_thread}, {"completeVcpuExit", js_complete_vcpu_exit},
      {"stopVcpuThreads", js_stop_vcpu_threads},
      {"watchFds", js_watch_fds}, {"watchFdAdd", js_watch_fd_add}, {"watchFdRemove", js_watch_fd_remove},
  };
  for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  napi_value sig;
  napi_create_int32(env, sig_kick(), &sig);
  napi_set_named_property(env, exports, "SIG_KICK", sig);
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
