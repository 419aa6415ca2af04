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
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>

#define KVM_RUN_IOCTL 0xAE80 // _IO(KVMIO, 0x80); the TypeScript ABI module is the reference, this is checked there

static int sig_kick(void) { return SIGRTMIN + 4; }

static void kick_handler(int sig) { (void)sig; }

// Host termination signals (SIGINT, SIGTERM, SIGHUP): recorded, and the thread that registered for them is
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

static int64_t get_i64(napi_env env, napi_value v) {
  int64_t r = 0;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    napi_get_value_bigint_int64(env, v, &r, &lossless);
  } else {
    napi_get_value_int64(env, v, &r);
  }
  return r;
}

static uint64_t get_u64(napi_env env, napi_value v) {
  uint64_t r = 0;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    napi_get_value_bigint_uint64(env, v, &r, &lossless);
  } else {
    int64_t s = 0;
    napi_get_value_int64(env, v, &s);
    r = (uint64_t)s;
  }
  return r;
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

// open(path: string, flags: number): fd | -errno
static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  char path[4096];
  size_t n;
  CHECK(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &n));
  int flags = (int)get_i64(env, argv[1]);
  int fd = open(path, flags | O_CLOEXEC);
  return num(env, fd < 0 ? -errno : fd);
}

// close(fd): 0 | -errno
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int r = close((int)get_i64(env, argv[0]));
  return num(env, r < 0 ? -errno : r);
}

// flock(fd, operation): 0 | -errno. Disk images are locked LOCK_EX|LOCK_NB (or LOCK_SH read-only) so two VMs
// cannot open one image for writing; the lock belongs to the open file description and ends with it.
static napi_value js_flock(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int r = flock((int)get_i64(env, argv[0]), (int)get_i64(env, argv[1]));
  return num(env, r < 0 ? -errno : r);
}

// fallocate(fd, mode, offset, length): 0 | -errno. virtio-blk discard and write-zeroes punch holes
// (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) or zero ranges, so disk images stay sparse.
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  get_args(env, info, 4, argv);
  int r = fallocate((int)get_i64(env, argv[0]), (int)get_i64(env, argv[1]), (off_t)get_i64(env, argv[2]),
                    (off_t)get_i64(env, argv[3]));
  return num(env, r < 0 ? -errno : r);
}

// ioctl(fd, request, arg?: number | bigint | ArrayBufferView | ArrayBuffer): result | -errno
// A buffer argument is passed by pointer (the struct); a number is passed by value.
static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  int fd = (int)get_i64(env, argv[0]);
  unsigned long req = (unsigned long)get_u64(env, argv[1]);
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  long r;
  if (t == napi_undefined) {
    r = ioctl(fd, req, 0);
  } else if (t == napi_number || t == napi_bigint) {
    r = ioctl(fd, req, (unsigned long)get_u64(env, argv[2]));
  } else {
    size_t len;
    void *p = bytes_of(env, argv[2], &len);
    if (!p && len == 0) {
      napi_throw_type_error(env, NULL, "ioctl: argument must be a number, bigint, TypedArray, DataView or ArrayBuffer");
      return NULL;
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
  napi_get_value_int32(env, argv[0], &fd);
  int r = ioctl(fd, KVM_RUN_IOCTL, 0);
  napi_value out;
  napi_create_int32(env, r < 0 ? -errno : r, &out);
  return out;
}

// mmap(length, prot, flags, fd, offset): bigint address | number -errno
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  get_args(env, info, 5, argv);
  size_t len = (size_t)get_u64(env, argv[0]);
  int prot = (int)get_i64(env, argv[1]);
  int flags = (int)get_i64(env, argv[2]);
  int fd = (int)get_i64(env, argv[3]);
  off_t off = (off_t)get_i64(env, argv[4]);
  void *p = mmap(NULL, len, prot, flags, fd, off);
  if (p == MAP_FAILED) return num(env, -errno);
  return big(env, (uint64_t)(uintptr_t)p);
}

// munmap(address, length): 0 | -errno
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int r = munmap((void *)(uintptr_t)get_u64(env, argv[0]), (size_t)get_u64(env, argv[1]));
  return num(env, r < 0 ? -errno : r);
}

// madvise(address, length, advice): 0 | -errno
static napi_value js_madvise(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  int r = madvise((void *)(uintptr_t)get_u64(env, argv[0]), (size_t)get_u64(env, argv[1]), (int)get_i64(env, argv[2]));
  return num(env, r < 0 ? -errno : r);
}

