//! A client of CRIU's lazy page server on the source's loopback: the pages a
//! lazy dump left in the frozen processes, read one run at a time and carried
//! on over MOSE's own stream (the destination never talks to CRIU).
//!
//! The protocol is CRIU's (`criu/page-xfer.c`, `page_server_serve` and
//! `page_server_get_pages`; no Rust implementation exists): the client sends
//! a `struct page_server_iov` `{u32 cmd; nr_pages; u64 vaddr; u64 dst_id}` in
//! the host's byte order (little-endian here), with `cmd = PS_IOV_GET (7)`,
//! `dst_id` the process's pid as numbered in the checkpoint, and the server
//! answers with the same struct, `cmd = PS_IOV_ADD_F | PE_PRESENT << 16` and
//! `nr_pages` clamped to the end of the run it holds, followed by that many
//! pages. `PS_IOV_CLOSE (0x1023)` ends the session; the server answers it
//! with an `int32` status. `nr_pages` is a `u32` up to CRIU 4.1 (a 24-byte
//! struct) and a `u64` from CRIU 4.2 on (32 bytes with padding, commit
//! "page-xfer: use u64 for nr_pages").
//!
//! Only pages of a lazy run in the checkpoint's pagemap may be asked for: a
//! request for a page CRIU does not hold ends its page server (and with it
//! the dump), and in CRIU 4.1 one inside a buffer of non-lazy pages even
//! hangs it (`page_pipe_read` returns 0 on the flag mismatch, and CRIU then
//! splices from an empty pipe). Each lazy pagemap entry is one of CRIU's
//! buffers, so runs of the pagemap are always safe to ask for.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PAGE: u64 = 4096;
const PS_IOV_GET: u32 = 7;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_CLOSE: u32 = 0x1023;
/// `PE_PRESENT` in the flags half of an answer's `cmd`.
const PS_ANSWER: u32 = PS_IOV_ADD_F | (4 << 16);

/// The layout of `struct page_server_iov` a CRIU version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IovLayout {
    /// CRIU before 4.2: `nr_pages` is a `u32` (24 bytes).
    NrPages32,
    /// CRIU 4.2 and later: `nr_pages` is a `u64` after 4 bytes of padding
    /// (32 bytes).
    NrPages64,
}

impl IovLayout {
    /// The layout of CRIU `major.minor`.
    pub fn of_version(major: u32, minor: u32) -> Self {
        if (major, minor) < (4, 2) {
            Self::NrPages32
        } else {
            Self::NrPages64
        }
    }

    fn len(self) -> usize {
        match self {
            Self::NrPages32 => 24,
            Self::NrPages64 => 32,
        }
    }

    fn encode(self, cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.len());
        b.extend_from_slice(&cmd.to_le_bytes());
        match self {
            Self::NrPages32 => b.extend_from_slice(&(nr_pages as u32).to_le_bytes()),
            Self::NrPages64 => {
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&nr_pages.to_le_bytes());
            }
        }
        b.extend_from_slice(&vaddr.to_le_bytes());
        b.extend_from_slice(&dst_id.to_le_bytes());
        b
    }

    /// (cmd, nr_pages, vaddr, dst_id).
    fn decode(self, b: &[u8]) -> (u32, u64, u64, u64) {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        match self {
            Self::NrPages32 => (u32_at(0), u64::from(u32_at(4)), u64_at(8), u64_at(16)),
            Self::NrPages64 => (u32_at(0), u64_at(8), u64_at(16), u64_at(24)),
        }
    }
}

/// What went wrong talking to CRIU's page server.
#[derive(Debug, thiserror::Error)]
pub enum PageServerError {
    #[error("connecting to CRIU's page server on 127.0.0.1:{port}")]
    Connect {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} (CRIU's page server on 127.0.0.1:{port}; its dump.log says why)")]
    Io {
        what: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("CRIU's page server on 127.0.0.1:{port} answered {what}")]
    Answer { what: String, port: u16 },
    #[error("CRIU's page server on 127.0.0.1:{port} did not answer within {after:?}")]
    Timeout { port: u16, after: Duration },
}

/// One session with CRIU's lazy page server (it serves one client).
pub struct PageServerClient {
    stream: TcpStream,
    iov: IovLayout,
    port: u16,
    /// Bound on each answer: CRIU reads from memory, so this is generous.
    timeout: Duration,
}

impl PageServerClient {
    /// Connects to the page server CRIU announced ready on `127.0.0.1:port`.
    pub async fn connect(
        port: u16,
        iov: IovLayout,
        timeout: Duration,
    ) -> Result<Self, PageServerError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| PageServerError::Timeout {
                port,
                after: timeout,
            })?
            .map_err(|source| PageServerError::Connect { port, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| PageServerError::Connect { port, source })?;
        Ok(Self {
            stream,
            iov,
            port,
            timeout,
        })
    }

    /// Appends the `pages` pages from `vaddr` of process `pid` to `out`.
    /// They must lie within one lazy run of the checkpoint's pagemap.
    pub async fn read(
        &mut self,
        pid: u32,
        vaddr: u64,
        pages: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), PageServerError> {
        let (mut at, mut left) = (vaddr, pages);
        while left > 0 {
            let got = self.get(pid, at, left, out).await?;
            at += got * PAGE;
            left -= got;
        }
        Ok(())
    }

