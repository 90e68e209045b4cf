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
    /// Pages already present are skipped.
    pub fn copy(&self, dst: u64, data: &[u8]) -> io::Result<Placed> {
        let len = data.len() as u64;
        let mut done = 0u64;
        while done < len {
            let mut c = Copy {
                dst: dst + done,
                src: data.as_ptr() as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: `src` points into `data` for `len - done` bytes; the kernel
            // writes only into the registered range of the other process.
            let r = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_COPY, &mut c as *mut Copy) };
            if r == 0 {
                return Ok(Placed::Done);
            }
            let err = io::Error::last_os_error();
            if c.copy > 0 {
                done += c.copy as u64;
                continue;
            }
            match err.raw_os_error() {
                // someone placed this page already: go on after it
                Some(libc::EEXIST) => done += PAGE,
                Some(libc::ENOENT) => return Ok(Placed::Gone),
                Some(libc::ESRCH) | Some(libc::ENOSPC) => return Ok(Placed::Exited),
                Some(libc::EAGAIN) => return Ok(Placed::Retry),
                _ => return Err(err),
            }
        }
        Ok(Placed::Done)
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
