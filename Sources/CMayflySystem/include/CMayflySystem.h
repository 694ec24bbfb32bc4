// Linux system calls that Swift cannot reach directly because their C entry points are
// variadic (ioctl, fcntl, syscall). Each returns 0 or -1 with errno set, like the call it wraps.
#ifndef MAYFLY_SYSTEM_H
#define MAYFLY_SYSTEM_H

#include <sys/types.h>

/// ioctl(dest, FICLONE, source): a copy-on-write clone of a whole file (btrfs, XFS).
int mayfly_ficlone(int dest_fd, int source_fd);

/// Takes (non-blocking) or releases an open-file-description lock on [start, start+length).
/// type: F_RDLCK, F_WRLCK or F_UNLCK. length 0 means to the end of the file.
int mayfly_ofd_setlk(int fd, short type, off_t start, off_t length);

/// Asks whether an OFD lock of `type` on the range could be taken. On return *conflict_type is
/// F_UNLCK when it could, otherwise the conflicting lock's type and range.
int mayfly_ofd_getlk(int fd, short type, off_t start, off_t length, short *conflict_type,
                     off_t *conflict_start, off_t *conflict_length);

/// pidfd_open(2): a descriptor that names one process for good, even after its pid is reused.
int mayfly_pidfd_open(pid_t pid);

/// pidfd_send_signal(2): signals the process behind a pidfd; ESRCH once it has been reaped.
int mayfly_pidfd_send_signal(int pidfd, int signal);

/// Drops this process's page-table entries for the clean pages of its loaded programs and
/// libraries (the read-only PT_LOAD segments: code and constants) with madvise(MADV_DONTNEED);
/// the pages stay in the page cache and are mapped again on their next use. Only private,
/// read-only, file-backed, unlocked mappings with no written page (resident or swapped) are
/// touched; writable segments (data, RELRO), anonymous memory and files mapped by other code
/// never are. Returns the resident bytes of the mappings it trimmed, or -1 with errno set if
/// /proc/self/smaps cannot be read.
long long mayfly_trim_file_mappings(void);

#endif
