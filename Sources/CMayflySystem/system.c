#define _GNU_SOURCE
#include "CMayflySystem.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int mayfly_ficlone(int dest_fd, int source_fd) {
    return ioctl(dest_fd, FICLONE, source_fd);
}

int mayfly_ofd_setlk(int fd, short type, off_t start, off_t length) {
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = start;
    lock.l_len = length;
    return fcntl(fd, F_OFD_SETLK, &lock);
}

int mayfly_ofd_getlk(int fd, short type, off_t start, off_t length, short *conflict_type,
                     off_t *conflict_start, off_t *conflict_length) {
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = start;
    lock.l_len = length;
    int result = fcntl(fd, F_OFD_GETLK, &lock);
    if (result == 0) {
        *conflict_type = lock.l_type;
        *conflict_start = lock.l_start;
        *conflict_length = lock.l_len;
    }
    return result;
}


int mayfly_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int mayfly_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

long long mayfly_trim_file_mappings(void) {
    FILE *smaps = fopen("/proc/self/smaps", "re");
    if (smaps == NULL) return -1;
    enum { capacity = 4096 };
    unsigned long *starts = malloc(sizeof(unsigned long) * capacity * 2);
    if (starts == NULL) {
        fclose(smaps);
        return -1;
    }
    unsigned long *ends = starts + capacity;
    int count = 0;
    long long released = 0;
    unsigned long start = 0, end = 0;
    long long rss = 0, anonymous = 1;
    int candidate = 0;
    char line[4096];
    while (fgets(line, sizeof line, smaps) != NULL) {
        char perms[8] = "";
        char path[4096] = "";
        unsigned long a, b;
        long long kilobytes;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095s", &a, &b, perms, path) >= 3 && strchr(line, ':') != NULL
            && line[0] != 'V' && strlen(perms) == 4) {
            start = a;
            end = b;
            rss = 0;
            anonymous = 1;
            // Private, readable, not writable, backed by a file (code and constants).
            candidate = path[0] == '/' && strncmp(path, "/dev/", 5) != 0 && perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p';
        } else if (sscanf(line, "Rss: %lld kB", &kilobytes) == 1) {
            rss = kilobytes;
        } else if (sscanf(line, "Anonymous: %lld kB", &kilobytes) == 1) {
            anonymous = kilobytes;
        } else if (strncmp(line, "VmFlags:", 8) == 0) {
            int locked = strstr(line, " lo") != NULL;
            if (candidate && anonymous == 0 && rss > 0 && !locked && count < capacity) {
                starts[count] = start;
                ends[count] = end;
                count++;
                released += rss * 1024;
            }
            candidate = 0;
        }
    }
    fclose(smaps);
    for (int i = 0; i < count; i++) {
        (void)madvise((void *)starts[i], ends[i] - starts[i], MADV_DONTNEED);
    }
    free(starts);
    return released;
}
