#define _GNU_SOURCE
#include "CMayflySystem.h"

#include <fcntl.h>
#include <link.h>
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

/// A mapping that may be trimmed: private, read-only, file-backed, unlocked, with no private
/// page (resident or swapped).
struct trim_range {
    unsigned long start, end;
    long long rss_kib;
    int trimmed;
};

struct trim_context {
    struct trim_range *ranges;
    int count;
    unsigned long page;
};

/// For each read-only PT_LOAD segment of each loaded object (code, constants: never RELRO,
/// which lives in a writable segment), drops the pages of the qualifying mappings inside it.
/// Runs under the dynamic loader's lock, so no object can be unloaded meanwhile.
static int trim_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct trim_context *context = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[i];
        if (header->p_type != PT_LOAD || (header->p_flags & PF_W) != 0 || header->p_memsz == 0) continue;
        unsigned long first = (info->dlpi_addr + header->p_vaddr) & ~(context->page - 1);
        unsigned long last = (info->dlpi_addr + header->p_vaddr + header->p_memsz + context->page - 1) & ~(context->page - 1);
        for (int r = 0; r < context->count; r++) {
            struct trim_range *range = &context->ranges[r];
            unsigned long from = range->start > first ? range->start : first;
            unsigned long to = range->end < last ? range->end : last;
            if (from >= to) continue;
            if (madvise((void *)from, to - from, MADV_DONTNEED) == 0) range->trimmed = 1;
        }
    }
    return 0;
}

long long mayfly_trim_file_mappings(void) {
    FILE *smaps = fopen("/proc/self/smaps", "re");
    if (smaps == NULL) return -1;
    enum { capacity = 4096 };
    struct trim_range *ranges = calloc(capacity, sizeof(struct trim_range));
    if (ranges == NULL) {
        fclose(smaps);
        return -1;
    }
    int count = 0;
    unsigned long start = 0, end = 0;
    long long rss = 0, anonymous = 1, swapped = 1;
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
            swapped = 1;
            // Private, readable, not writable, backed by a file (code and constants).
            candidate = path[0] == '/' && strncmp(path, "/dev/", 5) != 0 && perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p';
        } else if (sscanf(line, "Rss: %lld kB", &kilobytes) == 1) {
            rss = kilobytes;
        } else if (sscanf(line, "Anonymous: %lld kB", &kilobytes) == 1) {
            anonymous = kilobytes;
        } else if (sscanf(line, "Swap: %lld kB", &kilobytes) == 1) {
            swapped = kilobytes;
        } else if (strncmp(line, "VmFlags:", 8) == 0) {
            int locked = strstr(line, " lo") != NULL;
            // A private page that was written (copy-on-write) counts as Anonymous while resident
            // and as Swap once swapped out: either way the mapping is left alone.
            if (candidate && anonymous == 0 && swapped == 0 && rss > 0 && !locked && count < capacity) {
                ranges[count] = (struct trim_range){.start = start, .end = end, .rss_kib = rss, .trimmed = 0};
                count++;
            }
            candidate = 0;
        }
    }
    fclose(smaps);
    struct trim_context context = {.ranges = ranges, .count = count, .page = (unsigned long)sysconf(_SC_PAGESIZE)};
    if (count > 0) dl_iterate_phdr(trim_object, &context);
    long long released = 0;
    for (int i = 0; i < count; i++) {
        if (ranges[i].trimmed) released += ranges[i].rss_kib * 1024;
    }
    free(ranges);
    return released;
}
