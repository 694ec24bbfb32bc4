#define _GNU_SOURCE
#include "CMayflySystem.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
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