// view(address, length): ArrayBuffer over memory this process mapped. The mapping outlives the view: guest
// RAM and kvm_run pages are unmapped only when the VM is torn down, after every view is dropped.
static napi_value js_view(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  void *p = (void *)(uintptr_t)get_u64(env, argv[0]);
  size_t len = (size_t)get_u64(env, argv[1]);
  napi_value ab;
  CHECK(napi_create_external_arraybuffer(env, p, len, NULL, NULL, &ab));
  return ab;
}

// addressOf(buffer): bigint host address of an ArrayBuffer/TypedArray's bytes (for structs that carry pointers)
static napi_value js_address_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  size_t len;
  void *p = bytes_of(env, argv[0], &len);
  return big(env, (uint64_t)(uintptr_t)p);
}

// eventfd(initval, flags): fd | -errno
static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  int fd = eventfd((unsigned)get_i64(env, argv[0]), (int)get_i64(env, argv[1]) | EFD_CLOEXEC);
  return num(env, fd < 0 ? -errno : fd);
}

// threadSelf(): bigint pthread_t of the calling thread
static napi_value js_thread_self(napi_env env, napi_callback_info info) {
  (void)info;
  return big(env, (uint64_t)pthread_self());
}

// kick(thread, immediateExitAddress?): set kvm_run.immediate_exit (if given) then signal the thread, so a
// vCPU inside KVM_RUN returns EINTR and one about to enter it returns at once. 0 | -errno
static napi_value js_kick(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  uint64_t ie = get_u64(env, argv[1]);
  if (ie) __atomic_store_n((uint8_t *)(uintptr_t)ie, 1, __ATOMIC_SEQ_CST);
  int r = pthread_kill((pthread_t)get_u64(env, argv[0]), sig_kick());
  return num(env, -r);
}

// Per-thread periodic tick: a POSIX timer that sends SIG_KICK to the calling thread every `ms`, so a vCPU
// blocked in the guest (HLT with interrupts off, a spinning guest) comes back to JavaScript regularly to check
// for stop requests and dead states. startTick(ms): timer id | -errno; stopTick(id)
static napi_value js_start_tick(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int64_t ms = get_i64(env, argv[0]);
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
  return big(env, (uint64_t)(uintptr_t)t);
}

static napi_value js_stop_tick(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  int r = timer_delete((timer_t)(uintptr_t)get_u64(env, argv[0]));
  return num(env, r < 0 ? -errno : 0);
}

// watchTerminationSignals(immediateExitAddress): SIGINT, SIGTERM and SIGHUP set a flag and kick the calling
// thread (and set the given kvm_run.immediate_exit). pendingSignal(): the signal number seen, or 0.
static napi_value js_watch_signals(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  get_args(env, info, 1, argv);
  signal_target = pthread_self();
  atomic_store(&signal_target_immediate_exit, (uint8_t *)(uintptr_t)get_u64(env, argv[0]));
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = term_handler;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGINT, SIGTERM, SIGHUP};
  for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    if (sigaction(sigs[i], &sa, NULL) < 0) return num(env, -errno);
  return num(env, 0);
}

// restoreTerminationSignals(): back to the default actions, once no vCPU runs any more.
static napi_value js_restore_signals(napi_env env, napi_callback_info info) {
  (void)info;
  int sigs[] = {SIGINT, SIGTERM, SIGHUP};
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
// thread-safe function while the I/O thread that owns it is still alive.
#define MAX_VCPU_THREADS 1024
static vcpu_thread *all_threads[MAX_VCPU_THREADS];
static atomic_int thread_count;
static atomic_int stop_all;
static atomic_int live_threads;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cond = PTHREAD_COND_INITIALIZER;

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
  int64_t ms = get_i64(env, argv[0]);
  atomic_store(&stop_all, 1);
  int n = atomic_load(&thread_count);
  for (int i = 0; i < n && i < MAX_VCPU_THREADS; i++) {
    vcpu_thread *v = all_threads[i];
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
static napi_value js_start_vcpu_thread(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  get_args(env, info, 4, argv);
  if (atomic_load(&thread_count) >= MAX_VCPU_THREADS) return num(env, -EAGAIN);
  vcpu_thread *v = calloc(1, sizeof *v);
  if (!v) return num(env, -ENOMEM);
  v->fd = (int)get_i64(env, argv[0]);
  v->id = (int)get_i64(env, argv[1]);
  v->immediate_exit = (uint8_t *)(uintptr_t)get_u64(env, argv[3]);
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
  all_threads[atomic_fetch_add(&thread_count, 1)] = v;
  pthread_detach(v->thread);
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
  vcpu_thread *v = (vcpu_thread *)(uintptr_t)get_u64(env, argv[0]);
  bool keep;
  napi_get_value_bool(env, argv[1], &keep);
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
      if (napi_call_threadsafe_function(w->tsfn, (void *)(intptr_t)fd, napi_tsfn_nonblocking) == napi_closing) goto done;
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
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, w, watcher_finalize, NULL, watcher_call_js, &w->tsfn) != napi_ok) {
    watcher_finalize(env, w, NULL);  // stops and joins the thread, closes the fds, frees
    return throw_last(env);
  }
  napi_unref_threadsafe_function(env, w->tsfn);  // watching does not keep the event loop alive by itself
  return big(env, (uint64_t)(uintptr_t)w);
}

