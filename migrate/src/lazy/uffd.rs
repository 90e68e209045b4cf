//! The few userfaultfd operations a lazy-page handler needs, on a descriptor
//! CRIU's restore opened and handed over.
//!
//! The `userfaultfd` crate issues the ioctls (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`,
//! `UFFDIO_UNREGISTER`) and reads and decodes the `uffd_msg` events. What MOSE
//! keeps here is what their outcomes mean for a restored process: a copy that
//! stops part-way goes on after what was placed, a range that spans two
//! mappings is placed a page at a time, pages already there or no longer
//! mapped are skipped, and a process whose address space is changing, or that
//! exited, says so instead of failing ([`Placed`]).

use std::{
    ffi::c_void,
    fmt, io,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    ptr,
};

use nix::errno::Errno;
use userfaultfd::Error as UffdError;

const PAGE: u64 = 4096;

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

impl From<userfaultfd::Event> for Event {
    fn from(ev: userfaultfd::Event) -> Self {
        // the addresses are the restored process's, not ours: numbers only
        let at = |p: *mut c_void| p as usize as u64;
        match ev {
            userfaultfd::Event::Pagefault { addr, .. } => Event::Fault { addr: at(addr) },
            userfaultfd::Event::Fork { uffd } => Event::Fork { uffd: Uffd(uffd) },
            userfaultfd::Event::Remap { from, to, len } => Event::Remap {
                from: at(from),
                to: at(to),
                len: len as u64,
            },
            userfaultfd::Event::Remove { start, end } => Event::Remove {
                start: at(start),
                end: at(end),
            },
            userfaultfd::Event::Unmap { start, end } => Event::Unmap {
                start: at(start),
                end: at(end),
            },
        }
    }
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
pub struct Uffd(userfaultfd::Uffd);

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An address in the restored process, as the crate's ioctls take it (never
/// dereferenced on this side).
fn remote(addr: u64) -> *mut c_void {
    ptr::without_provenance_mut(addr as usize)
}

/// The errno a failed crate call carries, where it carries one.
fn errno_of(e: &UffdError) -> Option<Errno> {
    match e {
        UffdError::CopyFailed(n) | UffdError::ZeropageFailed(n) | UffdError::SystemError(n) => {
            Some(Errno::from_raw(*n as i32))
        }
        _ => None,
    }
}

/// `op` failed: an error naming the operation and the range, with the errno
/// (as the OS error's kind and text) where there is one.
fn failed(op: impl fmt::Display, e: &UffdError) -> io::Error {
    match errno_of(e) {
        Some(n) => os_failed(op, n),
        None => io::Error::other(format!("{op}: {e}")),
    }
}

fn os_failed(op: impl fmt::Display, n: Errno) -> io::Error {
    let os = io::Error::from_raw_os_error(n as i32);
    io::Error::new(os.kind(), format!("{op}: {os}"))
}

impl Uffd {
    /// Takes over a descriptor CRIU handed over (`SCM_RIGHTS`).
    pub fn from_owned(fd: OwnedFd) -> Self {
        // SAFETY: `fd` is an open descriptor we own; `into_raw_fd` gives its
        // ownership up, and the crate's `Uffd` closes it once, when dropped.
        Self(unsafe { userfaultfd::Uffd::from_raw_fd(fd.into_raw_fd()) })
    }

