/* Runs a command and reports its cost as one JSON line on stderr (or -o FILE): wall time (monotonic clock
 * around fork..wait), user and system CPU and peak RSS from wait4(2), and the exit status. stdin is /dev/null
 * and stdout is discarded unless -k is given. Usage: rusage [-o FILE] [-k] -- COMMAND ARGS... */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  const char *outfile = 0;
  int keep = 0, i = 1;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "-o") && i + 1 < argc) outfile = argv[++i];
    else if (!strcmp(argv[i], "-k")) keep = 1;
    else if (!strcmp(argv[i], "--")) { i++; break; }
    else break;
  }
  if (i >= argc) { fprintf(stderr, "usage: rusage [-o FILE] [-k] -- COMMAND ARGS...\n"); return 2; }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    if (!keep) dup2(null, 1);
    execvp(argv[i], argv + i);
    _exit(127);
  }
  int status;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  FILE *out = outfile ? fopen(outfile, "w") : stderr;
  fprintf(out, "{\"wall_us\":%.1f,\"user_us\":%ld,\"sys_us\":%ld,\"maxrss_kib\":%ld,\"status\":%d}\n",
          (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3,
          ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec, ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec,
          ru.ru_maxrss, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  return 0;
}
