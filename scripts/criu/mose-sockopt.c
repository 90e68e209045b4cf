/*
 * MOSE: let CRIU 4.1 dump and restore inet sockets on Linux >= 6.16.
 *
 * Recent kernels answer getsockopt/setsockopt(SOL_SOCKET, SO_PASSCRED or
 * SO_PASSSEC) with EOPNOTSUPP for sockets other than unix/netlink ones; CRIU
 * 4.1 reads both options from every socket it dumps and aborts ("Can't get
 * 1:16 opt: Operation not supported"), so no TCP service could be
 * checkpointed. These options are always off for such sockets, so reporting
 * 0 (and accepting 0 on restore) is exact. Preloaded into criu only, by the
 * wrapper that scripts/provision-criu.sh installs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_PASSSEC
#define SO_PASSSEC 34
#endif

static int is_cred_opt(int level, int name)
{
	return level == SOL_SOCKET && (name == SO_PASSCRED || name == SO_PASSSEC);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	static int (*real)(int, int, int, void *, socklen_t *);
	if (!real)
		real = (int (*)(int, int, int, void *, socklen_t *))dlsym(RTLD_NEXT, "getsockopt");
	int ret = real(fd, level, name, val, len);
	if (ret < 0 && errno == EOPNOTSUPP && is_cred_opt(level, name) && val && len && *len >= sizeof(int)) {
		memset(val, 0, sizeof(int));
		*len = sizeof(int);
		return 0;
	}
	return ret;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static int (*real)(int, int, int, const void *, socklen_t);
	if (!real)
		real = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
	int ret = real(fd, level, name, val, len);
	if (ret < 0 && errno == EOPNOTSUPP && is_cred_opt(level, name) && val && len >= sizeof(int) &&
	    *(const int *)val == 0)
		return 0;
	return ret;
}