    /// Reads one event; `Ok(None)` when none is pending or the process is gone.
    pub fn read(&self) -> io::Result<Option<Event>> {
        match self.0.read_event() {
            Ok(ev) => Ok(ev.map(Event::from)),
            // end of file: nothing will report on this descriptor any more
            Err(UffdError::ReadEof) => Ok(None),
            Err(e) => Err(failed(
                format_args!("reading userfaultfd {}", self.as_raw_fd()),
                &e,
            )),
        }
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
            let at = dst + done;
            let n = step.min(len - done);
            let src = data[done as usize..].as_ptr();
            // SAFETY: `src` points into `data` for `len - done >= n` bytes,
            // which the kernel only reads; `at` is an address in the restored
            // process's registered range, where the kernel writes nothing but
            // the missing pages, and nothing on this side refers to it.
            let r = unsafe { self.0.copy(src.cast(), remote(at), n as usize, true) };
            let e = match r {
                Ok(_) => {
                    done += n;
                    continue;
                }
                // stopped part-way (a page there already, or a signal): the
                // pages before were placed and woken; go on after them
                Err(UffdError::PartiallyCopied(c)) if (c as i64) > 0 => {
                    done += c as u64;
                    continue;
                }
                // EAGAIN with nothing placed: the crate hands the kernel's
                // count on, here -EAGAIN
                Err(UffdError::PartiallyCopied(_)) => Errno::EAGAIN,
                Err(ref e) => match errno_of(e) {
                    Some(n) => n,
                    None => {
                        return Err(failed(
                            format_args!("UFFDIO_COPY of {n} bytes to {at:#x}"),
                            e,
                        ))
                    }
                },
            };
            match e {
                // someone placed this page already: go on after it
                Errno::EEXIST => done += PAGE,
                // not (wholly) inside one mapping: go page by page; a single
                // page without a mapping is gone (unmapped meanwhile)
                Errno::ENOENT if step > PAGE => step = PAGE,
                Errno::ENOENT => {
                    gone += PAGE;
                    done += PAGE;
                }
                Errno::ESRCH | Errno::ENOSPC => return Ok(Placed::Exited),
                Errno::EAGAIN => return Ok(Placed::Retry),
                _ => {
                    return Err(os_failed(
                        format_args!("UFFDIO_COPY of {n} bytes to {at:#x}"),
                        e,
                    ))
                }
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
        // SAFETY: `addr` is a page in the restored process's registered
        // range; the kernel maps the zero page there only if it is missing,
        // and nothing on this side refers to it.
        let r = unsafe { self.0.zeropage(remote(addr), PAGE as usize, true) };
        let Err(e) = r else {
            return Ok(Placed::Done);
        };
        match errno_of(&e) {
            Some(Errno::EEXIST) => Ok(Placed::Done),
            Some(Errno::ENOENT) => Ok(Placed::Gone),
            Some(Errno::ESRCH) | Some(Errno::ENOSPC) => Ok(Placed::Exited),
            Some(Errno::EAGAIN) => Ok(Placed::Retry),
            _ => Err(failed(format_args!("UFFDIO_ZEROPAGE at {addr:#x}"), &e)),
        }
    }

    /// Stops reporting faults in `start..end` (after `MADV_DONTNEED`, the
    /// range must fill with zeros, not old content).
    pub fn unregister(&self, start: u64, end: u64) -> io::Result<()> {
        let len = end.saturating_sub(start);
        match self.0.unregister(remote(start), len as usize) {
            Ok(()) => Ok(()),
            Err(e) => match errno_of(&e) {
                // the process is gone
                Some(Errno::ENOMEM) | Some(Errno::ESRCH) => Ok(()),
                _ => Err(failed(
                    format_args!("UFFDIO_UNREGISTER of {start:#x}..{end:#x}"),
                    &e,
                )),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    use userfaultfd::{FeatureFlags, UffdBuilder};

    use super::*;

    /// A private anonymous mapping of our own, unmapped on drop.
    pub(crate) struct Mapping {
        pub addr: u64,
        pub len: u64,
    }

    impl Mapping {
        pub fn new(pages: u64) -> Self {
            let len = pages * PAGE;
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            Self {
                addr: p as u64,
                len,
            }
        }

        pub fn page(&self, i: u64) -> u64 {
            self.addr + i * PAGE
        }

        /// For a range the test unmapped or moved away itself: unmapping it
        /// again could hit what another test mapped there since.
        pub fn forget(self) {
            std::mem::forget(self);
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping what `new` mapped (a range already unmapped
            // or moved away is no error).
            unsafe { libc::munmap(self.addr as *mut c_void, self.len as usize) };
        }
    }

    /// A userfaultfd from the crate's builder (non-blocking, as CRIU opens
    /// them), with `features` negotiated, or None where this process may
    /// not open one.
    pub(crate) fn open(features: FeatureFlags) -> Option<userfaultfd::Uffd> {
        match UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(true)
            .require_features(features)
            .create()
        {
            Ok(u) => Some(u),
            Err(e) => match errno_of(&e) {
                Some(Errno::EPERM) | Some(Errno::ENOSYS) | Some(Errno::EACCES) => {
                    eprintln!("no userfaultfd here: {}", failed("userfaultfd", &e));
                    None
                }
                _ => panic!("{}", failed("creating a userfaultfd", &e)),
            },
        }
    }

    /// A userfaultfd registered (missing mode) over all of `m`.
    fn registered(m: &Mapping, features: FeatureFlags) -> Option<Uffd> {
        let u = open(features)?;
        if let Err(e) = u.register(m.addr as *mut c_void, m.len as usize) {
            panic!("{}", failed("UFFDIO_REGISTER", &e));
        }
        Some(Uffd(u))
    }

    /// Waits (at most `within`) until `fd` has something to read.
    pub(crate) fn readable(fd: RawFd, within: Duration) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, for the length given.
        let n = unsafe { libc::poll(&mut p, 1, within.as_millis() as i32) };
        n > 0
    }

    /// The next event, waiting for it (at most 10 s).
    fn next(u: &Uffd) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(ev) = u.read().expect("reading the userfaultfd") {
                return ev;
            }
            assert!(Instant::now() < deadline, "no userfaultfd event in 10 s");
            readable(u.as_raw_fd(), Duration::from_millis(100));
        }
    }

    fn resident(addr: u64, pages: usize) -> Vec<bool> {
        let mut v = vec![0u8; pages];
        // SAFETY: mincore on our own mapping, one byte per page.
        let r =
            unsafe { libc::mincore(addr as *mut c_void, pages * PAGE as usize, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().map(|b| b & 1 == 1).collect()
    }

    /// The bytes at `addr`: every page there must be resident (or not
    /// registered), or this blocks on a fault nobody answers.
    fn bytes(addr: u64, len: u64) -> Vec<u8> {
        // SAFETY: our own mapping, readable, and no one writes it meanwhile.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }.to_vec()
    }

    /// Reads the byte at `addr` on a thread of its own: the fault it takes
    /// waits for an answer while the test serves it.
    pub(crate) fn toucher(addr: u64) -> mpsc::Receiver<u8> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // SAFETY: a readable byte of a mapping the test keeps alive.
            let b = unsafe { ptr::read_volatile(addr as *const u8) };
            let _ = tx.send(b);
        });
        rx
    }

    fn pattern(pages: u64, seed: u8) -> Vec<u8> {
        (0..pages * PAGE)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_fault_is_read_and_answered_with_a_copy() {
        let m = Mapping::new(2);
        let Some(u) = registered(&m, FeatureFlags::empty()) else {
            return;
        };
        assert!(u.read().unwrap().is_none(), "nothing pending yet");
        let got = toucher(m.page(1) + 100);
        let Event::Fault { addr } = next(&u) else {
            panic!("not a fault");
        };
        assert_eq!(addr & !(PAGE - 1), m.page(1));
        let data = pattern(1, 7);
        assert_eq!(u.copy(m.page(1), &data).unwrap(), Placed::Done);
        let b = got.recv_timeout(Duration::from_secs(10)).expect("woken");
        assert_eq!(b, data[100]);
        assert_eq!(resident(m.addr, 2), vec![false, true]);
    }

    #[test]
    fn a_fault_answered_with_the_zero_page_reads_zeros() {
        let m = Mapping::new(1);
        let Some(u) = registered(&m, FeatureFlags::empty()) else {
            return;
        };
        let got = toucher(m.addr + 5);
        let Event::Fault { addr } = next(&u) else {
            panic!("not a fault");
        };
        assert_eq!(u.zero(addr & !(PAGE - 1)).unwrap(), Placed::Done);
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        // present now: both leave it as it is
        assert_eq!(u.zero(m.addr).unwrap(), Placed::Done);
        assert_eq!(u.copy(m.addr, &pattern(1, 1)).unwrap(), Placed::Done);
        assert_eq!(bytes(m.addr, PAGE), vec![0u8; PAGE as usize]);
    }

    #[test]
    fn copy_spans_two_mappings_and_skips_pages_already_there() {
        let m = Mapping::new(4);
        // MADV_DONTFORK changes the second half's flags: two mappings
        // SAFETY: madvise on our own mapping.
        let r = unsafe {
            libc::madvise(
                m.page(2) as *mut c_void,
                2 * PAGE as usize,
                libc::MADV_DONTFORK,
            )
        };
        assert_eq!(r, 0);
        let Some(u) = registered(&m, FeatureFlags::empty()) else {
            return;
        };
        let data = pattern(4, 0);
        // pages 1..3 cross the boundary between the two mappings
        assert_eq!(
            u.copy(m.page(1), &data[PAGE as usize..3 * PAGE as usize])
                .unwrap(),
            Placed::Done
        );
        assert_eq!(resident(m.addr, 4), vec![false, true, true, false]);
        // again, over what is there already, plus the rest
        assert_eq!(u.copy(m.addr, &data).unwrap(), Placed::Done);
        assert_eq!(resident(m.addr, 4), vec![true; 4]);
        assert_eq!(bytes(m.addr, m.len), data);
        assert_eq!(u.zero(m.addr).unwrap(), Placed::Done, "present: left as is");
    }

    #[test]
    fn a_copy_stopped_part_way_goes_on_after_what_it_placed() {
        let m = Mapping::new(6);
        let Some(u) = registered(&m, FeatureFlags::empty()) else {
            return;
        };
        let old = pattern(6, 1);
        let new = pattern(6, 2);
        let p = PAGE as usize;
        for i in [1, 4] {
            let page = &old[i * p..(i + 1) * p];
            assert_eq!(u.copy(m.page(i as u64), page).unwrap(), Placed::Done);
        }
        // the kernel places page 0, stops at page 1 and says how far it
        // came: the crate hands that count on
        // SAFETY: `new` holds six pages; the destination is our own
        // registered mapping, which nothing refers to.
        let r = unsafe { u.0.copy(new.as_ptr().cast(), remote(m.addr), 2 * p, true) };
        assert!(
            matches!(r, Err(UffdError::PartiallyCopied(c)) if c == p),
            "{r:?}"
        );
        assert_eq!(
            resident(m.addr, 6),
            vec![true, true, false, false, true, false]
        );
        // pages 2 and 3 go in, the copy stops at 4: MOSE goes on after
        // what it placed, then after the page there already
        assert_eq!(u.copy(m.page(2), &new[2 * p..]).unwrap(), Placed::Done);
        assert_eq!(resident(m.addr, 6), vec![true; 6]);
        let mut want = new.clone();
        for i in [1, 4] {
            want[i * p..(i + 1) * p].copy_from_slice(&old[i * p..(i + 1) * p]);
        }
        assert_eq!(bytes(m.addr, m.len), want);
    }

    #[test]
    fn an_unmapped_range_is_gone() {
        let m = Mapping::new(2);
        let Some(u) = registered(&m, FeatureFlags::empty()) else {
            return;
        };
        let (addr, len) = (m.addr, m.len);
        m.forget();
        // SAFETY: unmapping our own mapping, which nothing refers to.
        let r = unsafe { libc::munmap(addr as *mut c_void, len as usize) };
        assert_eq!(r, 0);
        // (were something else mapped there meanwhile, it would not be
        // registered with this descriptor: gone all the same)
        assert_eq!(u.copy(addr, &pattern(2, 3)).unwrap(), Placed::Gone);
        assert_eq!(u.zero(addr).unwrap(), Placed::Gone);
    }

    #[test]
    fn pending_remove_asks_for_a_retry_then_unregister_leaves_zeros() {
        let m = Mapping::new(2);
        let Some(u) = registered(&m, FeatureFlags::EVENT_REMOVE) else {
            return;
        };
        let p = PAGE as usize;
        assert_eq!(u.copy(m.addr, &pattern(1, 4)).unwrap(), Placed::Done);
        // MADV_DONTNEED waits until the event is read; meanwhile the
        // address space is changing
        let (start, end) = (m.page(0), m.page(1));
        let dontneed = thread::spawn(move || {
            // SAFETY: madvise on the test's own mapping.
            unsafe { libc::madvise(start as *mut c_void, PAGE as usize, libc::MADV_DONTNEED) }
        });
        assert!(readable(u.as_raw_fd(), Duration::from_secs(10)));
        let data = pattern(1, 5);
        // the crate passes the kernel's -EAGAIN count on as a partial copy
        // SAFETY: `data` holds a page; the destination is our own
        // registered mapping, which nothing refers to.
        let r = unsafe { u.0.copy(data.as_ptr().cast(), remote(m.page(1)), p, true) };
        assert!(
            matches!(r, Err(UffdError::PartiallyCopied(c)) if c as i64 == -(libc::EAGAIN as i64)),
            "{r:?}"
        );
        assert_eq!(u.copy(m.page(1), &data).unwrap(), Placed::Retry);
        assert_eq!(u.zero(m.page(1)).unwrap(), Placed::Retry);
        match next(&u) {
            Event::Remove { start: s, end: e } => assert_eq!((s, e), (start, end)),
            ev => panic!("not a remove: {ev:?}"),
        }
        assert_eq!(dontneed.join().unwrap(), 0);
        // the events are read: placing goes through
        assert_eq!(u.copy(m.page(1), &data).unwrap(), Placed::Done);
        u.unregister(start, end).unwrap();
        // no longer registered: the discarded page reads zeros, no fault
        let got = toucher(start + 9);
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        assert!(u.read().unwrap().is_none());
        assert_eq!(bytes(m.page(1), PAGE), data);
    }

    #[test]
    fn remap_and_unmap_are_reported_with_their_ranges() {
        let m = Mapping::new(4);
        let target = Mapping::new(2);
        let Some(u) = registered(&m, FeatureFlags::EVENT_REMAP | FeatureFlags::EVENT_UNMAP) else {
            return;
        };
        let (base, to) = (m.addr, target.addr);
        // moved and unmapped below
        m.forget();
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            // SAFETY: moving and unmapping the test's own mappings; the
            // test reads neither range afterwards.
            let (moved, unmapped) = unsafe {
                let moved = libc::mremap(
                    base as *mut c_void,
                    2 * PAGE as usize,
                    2 * PAGE as usize,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut c_void,
                );
                let unmapped = libc::munmap((base + 2 * PAGE) as *mut c_void, 2 * PAGE as usize);
                (moved as u64, unmapped)
            };
            let _ = done_tx.send((moved, unmapped));
        });
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (moved, unmapped) = loop {
            while let Some(ev) = u.read().unwrap() {
                events.push(ev);
            }
            if let Ok(r) = done.try_recv() {
                break r;
            }
            assert!(Instant::now() < deadline, "mremap/munmap still waiting");
            readable(u.as_raw_fd(), Duration::from_millis(50));
        };
        assert_eq!((moved, unmapped), (to, 0));
        assert!(
            events.iter().any(|e| matches!(e,
                Event::Remap { from, to: t, len } if (*from, *t, *len) == (base, to, 2 * PAGE))),
            "{events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(e,
                Event::Unmap { start, end } if (*start, *end) == (base + 2 * PAGE, base + 4 * PAGE))),
            "{events:?}"
        );
    }

    #[test]
    fn fork_hands_the_child_a_descriptor_of_its_own() {
        let m = Mapping::new(1);
        let Some(u) = registered(&m, FeatureFlags::EVENT_FORK) else {
            return;
        };
        let forker = thread::spawn(|| {
            // SAFETY: the child only calls _exit, which is async-signal-safe.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            pid
        });
        let child = match next(&u) {
            Event::Fork { uffd } => uffd,
            ev => panic!("not a fork: {ev:?}"),
        };
        let pid = forker.join().unwrap();
        assert!(pid > 0, "fork: {}", io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: reaping the child we forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_ne!(child.as_raw_fd(), u.as_raw_fd());
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        assert!(unsafe { libc::fcntl(child.as_raw_fd(), libc::F_GETFD) } >= 0);
        // the child is gone: nothing for it to report, and no error
        assert!(child.read().unwrap().is_none());
    }
}