// watchFdAdd(handle, fd, readinessOnly?): an eventfd (read and reset by the watcher), or with readinessOnly
// any pollable fd, reported edge-triggered when it becomes readable.
static napi_value js_watch_fd_add(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  get_args(env, info, 3, argv);
  fd_watcher *w = (fd_watcher *)(uintptr_t)get_u64(env, argv[0]);
  int fd = (int)get_i64(env, argv[1]);
  bool readiness_only = false;
  napi_get_value_bool(env, argv[2], &readiness_only);  // undefined: stays false
  struct epoll_event ev = {.events = EPOLLIN | (readiness_only ? EPOLLET : 0),
                           .data.u64 = (uint32_t)fd | ((uint64_t)readiness_only << 32)};
  int r = epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
  return num(env, r < 0 ? -errno : 0);
}

static napi_value js_watch_fd_remove(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  fd_watcher *w = (fd_watcher *)(uintptr_t)get_u64(env, argv[0]);
  int r = epoll_ctl(w->epfd, EPOLL_CTL_DEL, (int)get_i64(env, argv[1]), NULL);
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
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, t, io_finalize, NULL, io_call_js, &t->tsfn) != napi_ok) {
    io_finalize(env, t, NULL);  // stops and joins the thread, frees
    return throw_last(env);
  }
  napi_unref_threadsafe_function(env, t->tsfn);
  return big(env, (uint64_t)(uintptr_t)t);
}

// ioSubmit(handle, id, fd, op, offset, views: Uint8Array[]): 0 | -errno. op 1 write (from views),
// 2 fdatasync (views ignored). The views must stay valid until the completion is reaped: guest
// RAM views are (the mapping lives as long as the VM).
static napi_value js_io_submit(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  get_args(env, info, 6, argv);
  io_thread *t = (io_thread *)(uintptr_t)get_u64(env, argv[0]);
  double id;
  napi_get_value_double(env, argv[1], &id);
  int fd = (int)get_i64(env, argv[2]);
  int op = (int)get_i64(env, argv[3]);
  int64_t offset = get_i64(env, argv[4]);
  uint32_t count = 0;
  bool is_array = false;
  if (op != 2) {
    napi_is_array(env, argv[5], &is_array);
    if (!is_array) return num(env, -EINVAL);
    napi_get_array_length(env, argv[5], &count);
    if (count > IOV_MAX) return num(env, -EINVAL);
  }
  if ((op != 1 && op != 2) || offset < 0) return num(env, -EINVAL);
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
      return num(env, -EINVAL);
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
  io_thread *t = (io_thread *)(uintptr_t)get_u64(env, argv[0]);
  bool keep = false;
  napi_get_value_bool(env, argv[1], &keep);
  napi_status st = keep ? napi_ref_threadsafe_function(env, t->tsfn) : napi_unref_threadsafe_function(env, t->tsfn);
  return num(env, st == napi_ok ? 0 : -EINVAL);
}

// ioReap(handle, out: Float64Array): number of (id, result) pairs written to `out` (2 doubles each). Call
// until it returns 0: then the next completion calls onCompletions again.
static napi_value js_io_reap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  get_args(env, info, 2, argv);
  io_thread *t = (io_thread *)(uintptr_t)get_u64(env, argv[0]);
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value ab;
  size_t byte_offset;
  if (napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &byte_offset) != napi_ok ||
      type != napi_float64_array)
    return num(env, -EINVAL);
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
      {"open", js_open},         {"close", js_close},
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
