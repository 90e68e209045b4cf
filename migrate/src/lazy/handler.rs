//! MOSE's lazy-page handler: takes the userfaultfd of every restored process
//! from CRIU (`criu restore --lazy-pages` connects to `lazy-pages.socket` in
//! its work directory and sends, per process, its checkpoint pid as an `int`
//! and then the descriptor; a final `RSTF` word says the restore finished),
//! then places pages as they arrive and reports the faults nobody has served.
//!
//! The handler runs on its own thread and never lets go of a descriptor while
//! the container may still fault: if the descriptors closed, the kernel would
//! fill missing pages with zeros, silently. On failure it reports, then keeps
//! everything open until [`Handler::stop`], which the session calls only after
//! it has killed the container.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::{self, IoSliceMut},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mose_wire::LazyStats;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tracing::{debug, info, warn};

use super::{
    iov::Iovs,
    pagemap::LazyProcess,
    uffd::{Event, Placed, Uffd},
};

/// Why MOSE's lazy-page handler could not start, take a delivery, or go on
/// serving CRIU's restored processes.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("listening for CRIU on {}", .socket.display())]
    Listen {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the handler's eventfd")]
    Eventfd {
        #[source]
        source: io::Error,
    },
    #[error("starting the lazy-page handler thread")]
    Thread {
        #[source]
        source: io::Error,
    },
    #[error("the lazy-page handler has stopped")]
    Stopped,
    #[error("poll")]
    Poll {
        #[source]
        source: io::Error,
    },
    #[error("accepting CRIU's lazy-pages connection")]
    Accept {
        #[source]
        source: io::Error,
    },
    #[error("CRIU's message")]
    CriuMessage {
        #[source]
        source: nix::Error,
    },
    #[error("reading CRIU's lazy-pages socket")]
    ReadSocket {
        #[source]
        source: nix::Error,
    },
    #[error("CRIU closed the lazy-pages socket before the restore finished (see the restore log)")]
    SocketClosed,
    #[error("no descriptor")]
    NoDescriptor,
    #[error("answering pid {pid}'s fault at {page:#x} with the zero page")]
    ZeroPage {
        pid: u32,
        page: u64,
        #[source]
        source: io::Error,
    },
    #[error("unregistering {start:#x}..{end:#x} of pid {pid}, discarded by madvise")]
    Unregister {
        pid: u32,
        start: u64,
        end: u64,
        #[source]
        source: io::Error,
    },
    #[error("pages for pid {pid} which the checkpoint has no lazy memory for")]
    UnknownPid { pid: u32 },
    #[error("placing pages at {addr:#x} in pid {pid}")]
    Place {
        pid: u32,
        addr: u64,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = HandlerError> = std::result::Result<T, E>;

const PAGE: u64 = 4096;
/// Bulk deliveries placed between two looks at the userfaultfds.
const BULK_BATCH: usize = 16;
/// What CRIU sends once the restore is complete ("RSTF").
const RESTORE_FINISHED: i32 = 0x5253_5446;

/// Where a placed page came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Source,
    Cache,
}

/// Pages for one process (checkpoint pid), contiguous from `vaddr`.
pub struct Delivery {
    pub pid: u32,
    pub vaddr: u64,
    pub data: Vec<u8>,
    pub origin: Origin,
    /// How many of these pages are zero pages.
    pub zero_pages: u64,
}

/// What the handler tells the session.
#[derive(Debug)]
pub enum Report {
    /// A process faulted on a page nobody sent yet.
    Request { pid: u32, vaddr: u64, pages: u32 },
    /// CRIU finished restoring (every process's descriptor is here).
    RestoreFinished,
    /// Every lazy page is in place (or its process exited).
    Done(LazyStats),
    /// The handler cannot go on; the container must be stopped.
    Failed(String),
}

/// A running handler.
pub struct Handler {
    tx: mpsc::Sender<Delivery>,
    urgent: mpsc::Sender<Delivery>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
}

impl Handler {
    /// Listens on `socket` (CRIU must find it in its work directory) and
    /// serves the processes of `layout`.
    pub fn start(
        socket: &Path,
        layout: Vec<LazyProcess>,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| HandlerError::Listen {
                socket: socket.to_path_buf(),
                source,
            })?;
        // SAFETY: eventfd returns a fresh descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(HandlerError::Eventfd {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let (tx, rx) = mpsc::channel();
        let (urgent, urgent_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut lp = Loop {
            listener,
            conn: None,
            buf: Vec::new(),
            fds: VecDeque::new(),
            layout: layout.into_iter().map(|p| (p.pid, p)).collect(),
            procs: Vec::new(),
            waiting: HashMap::new(),
            requested: HashSet::new(),
            latencies: Vec::new(),
            parked: Vec::new(),
            finished_at: None,
            backlog: false,
            stats: LazyStats::default(),
            rx,
            urgent_rx,
            wake: wake.clone(),
            stop: stop.clone(),
            reports,
        };
        let thread = std::thread::Builder::new()
            .name("mose-lazy-pages".into())
            .spawn(move || lp.run())
            .map_err(|source| HandlerError::Thread { source })?;
        Ok(Self {
            tx,
            urgent,
            wake,
            stop,
            thread: Some(thread),
            socket: socket.to_path_buf(),
        })
    }

    /// Hands pages to the handler thread, behind those already queued.
    pub fn deliver(&self, d: Delivery) -> Result<()> {
        self.tx.send(d).map_err(|_| HandlerError::Stopped)?;
        poke(&self.wake);
        Ok(())
    }

    /// Hands pages a process waits for to the handler thread, ahead of bulk
    /// deliveries (a fault must not queue behind a cache prefill).
    pub fn deliver_urgent(&self, d: Delivery) -> Result<()> {
        self.urgent.send(d).map_err(|_| HandlerError::Stopped)?;
        poke(&self.wake);
        Ok(())
    }

    /// Ends the handler and closes every descriptor. Only call once the
    /// container is stopped or every page is in place.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        poke(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn poke(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

struct Proc {
    pid: u32,
    uffd: Uffd,
    iovs: Iovs,
    exited: bool,
}

struct Loop {
    listener: UnixListener,
    conn: Option<UnixStream>,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    layout: HashMap<u32, LazyProcess>,
    procs: Vec<Proc>,
    /// Faulted pages (pid, checkpoint address) and since when.
    waiting: HashMap<(u32, u64), Instant>,
    requested: HashSet<(u32, u64)>,
    latencies: Vec<u64>,
    /// Deliveries that could not be placed yet (process not handed over, or
    /// its address space was changing).
    parked: Vec<Delivery>,
    finished_at: Option<Instant>,
    stats: LazyStats,
    rx: mpsc::Receiver<Delivery>,
    urgent_rx: mpsc::Receiver<Delivery>,
    /// Bulk deliveries still queued after the last round (placed a batch
    /// at a time, so faults are read in between).
    backlog: bool,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
}

impl Loop {
    fn run(&mut self) {
        let res = self.serve();
        match res {
            Ok(true) => {}
            Ok(false) => return, // stopped by the session
            Err(e) => {
                let msg = crate::error::error_chain(&e);
                warn!(error = %msg, "lazy-page handler failed");
                let _ = self.reports.send(Report::Failed(msg));
            }
        }
        // keep every descriptor open until the session says stop
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ok(true): every page is placed; Ok(false): told to stop.
    fn serve(&mut self) -> Result<bool> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let Some(pfds) = self.poll()? else {
                continue;
            };
            if pfds[1].revents != 0 {
                self.on_socket()?;
            }
            for i in 0..self.procs.len() {
                if pfds.get(2 + i).is_some_and(|p| p.revents != 0) {
                    self.on_events(i)?;
                }
            }
            if pfds[0].revents != 0 {
                let mut b = [0u8; 8];
                // SAFETY: reading the eventfd counter into 8 bytes.
                unsafe { libc::read(self.wake.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
            }
            self.place_queued()?;
            if self.all_placed() {
                return Ok(true);
            }
        }
    }

    /// Waits for the wake-up eventfd, CRIU's socket and every live
    /// userfaultfd (in that order). None: interrupted, poll again.
    fn poll(&self) -> Result<Option<Vec<libc::pollfd>>> {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut push = |fd: RawFd| {
            pfds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
        };
        push(self.wake.as_raw_fd());
        match &self.conn {
            None => push(self.listener.as_raw_fd()),
            Some(c) if self.finished_at.is_none() => push(c.as_raw_fd()),
            Some(_) => push(-1),
        }
        for p in &self.procs {
            push(if p.exited { -1 } else { p.uffd.as_raw_fd() });
        }
        let timeout = if self.backlog { 0 } else { 200 };
        // SAFETY: `pfds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(HandlerError::Poll { source: e });
        }
        Ok(Some(pfds))
    }

    /// Places what processes wait for first, then a bounded batch of bulk.
    fn place_queued(&mut self) -> Result<()> {
        let mut batch: Vec<Delivery> = self.urgent_rx.try_iter().collect();
        batch.append(&mut self.parked);
        for d in batch {
            self.place(d)?;
        }
        let bulk: Vec<Delivery> = self.rx.try_iter().take(BULK_BATCH).collect();
        self.backlog = bulk.len() == BULK_BATCH;
        for d in bulk {
            self.place(d)?;
        }
        Ok(())
    }

    /// Once the restore has finished and every process has its pages (or
    /// exited): the statistics are final and reported.
    fn all_placed(&mut self) -> bool {
        let Some(t) = self.finished_at else {
            return false;
        };
        if !self.procs.iter().all(|p| p.exited || p.iovs.is_empty()) {
            return false;
        }
        self.stats.lazy_ms = t.elapsed().as_secs_f64() * 1000.0;
        self.latencies.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies[i.min(self.latencies.len() - 1)] as f64
        };
        self.stats.faults = self.latencies.len() as u64;
        self.stats.fault_p50_us = pct(0.5);
        self.stats.fault_p99_us = pct(0.99);
        info!(
            lazy_ms = self.stats.lazy_ms,
            faults = self.stats.faults,
            p99_us = self.stats.fault_p99_us,
            "every lazy page is in place"
        );
        let _ = self.reports.send(Report::Done(self.stats.clone()));
        true
    }

    /// CRIU's connection: per process a pid and a descriptor, then RSTF.
    fn on_socket(&mut self) -> Result<()> {
        if self.conn.is_none() {
            return self.accept();
        }
        let mut data = [0u8; 256];
        let Some(got) = self.receive(&mut data)? else {
            return Ok(());
        };
        if got == 0 {
            self.conn = None;
            if self.finished_at.is_none() {
                return Err(HandlerError::SocketClosed);
            }
            return Ok(());
        }
        self.buf.extend_from_slice(&data[..got]);
        self.take_handovers()
    }

    /// Accepts CRIU's connection, when it is there.
    fn accept(&mut self) -> Result<()> {
        match self.listener.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(true)
                    .map_err(|source| HandlerError::Accept { source })?;
                self.conn = Some(c);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => return Err(HandlerError::Accept { source }),
        }
        Ok(())
    }

    /// Reads what CRIU sent into `data`, keeping the descriptors it carries.
    /// The bytes read (0: CRIU closed the connection); None: nothing yet.
    fn receive(&mut self, data: &mut [u8]) -> Result<Option<usize>> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(data)];
        match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                for c in m
                    .cmsgs()
                    .map_err(|source| HandlerError::CriuMessage { source })?
                {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel installed these descriptors for us.
                            self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                Ok(Some(m.bytes))
            }
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(source) => Err(HandlerError::ReadSocket { source }),
        }
    }

    /// Takes the complete messages in the buffer: RSTF, zombies, and each
    /// process's pid with the descriptor its dummy byte carried.
    fn take_handovers(&mut self) -> Result<()> {
        loop {
            if self.buf.len() < 4 {
                return Ok(());
            }
            let pid = i32::from_ne_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            if pid == RESTORE_FINISHED {
                self.buf.drain(..4);
                self.finished_at = Some(Instant::now());
                info!(
                    processes = self.procs.len(),
                    "CRIU finished the restore; lazy pages follow"
                );
                let _ = self.reports.send(Report::RestoreFinished);
                continue;
            }
            if pid <= 0 {
                // a zombie: no memory, no descriptor
                self.buf.drain(..4);
                continue;
            }
            // then one dummy byte carrying the descriptor
            if self.buf.len() < 5 || self.fds.is_empty() {
                return Ok(());
            }
            self.buf.drain(..5);
            let fd = self.fds.pop_front().ok_or(HandlerError::NoDescriptor)?;
            let pid = pid as u32;
            let iovs = self
                .layout
                .get(&pid)
                .map(|p| {
                    Iovs::new(
                        p.runs
                            .iter()
                            .map(|r| (r.vaddr, r.nr_pages * PAGE))
                            .collect::<Vec<_>>(),
                    )
                })
                .unwrap_or_default();
            debug!(
                pid,
                lazy_bytes = iovs.len_bytes(),
                "restored process handed over its userfaultfd"
            );
            self.procs.push(Proc {
                pid,
                uffd: Uffd::from_owned(fd),
                iovs,
                exited: false,
            });
        }
    }

    fn on_events(&mut self, i: usize) -> Result<()> {
        loop {
            let ev = match self.procs[i].uffd.read() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => {
                    warn!(pid = self.procs[i].pid, error = %e, "userfaultfd unreadable; taking the process as exited");
                    self.procs[i].exited = true;
                    return Ok(());
                }
            };
            let pid = self.procs[i].pid;
            match ev {
                Event::Fault { addr } => {
                    let page = addr & !(PAGE - 1);
                    match self.procs[i].iovs.lookup(page) {
                        // not a page of the checkpoint: it was never touched
                        None => {
                            let placed = self.procs[i]
                                .uffd
                                .zero(page)
                                .map_err(|source| HandlerError::ZeroPage { pid, page, source })?;
                            if placed == Placed::Exited {
                                self.procs[i].exited = true;
                            }
                        }
                        Some(img) => {
                            self.waiting.entry((pid, img)).or_insert_with(Instant::now);
                            if self.requested.insert((pid, img)) {
                                let _ = self.reports.send(Report::Request {
                                    pid,
                                    vaddr: img,
                                    pages: 1,
                                });
                            }
                        }
                    }
                }
                Event::Fork { uffd } => {
                    let iovs = self.procs[i].iovs.clone();
                    debug!(
                        pid,
                        "restored process forked; its child waits for the same pages"
                    );
                    self.procs.push(Proc {
                        pid,
                        uffd,
                        iovs,
                        exited: false,
                    });
                }
                Event::Remap { from, to, len } => self.procs[i].iovs.remap(from, to, len),
                Event::Remove { start, end } => {
                    self.procs[i]
                        .uffd
                        .unregister(start, end)
                        .map_err(|source| HandlerError::Unregister {
                            pid,
                            start,
                            end,
                            source,
                        })?;
                    self.procs[i].iovs.remove(start, end - start);
                }
                Event::Unmap { start, end } => self.procs[i].iovs.remove(start, end - start),
            }
        }
    }

    fn place(&mut self, d: Delivery) -> Result<()> {
        let pages = d.data.len() as u64 / PAGE;
        if !self.procs.iter().any(|p| p.pid == d.pid) {
            if self.finished_at.is_some() && !self.layout.contains_key(&d.pid) {
                return Err(HandlerError::UnknownPid { pid: d.pid });
            }
            self.parked.push(d);
            return Ok(());
        }
        let mut retry = false;
        for p in self
            .procs
            .iter_mut()
            .filter(|p| p.pid == d.pid && !p.exited)
        {
            for (rt, off, len) in p.iovs.placements(d.vaddr, d.data.len() as u64) {
                let chunk = &d.data[off as usize..(off + len) as usize];
                match p
                    .uffd
                    .copy(rt, chunk)
                    .map_err(|source| HandlerError::Place {
                        pid: p.pid,
                        addr: rt,
                        source,
                    })? {
                    Placed::Done | Placed::Gone => p.iovs.remove(rt, len),
                    Placed::Exited => p.exited = true,
                    Placed::Retry => retry = true,
                }
            }
        }
        if retry {
            self.parked.push(d);
            return Ok(());
        }
        match d.origin {
            Origin::Source => self.stats.pages_from_source += pages,
            Origin::Cache => self.stats.pages_from_cache += pages,
        }
        self.stats.zero_pages += d.zero_pages;
        for k in 0..pages {
            let key = (d.pid, d.vaddr + k * PAGE);
            if let Some(t) = self.waiting.remove(&key) {
                self.latencies.push(t.elapsed().as_micros() as u64);
            }
            self.requested.remove(&key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::c_void,
        io::{IoSlice, Write},
        thread,
        time::{Duration, Instant},
    };

    use nix::sys::socket::{sendmsg, ControlMessage};
    use tokio::sync::mpsc::{error::TryRecvError, UnboundedReceiver};
    use userfaultfd::FeatureFlags;

    use super::*;
    use crate::lazy::{
        pagemap::LazyRun,
        uffd::tests::{open, toucher, Mapping},
    };

    /// The handler's next report, waiting for it (at most 10 s).
    fn report(rx: &mut UnboundedReceiver<Report>) -> Report {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "no report from the handler in 10 s"
                    );
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("the handler's reports ended: {e}"),
            }
        }
    }

    /// This test process plays the restored one: CRIU's side hands over a
    /// userfaultfd registered over 4 pages of its own, of which the
    /// checkpoint's lazy set holds pages 0 and 1.
    #[test]
    fn faults_are_asked_for_placed_and_timed_others_get_zeros_discarded_pages_unregister() {
        let m = Mapping::new(4);
        let Some(u) = open(FeatureFlags::EVENT_REMOVE | FeatureFlags::EVENT_UNMAP) else {
            return;
        };
        u.register(m.addr as *mut c_void, m.len as usize)
            .expect("UFFDIO_REGISTER");
        let layout = vec![LazyProcess {
            pid: 7,
            pages_id: 1,
            runs: vec![LazyRun {
                vaddr: m.addr,
                nr_pages: 2,
                slot: Some(0),
            }],
        }];
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lazy-pages.socket");
        let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let h = Handler::start(&socket, layout, tx).unwrap();

        // CRIU: the checkpoint pid, then a byte carrying the descriptor
        let mut criu = UnixStream::connect(&socket).unwrap();
        criu.write_all(&7i32.to_ne_bytes()).unwrap();
        sendmsg::<()>(
            criu.as_raw_fd(),
            &[IoSlice::new(&[0])],
            &[ControlMessage::ScmRights(&[u.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(u); // the handler has its own now

        // a fault on a lazy page: asked for, once
        let t = Instant::now();
        let got0 = toucher(m.addr + 10);
        match report(&mut reports) {
            Report::Request { pid, vaddr, pages } => {
                assert_eq!((pid, vaddr, pages), (7, m.addr, 1))
            }
            r => panic!("expected a request, got {r:?}"),
        }
        // a fault outside the lazy set: the zero page, asked of nobody
        let got3 = toucher(m.page(3) + 1);
        assert_eq!(got3.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        // the page arrives later: the fault waits that long
        thread::sleep(Duration::from_millis(20));
        let page0: Vec<u8> = (0..PAGE).map(|i| (i % 251) as u8).collect();
        h.deliver_urgent(Delivery {
            pid: 7,
            vaddr: m.addr,
            data: page0.clone(),
            origin: Origin::Source,
            zero_pages: 0,
        })
        .unwrap();
        assert_eq!(
            got0.recv_timeout(Duration::from_secs(10)).unwrap(),
            page0[10]
        );

        // page 1 is discarded before anyone touched it: nothing to wait for
        let start = m.page(1);
        let dontneed = thread::spawn(move || {
            // SAFETY: madvise on the test's own mapping.
            unsafe { libc::madvise(start as *mut c_void, PAGE as usize, libc::MADV_DONTNEED) }
        });
        assert_eq!(dontneed.join().unwrap(), 0);
        assert_eq!(
            toucher(start)
                .recv_timeout(Duration::from_secs(10))
                .unwrap(),
            0
        );

        criu.write_all(&RESTORE_FINISHED.to_ne_bytes()).unwrap();
        assert!(matches!(report(&mut reports), Report::RestoreFinished));
        match report(&mut reports) {
            Report::Done(stats) => {
                // the handler times the wait once the page is in place:
                // within what this side saw from before the fault to here
                let waited = t.elapsed();
                assert_eq!(stats.faults, 1);
                assert_eq!(stats.pages_from_source, 1);
                assert!(
                    stats.fault_p50_us >= 20_000.0
                        && stats.fault_p50_us <= waited.as_micros() as f64,
                    "fault to placement: {} us, of {waited:?}",
                    stats.fault_p50_us
                );
            }
            r => panic!("expected done, got {r:?}"),
        }
        h.stop();
    }
}
