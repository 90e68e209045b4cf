//! The few userfaultfd operations a lazy-page handler needs, on a descriptor
//! CRIU's restore opened and handed over (`linux/userfaultfd.h`).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

const PAGE: u64 = 4096;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

// _IOC(dir, 0xAA, nr, size): dir 2 = read, 3 = read|write
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct ZeroPage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// What a restored process's memory reported.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page at `addr`.
    Fault { addr: u64 },
    /// The process forked: the child's memory reports on `uffd`.
    Fork { uffd: Uffd },
    /// `mremap` moved a range.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise(MADV_DONTNEED/REMOVE)`: the range is empty now, and stays registered.
    Remove { start: u64, end: u64 },
    /// `munmap`: the range is gone.
    Unmap { start: u64, end: u64 },
}

/// How placing pages ended when it did not place them all.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// Every byte is in place (or already was).
    Done,
    /// The range is no longer mapped: nothing to place.
    Gone,
    /// The process exited.
    Exited,
    /// The address space is changing (fork, mremap in flight): read the
    /// pending events, then try again.
    Retry,
}

/// A userfaultfd descriptor.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Uffd {
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Reads one event; `Ok(None)` when none is pending or the process is gone.
    pub fn read(&self) -> io::Result<Option<Event>> {
        let mut msg = [0u8; 32];
        // SAFETY: reading into a buffer of the size the kernel writes.
        let n = unsafe { libc::read(self.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(None);
        }
        if n != 32 {
            return Err(io::Error::other(format!(
                "short userfaultfd message ({n} bytes)"
            )));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&msg[o..o + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Some(match msg[0] {
            EVENT_PAGEFAULT => Event::Fault { addr: u64_at(16) },
            EVENT_FORK => {
                let fd = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]) as RawFd;
                // SAFETY: the kernel installed this descriptor for us with the event.
                Event::Fork {
                    uffd: Uffd(unsafe { OwnedFd::from_raw_fd(fd) }),
                }
            }
            EVENT_REMAP => Event::Remap {
                from: u64_at(8),
                to: u64_at(16),
                len: u64_at(24),
            },
            EVENT_REMOVE => Event::Remove {
                start: u64_at(8),
                end: u64_at(16),
            },
            EVENT_UNMAP => Event::Unmap {
                start: u64_at(8),
                end: u64_at(16),
            },
            other => {
                return Err(io::Error::other(format!(
                    "unexpected userfaultfd event {other:#x}"
                )))
            }
        }))
    }

    /// Copies `data` (whole pages) to `dst` and wakes the threads waiting there.
    /// Pages already present are skipped. A range that spans two mappings
    /// (one copy must stay inside one) is placed a page at a time, and pages
    /// no longer mapped are skipped.
    pub fn copy(&self, dst: u64, data: &[u8]) -> io::Result<Placed> {
        let len = data.len() as u64;
        let mut done = 0u64;
        let mut step = len;
        let mut gone = 0u64;
        while done < len {
            let mut c = Copy {
                dst: dst + done,
                src: data.as_ptr() as u64 + done,
                len: step.min(len - done),
                mode: 0,
                copy: 0,
            };
            // SAFETY: `src` points into `data` for `len - done` bytes; the kernel
            // writes only into the registered range of the other process.
            let r = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_COPY, &mut c as *mut Copy) };
            if r == 0 {
                done += c.len;
                continue;
            }
            let err = io::Error::last_os_error();
            if c.copy > 0 {
                done += c.copy as u64;
                continue;
            }
            match err.raw_os_error() {
                // someone placed this page already: go on after it
                Some(libc::EEXIST) => done += PAGE,
                // not (wholly) inside one mapping: go page by page; a single
                // page without a mapping is gone (unmapped meanwhile)
                Some(libc::ENOENT) if step > PAGE => step = PAGE,
                Some(libc::ENOENT) => {
                    gone += PAGE;
                    done += PAGE;
                }
                Some(libc::ESRCH) | Some(libc::ENOSPC) => return Ok(Placed::Exited),
                Some(libc::EAGAIN) => return Ok(Placed::Retry),
                _ => return Err(err),
            }
        }
        Ok(if gone == len {
            Placed::Gone
        } else {
            Placed::Done
        })
    }

    /// Maps the zero page at `addr` (a page the checkpoint did not hold).
    pub fn zero(&self, addr: u64) -> io::Result<Placed> {
        let mut z = ZeroPage {
            range: Range {
                start: addr,
                len: PAGE,
            },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: plain ioctl on a struct of the kernel's layout.
        let r = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z as *mut ZeroPage) };
        if r == 0 {
            return Ok(Placed::Done);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EEXIST) => Ok(Placed::Done),
            Some(libc::ENOENT) => Ok(Placed::Gone),
            Some(libc::ESRCH) | Some(libc::ENOSPC) => Ok(Placed::Exited),
            Some(libc::EAGAIN) => Ok(Placed::Retry),
            _ => Err(err),
        }
    }

    /// Stops reporting faults in `start..end` (after `MADV_DONTNEED`, the
    /// range must fill with zeros, not old content).
    pub fn unregister(&self, start: u64, end: u64) -> io::Result<()> {
        let mut r = Range {
            start,
            len: end.saturating_sub(start),
        };
        // SAFETY: plain ioctl on a struct of the kernel's layout.
        let rc = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_UNREGISTER, &mut r as *mut Range) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // the process is gone
            Some(libc::ENOMEM) | Some(libc::ESRCH) => Ok(()),
            _ => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
    const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;

    /// A userfaultfd registered (missing mode) over `len` bytes at `addr`,
    /// or None where this process may not open one.
    fn registered(addr: u64, len: u64) -> Option<Uffd> {
        // SAFETY: plain syscalls and ioctls on structs of the kernel's layout.
        unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK);
            if fd < 0 {
                eprintln!("no userfaultfd here: {}", io::Error::last_os_error());
                return None;
            }
            let u = Uffd(OwnedFd::from_raw_fd(fd as RawFd));
            let mut api = [0xAAu64, 0, 0];
            assert_eq!(libc::ioctl(u.as_raw_fd(), UFFDIO_API, api.as_mut_ptr()), 0);
            let mut reg = [addr, len, 1u64, 0];
            assert_eq!(
                libc::ioctl(u.as_raw_fd(), UFFDIO_REGISTER, reg.as_mut_ptr()),
                0,
                "register: {}",
                io::Error::last_os_error()
            );
            Some(u)
        }
    }

    fn resident(addr: u64, pages: usize) -> Vec<bool> {
        let mut v = vec![0u8; pages];
        // SAFETY: mincore on our own mapping.
        let r = unsafe {
            libc::mincore(
                addr as *mut libc::c_void,
                pages * PAGE as usize,
                v.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        v.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn copy_spans_two_mappings_and_skips_pages_already_there() {
        let len = 4 * PAGE;
        // SAFETY: a private anonymous mapping of our own, split into two
        // mappings (MADV_DONTFORK changes the second half's flags).
        let base = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let half = (p as u64 + 2 * PAGE) as *mut libc::c_void;
            assert_eq!(
                libc::madvise(half, 2 * PAGE as usize, libc::MADV_DONTFORK),
                0
            );
            p as u64
        };
        let Some(u) = registered(base, len) else {
            return;
        };
        let data: Vec<u8> = (0..len as usize).map(|i| (i / 7) as u8).collect();
        // pages 1..3 cross the boundary between the two mappings
        assert_eq!(
            u.copy(base + PAGE, &data[PAGE as usize..3 * PAGE as usize])
                .unwrap(),
            Placed::Done
        );
        assert_eq!(resident(base, 4), vec![false, true, true, false]);
        // again, over what is there already, plus the rest
        assert_eq!(u.copy(base, &data).unwrap(), Placed::Done);
        assert_eq!(resident(base, 4), vec![true; 4]);
        // SAFETY: every page is resident now: reading faults on nothing.
        let got = unsafe { std::slice::from_raw_parts(base as *const u8, len as usize) };
        assert_eq!(got, &data[..]);
        assert_eq!(u.zero(base).unwrap(), Placed::Done, "present: left as is");
    }
}