    /// One PS_IOV_GET; returns how many pages CRIU sent (≥ 1).
    async fn get(
        &mut self,
        pid: u32,
        vaddr: u64,
        pages: u64,
        out: &mut Vec<u8>,
    ) -> Result<u64, PageServerError> {
        let ask = self.iov.encode(PS_IOV_GET, pages, vaddr, u64::from(pid));
        let what = format!("asking for {pages} pages of pid {pid} at {vaddr:#x}");
        let (port, after) = (self.port, self.timeout);
        within(port, after, &what, self.stream.write_all(&ask)).await?;
        let mut head = vec![0u8; self.iov.len()];
        within(port, after, &what, self.stream.read_exact(&mut head)).await?;
        let (cmd, nr, at, dst) = self.iov.decode(&head);
        if cmd != PS_ANSWER || at != vaddr || dst != u64::from(pid) || nr == 0 || nr > pages {
            return Err(PageServerError::Answer {
                what: format!(
                    "cmd {cmd:#x} with {nr} pages of {dst} at {at:#x} to a request for {pages} \
                     pages of pid {pid} at {vaddr:#x}"
                ),
                port: self.port,
            });
        }
        let from = out.len();
        out.resize(from + (nr * PAGE) as usize, 0);
        within(port, after, &what, self.stream.read_exact(&mut out[from..])).await?;
        Ok(nr)
    }

    /// Ends the session as CRIU expects (PS_IOV_CLOSE, then its status):
    /// the dump then finishes and the frozen processes are left as they were.
    pub async fn close(mut self) -> Result<(), PageServerError> {
        let close = self.iov.encode(PS_IOV_CLOSE, 0, 0, 0);
        let (port, after, what) = (self.port, self.timeout, "closing the session");
        within(port, after, what, self.stream.write_all(&close)).await?;
        let mut status = [0u8; 4];
        within(port, after, what, self.stream.read_exact(&mut status)).await?;
        let status = i32::from_le_bytes(status);
        if status != 0 {
            return Err(PageServerError::Answer {
                what: format!("status {status} to the end of the session"),
                port: self.port,
            });
        }
        // CRIU waits for this side to close before it exits
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// `op` within `after`, its failure named by `what`.
async fn within<T>(
    port: u16,
    after: Duration,
    what: &str,
    op: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, PageServerError> {
    tokio::time::timeout(after, op)
        .await
        .map_err(|_| PageServerError::Timeout { port, after })?
        .map_err(|source| PageServerError::Io {
            what: what.to_string(),
            port,
            source,
        })
}

/// A free TCP port on the node's loopback for CRIU's page server to bind.
/// (CRIU binds it a moment later; another process taking it first makes the
/// dump fail, and the migration with it, the source left running.)
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A page server speaking CRIU's protocol for one run of `pages` pages
    /// at 0x10000 of pid 1, each filled with its index, clamping answers to
    /// `clamp` pages as CRIU clamps to the end of a pipe buffer.
    async fn fake_server(iov: IovLayout, pages: u64, clamp: u64) -> u16 {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            loop {
                let mut head = vec![0u8; iov.len()];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let (cmd, nr, vaddr, dst) = iov.decode(&head);
                if cmd == PS_IOV_CLOSE {
                    s.write_all(&0i32.to_le_bytes()).await.unwrap();
                    return;
                }
                let first = (vaddr - 0x10000) / PAGE;
                if cmd != PS_IOV_GET || dst != 1 || first >= pages {
                    return; // CRIU ends its page server
                }
                let nr = nr.min(clamp).min(pages - first);
                s.write_all(&iov.encode(PS_ANSWER, nr, vaddr, dst))
                    .await
                    .unwrap();
                for k in first..first + nr {
                    s.write_all(&[k as u8; PAGE as usize]).await.unwrap();
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn reads_runs_across_clamped_answers_in_both_layouts() {
        for iov in [IovLayout::NrPages32, IovLayout::NrPages64] {
            let port = fake_server(iov, 8, 3).await;
            let mut c = PageServerClient::connect(port, iov, Duration::from_secs(5))
                .await
                .unwrap();
            let mut out = Vec::new();
            c.read(1, 0x10000 + PAGE, 6, &mut out).await.unwrap();
            let firsts: Vec<u8> = out.chunks(PAGE as usize).map(|p| p[0]).collect();
            assert_eq!(firsts, vec![1, 2, 3, 4, 5, 6], "{iov:?}");
            c.close().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_page_server_that_stops_answering_is_an_error_not_a_hang() {
        let port = fake_server(IovLayout::NrPages64, 4, 4).await;
        let mut c = PageServerClient::connect(port, IovLayout::NrPages64, Duration::from_secs(5))
            .await
            .unwrap();
        let mut out = Vec::new();
        // pid 2 has no lazy memory: the fake server, like CRIU, hangs up
        let e = c.read(2, 0x10000, 1, &mut out).await.unwrap_err();
        assert!(matches!(e, PageServerError::Io { .. }), "{e}");
    }

    #[test]
    fn the_layout_follows_criu_4_2() {
        assert_eq!(IovLayout::of_version(4, 1), IovLayout::NrPages32);
        assert_eq!(IovLayout::of_version(3, 19), IovLayout::NrPages32);
        assert_eq!(IovLayout::of_version(4, 2), IovLayout::NrPages64);
        assert_eq!(IovLayout::NrPages32.encode(7, 5, 0x1000, 1).len(), 24);
        let b = IovLayout::NrPages64.encode(7, 5, 0x1000, 1);
        assert_eq!(IovLayout::NrPages64.decode(&b), (7, 5, 0x1000, 1));
    }
}
