/*
 * fsync-shim — an LD_PRELOAD library for the benchmark (tools/bench/fsync.ts builds it with
 * the machine's gcc into a temp folder; nothing ships it).
 *
 * Counts every fsync() and fdatasync() a process makes, and can make each one slower, so
 * both systems under test are measured on the same simulated disk:
 *   SR_FSYNC_COUNT_FILE  a file whose first 8 bytes are a shared counter (mmap'd, atomic):
 *                        every process of one machine (a node, or all of Postfix's daemons)
 *                        adds to it, also those that are killed or exit without cleaning up
 *   SR_FSYNC_DELAY_US    microseconds added to each call (0 or unset: none)
 *   SR_FSYNC_LOCK_FILE   when set, calls are serialised across every process using that file
 *                        (one flush in the device at a time: a disk without a protected write
 *                        cache); unset, the delays of concurrent calls overlap
 * The delay runs before the real call, while the lock is held.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static _Atomic long long *counter;
static long long delay_ns;
static int lock_fd = -1;
/* flock() does not serialise threads sharing one open file: a process-local mutex does */
static pthread_mutex_t local = PTHREAD_MUTEX_INITIALIZER;

__attribute__((constructor)) static void shim_init(void) {
  real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  const char *d = getenv("SR_FSYNC_DELAY_US");
  delay_ns = d ? atoll(d) * 1000LL : 0;
  const char *f = getenv("SR_FSYNC_COUNT_FILE");
  if (f && *f) {
    int fd = open(f, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) {
      if (lseek(fd, 0, SEEK_END) < 8) {
        long long zero = 0;
        if (pwrite(fd, &zero, sizeof zero, 0) != sizeof zero) { /* counter stays off */ }
      }
      void *p = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) counter = (_Atomic long long *)p;
      close(fd);
    }
  }
  const char *l = getenv("SR_FSYNC_LOCK_FILE");
  if (l && *l) lock_fd = open(l, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
}

static int slow(int (*real)(int), int fd) {
  if (counter) atomic_fetch_add(counter, 1);
  if (delay_ns <= 0) return real(fd);
  int serial = lock_fd >= 0;
  if (serial) {
    pthread_mutex_lock(&local);
    while (flock(lock_fd, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  struct timespec ts = {delay_ns / 1000000000LL, delay_ns % 1000000000LL};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  int saved, r = real(fd);
  saved = errno;
  if (serial) {
    flock(lock_fd, LOCK_UN);
    pthread_mutex_unlock(&local);
  }
  errno = saved;
  return r;
}

int fsync(int fd) {
  if (!real_fsync) real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  return slow(real_fsync, fd);
}

int fdatasync(int fd) {
  if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  return slow(real_fdatasync, fd);
}
